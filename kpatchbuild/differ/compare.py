"""Pass 2: decide which functions changed and whether any data changed.

A function is its bytes plus its relocations, each relocation reduced to what it designates
(the paired original symbol, a string's text, a piece of a section), so a renumbered static
or a moved string is no change while a different target behind equal bytes is one. Each side
gets an xxh3 fingerprint of that pair; equal fingerprints mean equal functions.

A change confined to line numbers (lines.py: the immediate of a line argument, `file.c:N` in a
string) is the code moving because lines were added above: not a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import xxhash

from kpatchbuild.differ.correlate import Correlation
from kpatchbuild.differ.index import (
    AnonymousTarget,
    ObjectIndex,
    StringTarget,
    SymbolTarget,
    Target,
    is_fresh_static,
    normalized_name,
    parent_function_name,
    relocation_place,
)
from kpatchbuild.differ.lines import LineShift, line_shift, without_line_numbers
from kpatchbuild.differ.marks import Marks
from kpatchbuild.differ.special import SectionRole, role_of
from kpatchbuild.elf.model import (
    R_X86_64_PC32,
    R_X86_64_PLT32,
    SHF_WRITE,
    SHT_NOBITS,
    STT_FUNC,
    Section,
    Symbol,
)


class Status(Enum):
    SAME = "same"
    CHANGED = "changed"
    NEW = "new"


@dataclass(frozen=True, slots=True)
class FunctionVerdict:
    patched: Symbol
    orig: Symbol | None
    status: Status
    fingerprint: str
    orig_fingerprint: str | None
    line_only: bool = False
    # Why it is in the patch, in words for the report: "new", "changed code", ...
    reason: str = ""


@dataclass
class Comparison:
    """The verdict on every function of the patched object and the refusals found on the way."""

    functions: dict[int, FunctionVerdict] = field(default_factory=dict)  # id(patched symbol)
    refusals: list[str] = field(default_factory=list)
    new_data: list[Symbol] = field(default_factory=list)
    line_only: list[str] = field(default_factory=list)

    def verdict(self, symbol: Symbol) -> FunctionVerdict | None:
        return self.functions.get(id(symbol))

    @property
    def changed(self) -> list[FunctionVerdict]:
        return [v for v in self.functions.values() if v.status is Status.CHANGED]

    @property
    def new(self) -> list[FunctionVerdict]:
        return [v for v in self.functions.values() if v.status is Status.NEW]


def _identity(correlation: Correlation, symbol: Symbol, side: str) -> tuple[Any, ...]:
    if symbol.section is None:
        return ("ext", symbol.name)
    if is_fresh_static(symbol):
        # Never paired: the same kind of static counts as the same, whatever its number.
        return ("fresh", normalized_name(symbol.name), symbol.size)
    if side == "orig":
        return ("sym", symbol.name)
    original = correlation.orig_of(symbol)
    return ("sym", original.name) if original is not None else ("new", symbol.name)


def target_key(correlation: Correlation, target: Target, side: str) -> tuple[Any, ...]:
    """What a relocation designates, in names that are the same on both sides when paired."""
    if isinstance(target, SymbolTarget):
        return (_identity(correlation, target.symbol, side), target.delta)
    if isinstance(target, StringTarget):
        return ("str", target.text, target.delta)
    assert isinstance(target, AnonymousTarget)
    name = target.section.name
    if side == "patched":
        partner = correlation.section_partner.get(id(target.section))
        name = partner.name if partner is not None else "+" + name
    return ("anon", name, target.addend)


def symbol_contents(
    correlation: Correlation, index: ObjectIndex, symbol: Symbol, side: str
) -> tuple[bytes, list[tuple[Any, ...]]]:
    """The bytes of a symbol and its relocations as (offset in symbol, type, target key)."""
    section = symbol.section
    assert section is not None
    start, end = symbol.value, symbol.value + symbol.size
    in_code = section.is_text
    relocations = []
    for relocation in index.relocations_between(section, start, end):
        target = index.target_of(relocation, in_code)
        if isinstance(target, AnonymousTarget) and role_of(target.section) is \
                SectionRole.CODE_PIECES:
            key = piece_key(index, target.section, relocation_place(relocation, section))
        else:
            key = target_key(correlation, target, side)
        relocations.append((relocation.offset - start, relocation.type, key))
    return index.symbol_bytes(symbol), relocations


def piece_key(index: ObjectIndex, section: Section, place: int) -> tuple[Any, ...]:
    """A reference into out-of-line code (an alternative's replacement, an `.altinstr_aux`
    stub) by the piece's contents, not its offset: pieces move when one before them grows,
    and a function whose only difference is that move is unchanged."""
    start, end = index.piece_bounds(section, place)
    digest = xxhash.xxh3_64(section.data[start:end])
    for relocation in index.relocations_between(section, start, end):
        target = index.target_of(relocation, in_code=True)
        if isinstance(target, SymbolTarget):
            loose: tuple[Any, ...] = (normalized_name(target.symbol.name), target.delta)
        elif isinstance(target, StringTarget):
            loose = (target.text, target.delta)
        else:
            loose = (target.section.name, target.addend)
        digest.update(repr((relocation.offset - start, relocation.type, loose)).encode())
    return ("piece", section.name, digest.hexdigest(), place - start)


def fingerprint(contents: bytes, relocations: list[tuple[Any, ...]]) -> str:
    digest = xxhash.xxh3_64(contents)
    digest.update(repr(relocations).encode())
    return digest.hexdigest()


def compare_objects(correlation: Correlation, marks: Marks | None = None) -> Comparison:
    """Judge every function and every data symbol of the patched object against its original.

    What the author marked unchanged (KPATCH_IGNORE_FUNCTION, KPATCH_IGNORE_SECTION) is
    judged the same whatever its contents.
    """
    result = Comparison()
    orig, patched = correlation.orig, correlation.patched
    marks = marks or Marks()
    shifts: dict[int, LineShift] = {}
    for symbol in patched.functions:
        original = correlation.orig_of(symbol)
        if _ignored(symbol, marks):
            if original is not None and original.section is not None:
                result.functions[id(symbol)] = FunctionVerdict(symbol, original, Status.SAME,
                                                               "", None)
                continue
        new_bytes, new_relocs = symbol_contents(correlation, patched, symbol, "patched")
        new_print = fingerprint(new_bytes, new_relocs)
        if original is None or original.section is None or original.type != STT_FUNC:
            verdict = FunctionVerdict(symbol, None, Status.NEW, new_print, None, reason="new")
            result.functions[id(symbol)] = verdict
            continue
        old_bytes, old_relocs = symbol_contents(correlation, orig, original, "orig")
        old_print = fingerprint(old_bytes, old_relocs)
        status, reason = Status.SAME, ""
        if new_print != old_print:
            shift = _line_shift(old_bytes, new_bytes, old_relocs, new_relocs)
            if shift is None:
                status, reason = Status.CHANGED, _change_reason(old_bytes, new_bytes,
                                                                old_relocs, new_relocs)
            else:
                shifts[id(symbol)] = shift
        result.functions[id(symbol)] = FunctionVerdict(
            symbol, original, status, new_print, old_print, reason=reason
        )
    _settle_line_shifts(result, shifts)
    _promote_cold_parents(result, patched)
    _compare_data(correlation, result, marks)
    return result


def _change_reason(old: bytes, new: bytes, old_relocations: list[tuple[Any, ...]],
                   new_relocations: list[tuple[Any, ...]]) -> str:
    """What differs, in words: the code, or only what a relocation designates."""
    if old != new or len(old_relocations) != len(new_relocations):
        return "changed code"
    for before, after in zip(old_relocations, new_relocations, strict=True):
        if before != after:
            return f"changed reference at +{after[0]:#x} ({_describe_key(before[2])} -> " \
                   f"{_describe_key(after[2])})"
    return "changed code"


def _describe_key(key: tuple[Any, ...]) -> str:
    if key[0] == "str":
        return repr(key[1][:40].decode(errors="replace"))
    if key[0] == "anon":
        return f"{key[1]}+{key[2]:#x}"
    if key[0] == "piece":
        return f"a piece of {key[1]} ({key[2][:8]})+{key[3]:#x}"
    identity, delta = key
    return f"{identity[1]}{f'{delta:+#x}' if delta else ''}"


def _ignored(symbol: Symbol, marks: Marks) -> bool:
    section = symbol.section
    return symbol.name in marks.ignored_functions or (
        section is not None and section.name in marks.ignored_sections)


def _promote_cold_parents(result: Comparison, patched: ObjectIndex) -> None:
    """A `.cold` part is entered from its parent only: a change in it is a change of the parent."""
    for verdict in list(result.functions.values()):
        parent_name = parent_function_name(verdict.patched.name)
        if parent_name is None or verdict.status is Status.SAME:
            continue
        parent = patched.by_name.get(parent_name)
        if parent is None:
            continue
        parent_verdict = result.functions.get(id(parent))
        if parent_verdict is not None and parent_verdict.status is Status.SAME:
            result.functions[id(parent)] = replace(
                parent_verdict, status=Status.CHANGED,
                reason=f"its out-of-line part {verdict.patched.name} changed")


def _line_shift(old: bytes, new: bytes, old_relocations: list[tuple[Any, ...]],
                new_relocations: list[tuple[Any, ...]]) -> LineShift | None:
    """How the two versions differ in line numbers only (lines.py): in the immediates of line
    arguments, and in `file.c:N` inside the strings they refer to; None if otherwise."""
    if len(old_relocations) != len(new_relocations):
        return None
    for before, after in zip(old_relocations, new_relocations, strict=True):
        if before != after and _without_line_numbers(before) != _without_line_numbers(after):
            return None
    calls = {offset: key[0][-1] for offset, kind, key in new_relocations
             if kind in (R_X86_64_PLT32, R_X86_64_PC32) and isinstance(key[0], tuple)}
    strings = {offset: key[1] for offset, _, key in new_relocations if key[0] == "str"}
    return line_shift(old, new, calls, strings)


def _settle_line_shifts(result: Comparison, shifts: dict[int, LineShift]) -> None:
    """A printed immediate is a line if its function's family (the function, its parent,
    its `.cold` parts) moved a known line argument by as much; otherwise a change."""
    family_deltas: dict[str, set[int]] = {}
    for key, shift in shifts.items():
        name = result.functions[key].patched.name
        family = parent_function_name(name) or name
        family_deltas.setdefault(family, set()).update(shift.deltas)
    for key, shift in shifts.items():
        verdict = result.functions[key]
        name = verdict.patched.name
        known = family_deltas.get(parent_function_name(name) or name, set())
        if shift.unproven <= known:
            result.line_only.append(name)
            result.functions[key] = replace(verdict, line_only=True)
        else:
            result.functions[key] = replace(
                verdict, status=Status.CHANGED,
                reason="changed constants (not only line numbers: "
                       f"moved by {sorted(shift.unproven - known)})")


def _without_line_numbers(relocation: tuple[Any, ...]) -> tuple[Any, ...]:
    offset, kind, key = relocation
    if key[0] == "str":
        return (offset, kind, ("str", without_line_numbers(key[1]), key[2]))
    return relocation


def _compare_data(correlation: Correlation, result: Comparison, marks: Marks) -> None:
    orig, patched = correlation.orig, correlation.patched
    for section in patched.obj.sections:
        role = role_of(section)
        if role is not SectionRole.DATA or not section.is_alloc or section.is_text:
            continue
        if section.name in marks.ignored_sections:
            continue
        for symbol in patched.symbols_in(section):
            if symbol.is_function:
                continue
            original = correlation.orig_of(symbol)
            where = f"{symbol.name} (section {section.name})"
            if original is None or original.section is None:
                if section.name.startswith(".data..percpu"):
                    result.refusals.append(f"new per-cpu variable {where}: not supported")
                elif symbol in correlation.unpaired_locals and _needs_pairing(symbol, correlation):
                    candidates = _unpaired_namesakes(symbol, correlation)
                    result.refusals.append(
                        f"static variable {where}: cannot tell which original variable it is "
                        f"(unpaired in the original: {', '.join(candidates[:4])}); keep its "
                        "uses as they were, or give it a name of its own"
                    )
                else:
                    result.new_data.append(symbol)
                continue
            if symbol.size == 0 and original.size == 0:
                continue
            old_bytes, old_relocs = symbol_contents(correlation, orig, original, "orig")
            new_bytes, new_relocs = symbol_contents(correlation, patched, symbol, "patched")
            if original.section.type == SHT_NOBITS and section.type == SHT_NOBITS:
                old_bytes, new_bytes = b"", b""
            reason = None
            if symbol.size != original.size:
                reason = f"size {original.size} -> {symbol.size}"
            elif old_bytes != new_bytes or old_relocs != new_relocs:
                reason = "initial value changed"
            if reason is None:
                continue
            if section.name.startswith((".init", ".exit")) or original.section.name.startswith(
                (".init", ".exit")
            ):
                result.refusals.append(f"__init/__exit data {where} changed ({reason})")
            elif section.name.startswith(".data..percpu"):
                result.refusals.append(f"per-cpu variable {where} changed ({reason})")
            else:
                result.refusals.append(
                    f"data {where} changed ({reason}): existing data cannot be live-patched; "
                    "use a shadow variable"
                )


# Numbered statics that are harmless to duplicate: once-flags, lockdep keys, rate limits,
# function-name strings. A fresh copy at most prints a warning once more.
_FRESH_COPY_OK = (
    "__already_done",
    "__warned",
    "__print_once",
    "__key",
    "_rs",
    "__func__",
    "__msg",
    "descriptor",
    "_entry",
    "_entry_ptr",
    "__UNIQUE_ID_",
    "__initcall__",
)


def _unpaired_namesakes(symbol: Symbol, correlation: Correlation) -> list[str]:
    base = normalized_name(symbol.name)
    return sorted(
        other.name for other in correlation.orig.obj.symbols
        if other.section is not None and other.is_local and normalized_name(other.name) == base
        and correlation.patched_of(other) is None
    )


def _needs_pairing(symbol: Symbol, correlation: Correlation) -> bool:
    """A writable static local whose original namesake lost its pair must not be duplicated.

    If every original `name.N` found its partner, this one is genuinely new (a new static in
    new or changed code); if one is left over, the two may be the same variable renumbered.
    """
    if symbol.section is None or not symbol.section.flags & SHF_WRITE:
        return False
    base = normalized_name(symbol.name)
    if symbol.name.startswith(_FRESH_COPY_OK) or base.split(".", 1)[0] in _FRESH_COPY_OK:
        return False
    return any(
        normalized_name(other.name) == base and correlation.patched_of(other) is None
        for other in correlation.orig.obj.symbols
        if other.section is not None and other.is_local
    )
