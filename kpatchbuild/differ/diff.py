"""diff_objects: run the passes over one original/patched pair and say what came out."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kpatchbuild.base.errors import KpbError
from kpatchbuild.differ.compare import Comparison, FunctionVerdict, compare_objects
from kpatchbuild.differ.correlate import Correlation, correlate_symbols
from kpatchbuild.differ.include import include_and_build
from kpatchbuild.differ.index import ObjectIndex, parent_function_name
from kpatchbuild.differ.marks import read_marks
from kpatchbuild.differ.resolve import Resolution, Resolver
from kpatchbuild.differ.special import EntrySizes
from kpatchbuild.differ.symbols import Export, SymbolTable
from kpatchbuild.differ.trace import Trace
from kpatchbuild.elf.model import STB_LOCAL, STT_FILE, STT_SECTION, ElfObject, Symbol
from kpatchbuild.elf.read import read_elf


class CannotPatch(KpbError):
    """The change cannot be live-patched safely; ``reasons`` name functions/sections and why."""

    exit_code = 2

    def __init__(self, object_name: str, reasons: list[str]) -> None:
        unique = list(dict.fromkeys(reasons))
        super().__init__(f"{object_name}: cannot live-patch: " + "; ".join(unique))
        self.reasons = unique


@dataclass(frozen=True, slots=True)
class FunctionChange:
    """A function the patch object carries because it changed or is new."""

    name: str  # its name in the patch object (and the patched build)
    old_name: str | None  # its name in the original build/running kernel (None: new)
    old_sympos: int | None  # klp_func.old_sympos for changed functions
    section: str  # its section in the patch object
    global_binding: bool
    fingerprint: str  # xxh3-64 of bytes + symbolic relocations, patched build
    old_fingerprint: str | None
    reason: str = ""  # why it is in the patch: "new", "changed code", "callback"...


@dataclass(frozen=True, slots=True)
class IncludedSymbol:
    """A symbol defined by the patch object itself (function, data, string-less objects)."""

    name: str
    kind: str  # "function" or "data"
    section: str
    new: bool  # no counterpart in the original object
    # For a function: why the patch carries it ("changed code", "new", "out-of-line part
    # of f", "pre_patch callback"...).
    reason: str = ""


@dataclass
class DiffResult:
    """What the differ decided for one object; ``output`` is None when nothing changed."""

    object_name: str
    changed_functions: list[FunctionChange] = field(default_factory=list)
    new_functions: list[FunctionChange] = field(default_factory=list)
    resolutions: list[Resolution] = field(default_factory=list)
    included_symbols: list[IncludedSymbol] = field(default_factory=list)
    kept_sections: list[tuple[str, int]] = field(default_factory=list)
    line_only_changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Callbacks the patch author registered (kpatch-macros.h): kind -> carried function.
    callbacks: dict[str, str] = field(default_factory=dict)
    output: ElfObject | None = None

    @property
    def has_changes(self) -> bool:
        return self.output is not None

    def decision_lines(self) -> list[str]:
        """One line per decision, in the form kpatch users know."""
        lines = [f"{self.object_name}: changed function: {f.name}" for f in self.changed_functions]
        lines += [f"{self.object_name}: new function: {f.name}" for f in self.new_functions]
        lines += [f"{self.object_name}: {kind} callback: {name}"
                  for kind, name in sorted(self.callbacks.items())]
        return lines


def diff_objects(
    orig: ElfObject | str | os.PathLike[str],
    patched: ElfObject | str | os.PathLike[str],
    *,
    target: str = "vmlinux",
    symbols: SymbolTable | None = None,
    exports: dict[str, Export] | None = None,
    entry_sizes: Mapping[str, int] | None = None,
    environ: Mapping[str, str] | None = None,
    object_name: str | None = None,
    provided_by_patch: Collection[str] = (),
    kernel_version: tuple[int, int] | None = None,
    require_fentry: bool = True,
    trace: Trace | None = None,
) -> DiffResult:
    """Diff one object pair built with -ffunction-sections -fdata-sections.

    ``target`` is "vmlinux" or the module name the object belongs to; ``symbols`` that
    target's symbol table (for livepatch positions), ``exports`` Module.symvers (for what the
    module loader resolves). ``entry_sizes`` are measured special-section entry sizes
    ({section name: size}); the create-diff-object environment variables override them.
    ``provided_by_patch`` names the globals other objects of the same patch define (a new
    function added in another file): references to them stay plain undefined symbols, bound
    when the patch's objects are linked together, instead of being looked up in the target.
    ``require_fentry``: every changed function must start with its ftrace call, as livepatch
    needs on x86 (False only for objects that are not kernel code, such as test fixtures).
    ``kernel_version`` (major, minor) of the target kernel decides what the module loader can
    resolve by itself (unknown: as before 5.8, the safe side).
    ``trace`` collects what each pass decided (``diff --debug PASS``).
    Raises CannotPatch when the change is unsafe; returns a result without output when
    nothing changed functionally.
    """
    orig_obj = orig if isinstance(orig, ElfObject) else read_elf(orig)
    patched_obj = patched if isinstance(patched, ElfObject) else read_elf(patched)
    name = object_name or Path(patched_obj.name).name

    orig_index = ObjectIndex(orig_obj)
    patched_index = ObjectIndex(patched_obj)
    trace = trace or Trace()
    marks = read_marks(patched_index)
    correlation = correlate_symbols(orig_index, patched_index)
    _trace_correlation(trace, correlation, patched_index)
    comparison = compare_objects(correlation, marks)
    _trace_comparison(trace, comparison)
    refusals = list(correlation.ambiguous_functions.values()) + comparison.refusals
    refusals += _new_exports(orig_obj, patched_obj) + marks.problems

    result = DiffResult(object_name=name, line_only_changes=sorted(comparison.line_only))
    # A new static function nobody changed calls is dead code; a new global function or
    # variable may be used by another object of the same patch, so it is carried.
    new_globals = [v.patched for v in comparison.new if v.patched.bind != STB_LOCAL]
    new_globals += [s for s in comparison.new_data if s.bind != STB_LOCAL]
    if not comparison.changed and not new_globals and not marks.callbacks:
        if refusals:
            raise CannotPatch(name, refusals)
        return result

    if require_fentry:
        refusals += _untraceable(orig_index, comparison)
    resolver = Resolver(orig_index, target, symbols, exports, provided_by_patch, kernel_version)
    inclusion = include_and_build(
        correlation, comparison, resolver, EntrySizes(entry_sizes, environ), trace
    )
    refusals += inclusion.refusals
    if refusals:
        raise CannotPatch(name, refusals)
    output = inclusion.output
    assert output is not None

    carried = {id(s) for s in inclusion.included_functions}
    redirected: set[tuple[int, int, int]] = set()  # (section, value, size): aliases are one
    # Globals first: of a function and its aliases, the patch redirects the global name.
    verdicts = sorted(comparison.functions.values(),
                      key=lambda v: (v.patched.bind == STB_LOCAL, v.patched.name))
    for verdict in verdicts:
        symbol = verdict.patched
        if id(symbol) not in carried or parent_function_name(symbol.name) is not None:
            continue
        place = (id(symbol.section), symbol.value, symbol.size)
        if place in redirected:
            continue
        redirected.add(place)
        change = FunctionChange(
            name=symbol.name,
            old_name=verdict.orig.name if verdict.orig is not None else None,
            old_sympos=inclusion.old_sympos.get(verdict.orig.name) if verdict.orig else None,
            section=symbol.section.name if symbol.section else "",
            global_binding=symbol.bind != STB_LOCAL,
            fingerprint=verdict.fingerprint,
            old_fingerprint=verdict.orig_fingerprint,
            reason=_reason(verdict, marks.callbacks, symbol),
        )
        if verdict.status.value == "changed":
            result.changed_functions.append(change)
        elif verdict.status.value == "new":
            result.new_functions.append(change)
    result.changed_functions.sort(key=lambda f: f.name)
    result.new_functions.sort(key=lambda f: f.name)
    result.resolutions = sorted(inclusion.resolutions.values(), key=lambda r: r.name)
    reasons = {f.name: f.reason for f in result.changed_functions + result.new_functions}
    for symbol in output.symbols:
        if symbol.section is None or symbol.type in (STT_SECTION, STT_FILE) or not symbol.name:
            continue
        original = orig_index.by_name.get(symbol.name)
        reason = ""
        if symbol.is_function:
            parent = parent_function_name(symbol.name)
            reason = reasons.get(symbol.name) or (
                f"out-of-line part of {parent}" if parent else
                "carried with the code that uses it")
        result.included_symbols.append(
            IncludedSymbol(
                name=symbol.name,
                kind="function" if symbol.is_function else "data",
                section=symbol.section.name,
                new=original is None or original.section is None,
                reason=reason,
            )
        )
    result.callbacks = {kind: function.name for kind, function in marks.callbacks.items()}
    result.kept_sections = inclusion.kept_sections
    result.notes = inclusion.notes + [
        f"{name} is marked KPATCH_FORCE_UNSAFE: livepatch has no per-function immediate "
        "switch (since Linux 4.16), so it is patched under the consistency model like the rest"
        for name in sorted(marks.forced_functions)]
    result.output = output
    shared_data = any(s.bind != STB_LOCAL for s in comparison.new_data)
    if not (result.changed_functions or result.new_functions or result.callbacks
            or shared_data):
        return DiffResult(object_name=name, line_only_changes=result.line_only_changes)
    return result


def _trace_correlation(trace: Trace, correlation: Correlation, patched: ObjectIndex) -> None:
    if not trace.wants("correlate"):
        return
    for symbol in patched.obj.symbols:
        original = correlation.orig_of(symbol)
        if original is not None and original.name != symbol.name:
            trace.say("correlate", f"{symbol.name} is the original {original.name}")
    for reason in correlation.ambiguous_functions.values():
        trace.say("correlate", f"ambiguous: {reason}")
    for symbol in correlation.unpaired_locals:
        trace.say("correlate", f"unpaired static {symbol.name}")


def _trace_comparison(trace: Trace, comparison: Comparison) -> None:
    if not trace.wants("compare"):
        return
    for verdict in comparison.functions.values():
        if verdict.status.value != "same":
            trace.say("compare", f"{verdict.patched.name}: {verdict.status.value}"
                                 f"{f' ({verdict.reason})' if verdict.reason else ''}")
        elif verdict.line_only:
            trace.say("compare", f"{verdict.patched.name}: same (only line numbers moved)")
    for refusal in comparison.refusals:
        trace.say("compare", f"refused: {refusal}")


def _reason(verdict: FunctionVerdict, callbacks: dict[str, Symbol], symbol: Symbol) -> str:
    kinds = [kind for kind, function in callbacks.items() if function is symbol]
    if kinds:
        return f"{kinds[0]} callback"
    return verdict.reason or verdict.status.value


def _untraceable(orig: ObjectIndex, comparison: Comparison) -> list[str]:
    """Livepatch redirects a function through its ftrace call: one without it cannot change.

    Every function the patch redirects, whatever brought it in (its own edit, an inlined
    callee, a clone); a file built without ftrace (`CFLAGS_REMOVE_x.o = -pg`) has none.
    """
    without_ftrace = "__fentry__" not in orig.by_name
    refusals = []
    for verdict in comparison.changed:
        original = verdict.orig
        if original is None or parent_function_name(original.name) is not None:
            continue
        assert original.section is not None
        head = orig.relocations_between(original.section, original.value, original.value + 16)
        if not any(r.symbol.name == "__fentry__" for r in head):
            why = ("its file is built without ftrace (CFLAGS_REMOVE ... -pg)" if without_ftrace
                   else "notrace or noinstr")
            refusals.append(
                f"changed function {original.name} has no __fentry__ call ({why}): livepatch "
                "cannot redirect it; patch a traceable caller instead"
            )
    return refusals


# EXPORT_SYMBOL leaves `__ksymtab_NAME` in each object up to Linux 6.4, and
# `__export_symbol_NAME` (section .export_symbol, turned into the ksymtab by modpost) since 6.5.
_EXPORT_MARKERS = ("__ksymtab_", "__export_symbol_")


def _exported_names(obj: ElfObject) -> set[str]:
    names = set()
    for symbol in obj.symbols:
        if symbol.section is None:
            continue
        for marker in _EXPORT_MARKERS:
            if symbol.name.startswith(marker):
                names.add(symbol.name[len(marker) :])
    return names


def _new_exports(orig: ElfObject, patched: ElfObject) -> list[str]:
    return [
        f"new export {name}: a live patch cannot export symbols"
        for name in sorted(_exported_names(patched) - _exported_names(orig))
    ]
