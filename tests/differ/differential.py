"""The differ against kpatch's create-diff-object, on random edits of real kernel files.

A seeded generator mutates a function of a file built into the kernel (a barrier, a
pr_debug(), a changed literal, a call to a new helper, a new static local, an inlined
helper), the pair is compiled in a prepared tree with the kernel's own flags, and both
differs judge it with the same symbol table, Module.symvers and entry sizes. The two agree
when both find no change, both refuse, or both write a patch carrying the same functions.

Every disagreement is classified. The differ's own view explains most: a function kpatch
carries and ours does not is one our comparison found equal for a reason it names (a moved
``__LINE__``, constants renamed with the same bytes), and that reason is kept; a function
ours carries and kpatch does not, a refusal on one side only, or an equality ours cannot
explain is "to review": a bug until someone says otherwise in KNOWN (by case and kernel).

Shared by bench/differential.py (the whole run) and tests/differ/test_differential.py (a
small fixed subset, in CI).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kpatchbuild.base.store import Store
from kpatchbuild.differ import CannotPatch, diff_objects
from kpatchbuild.differ.index import ObjectIndex, SymbolTarget, parent_function_name
from kpatchbuild.differ.symbols import (
    Export,
    SymbolTable,
    load_module_symvers,
    load_symbol_table,
)
from kpatchbuild.differ.trace import Trace
from kpatchbuild.elf import read_elf
from kpatchbuild.elf.model import Symbol
from kpatchbuild.stages.fetch.debian import DebianPackage, fetch_package
from tests.differ.kernel_corpus import Case, CorpusBuilder
from tests.differ.random_edits import _edit, pick_edits
from tests.support.chroots import SUITE_TREES, ChrootError, suite_kernel
from tests.support.kpatch_reference import (
    KpatchReference,
    ReferenceOutcome,
    reference_symtab,
    suite_reference_symtab,
)

if TYPE_CHECKING:
    from tests.conftest import KernelTree

SEED = 20261208
KINDS = ("barrier", "pr_debug", "literal", "helper", "static_local", "inline_helper")


@dataclass
class Outcome:
    """One differ's verdict on a pair: 0 written, 2 refused, 3 no change."""

    exit_code: int
    functions: frozenset[str] = frozenset()  # changed and new, without `.cold` parts
    reason: str = ""  # the refusal


@dataclass
class Comparison:
    """Both verdicts on one generated edit, and how they relate."""

    index: int
    source: str
    function: str
    kind: str
    ours: Outcome | None = None
    kpatch: Outcome | None = None
    agree: bool = False
    # For a disagreement: "ours right: WHY", "kpatch right: WHY" or "to review: WHAT".
    classification: str = ""
    details: list[str] = field(default_factory=list)

    @property
    def compiled(self) -> bool:
        return self.ours is not None


def generate(count: int, tree: Path, seed: int = SEED) -> list[tuple[Comparison, Case]]:
    """``count`` edits of the tree's sources, the same for the same seed and sources."""
    return [(Comparison(index, source, name, kind),
             Case(f"differential-{index}-{kind}-{name}", source, _constant(edited), 0))
            for index, source, name, kind, edited in pick_edits(count, tree, seed, KINDS,
                                                                 mutate)]


def _constant(text: str):  # noqa: ANN202 - the edit a Case wants: pristine -> edited
    return lambda _pristine: text


def mutate(text: str, match: re.Match[str], kind: str, index: int) -> str | None:
    """The file with function ``match`` edited by ``kind``; None when it does not apply."""
    if kind in ("barrier", "pr_debug", "literal", "helper"):
        return _edit(text, match, kind, index)
    body_start, body_end = match.start("body"), match.end("body")
    lines = match.group("body").split("\n")
    position = next((i for i, line in enumerate(lines)
                     if line.strip() and not line.startswith("\t\t")
                     and re.match(r"^\s*(?:if|return|for|while|[a-z_]+\s*\(|[a-z_]+ = )",
                                  line)), None)
    if position is None:
        return None
    indent = re.match(r"^\s*", lines[position]).group(0) or "\t"  # type: ignore[union-attr]
    prefix = ""
    if kind == "static_local":
        # A new static local: a counter bumped on every call, as a debugging fix adds one.
        lines.insert(position, f"{indent}{{ static unsigned int kpb_calls_{index}; "
                               f"WRITE_ONCE(kpb_calls_{index}, "
                               f"READ_ONCE(kpb_calls_{index}) + 1); }}")
    elif kind == "inline_helper":
        prefix = (f"static unsigned long kpb_state_{index};\n\n"
                  f"static inline void kpb_inline_{index}(void)\n{{\n"
                  f"\tWRITE_ONCE(kpb_state_{index}, READ_ONCE(kpb_state_{index}) ^ "
                  f"{index + 1});\n}}\n\n")
        lines.insert(position, f"{indent}kpb_inline_{index}();")
    else:
        raise ValueError(f"unknown edit kind {kind!r}")
    return (text[:match.start()] + prefix + text[match.start():body_start] + "\n".join(lines)
            + text[body_end:])


@dataclass(frozen=True)
class Kernel:
    """What both differs resolve against, for one tree."""

    release: str
    symbols: SymbolTable  # ours
    exports: dict[str, Export]
    symtab: Path  # kpatch's: readelf -s --wide vmlinux
    symvers: Path
    sizes: dict[str, int]
    # kpatch-build refuses IBT kernels (objtool then runs on vmlinux.o only, and objects
    # have no `__pfx_` symbols for their padding); kpatch is given the objects as a build
    # without IBT makes them: objtool --prefix adds those symbols, nothing else changes.
    prefix_bytes: int = 0


def run_pair(comparison: Comparison, case: Case, builder: CorpusBuilder, kernel: Kernel,
             reference: KpatchReference, workdir: Path) -> Comparison:
    """Compile one edit, run both differs, and compare them (filling ``comparison``)."""
    try:
        pair = builder.build(case)
    except (subprocess.CalledProcessError, ChrootError):
        return comparison  # the edit does not compile here
    trace = Trace(["compare"])
    try:
        result = diff_objects(pair.orig, pair.patched, target="vmlinux", symbols=kernel.symbols,
                              exports=kernel.exports, kernel_version=_version(kernel.release),
                              entry_sizes=kernel.sizes, trace=trace)
        if result.output is None:
            comparison.ours = Outcome(3)
        else:
            comparison.ours = Outcome(0, _names(f.name for f in
                                                result.changed_functions + result.new_functions))
    except CannotPatch as refusal:
        comparison.ours = Outcome(2, reason=refusal.message)
    orig, patched = pair.orig.resolve(), pair.patched.resolve()
    if kernel.prefix_bytes:
        orig = _with_prefix_symbols(builder, orig, workdir / case.name / "kpatch-orig.o",
                                    kernel.prefix_bytes)
        patched = _with_prefix_symbols(builder, patched,
                                       workdir / case.name / "kpatch-patched.o",
                                       kernel.prefix_bytes)
    theirs = reference.diff(orig, patched, kernel.symtab, kernel.symvers,
                            (workdir / case.name / "kpatch.o").resolve(), sizes=kernel.sizes)
    comparison.kpatch = _their_outcome(theirs)
    _judge(comparison, trace, lambda name: raw_difference(pair.orig, pair.patched, name))
    return comparison


def _with_prefix_symbols(builder: CorpusBuilder, obj: Path, copy: Path, size: int) -> Path:
    """A copy of ``obj`` with objtool's `__pfx_` symbols, as a build without IBT has them."""
    copy = copy.resolve()
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(obj, copy)
    argv = [str(builder.tree / "tools/objtool/objtool"), f"--prefix={size}", "--sls", str(copy)]
    if builder.chroot is not None:
        builder.chroot.run(argv, binds=[builder.tree, copy.parent])
    else:
        subprocess.run(argv, check=True, capture_output=True)
    return copy


def prefix_bytes(config: str) -> int:
    """The padding objtool gives `__pfx_` symbols, when only a build without IBT would."""
    if not re.search(r"^CONFIG_X86_KERNEL_IBT=y$", config, re.M) or not re.search(
            r"^CONFIG_PREFIX_SYMBOLS=y$", config, re.M):
        return 0
    found = re.search(r"^CONFIG_FUNCTION_PADDING_BYTES=(\d+)$", config, re.M)
    return int(found.group(1)) if found else 0


def _their_outcome(theirs: ReferenceOutcome) -> Outcome:
    if theirs.exit_code == 0:
        return Outcome(0, _names(theirs.changed | theirs.new))
    if theirs.exit_code == 3:
        return Outcome(3)
    return Outcome(2, reason=theirs.error)


def _names(names: object) -> frozenset[str]:
    return frozenset(n for n in names  # type: ignore[attr-defined]
                     if parent_function_name(n) is None)


def _version(release: str) -> tuple[int, int]:
    major, minor = release.split(".")[:2]
    return int(major), int(minor)


# The kernel generations the harness runs on: Debian 12's 6.1 and 6.12 (gcc 12), Debian 13's
# 6.12 (gcc 14, compiled in its chroot).
GENERATIONS = {
    "6.1": "Debian 12 6.1 (gcc 12)",
    "6.12": "Debian 12 6.12 (gcc 12)",
    "6.12-gcc14": "Debian 13 6.12 (gcc 14)",
}


class _TempFactory:
    """What tests/conftest.py's tree helpers ask of pytest's tmp_path_factory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))


def prepare_generation(label: str, factory: object, workdir: Path,
                       store: Store) -> tuple[CorpusBuilder, Kernel]:
    """A scratch tree of the generation ``label`` (see GENERATIONS) and what both differs
    resolve against; ``factory`` is pytest's tmp_path_factory, or a directory for one."""
    from tests.conftest import (  # a test helper module: imported when a harness runs
        SERIES_6_12_TARGET,
        chroot_kernel_tree,
        prepare_scratch_tree,
    )

    if isinstance(factory, Path):
        factory = _TempFactory(factory)
    if label in ("6.1", "6.12"):
        target = SERIES_6_12_TARGET if label == "6.12" else CI_TARGET
        tree = prepare_scratch_tree(target, label, factory,  # type: ignore[arg-type]
                                    "KPB_SCRATCH_TREE" + ("_6_12" if label == "6.12" else ""))
        return harness_for(tree, pipeline_symtab(store, target), workdir)
    tree = chroot_kernel_tree(label, factory)  # type: ignore[arg-type]
    spec = SUITE_TREES[label]
    assert tree.chroot is not None
    symtab = suite_reference_symtab(
        store, tree.chroot, suite_kernel(store, tree.chroot, spec.series, spec.flavour))
    return harness_for(tree, symtab, workdir)


CI_TARGET = "cmdline/debian12-6.1-cloud-amd64"


def pipeline_symtab(store: Store, target: str) -> Path:
    """kpatch's symbol table for a pipeline target, from the -dbg package its fetch got."""
    from tests.conftest import default_root

    fetch = json.loads((default_root() / "work" / target / "fetch.json").read_text())
    dbg = fetch_package(store, DebianPackage(**fetch["kernel"]["packages"]["dbg"]))
    return reference_symtab(store, dbg, fetch["kernel"]["release"])


def harness_for(tree: KernelTree, symtab: Path, workdir: Path) -> tuple[CorpusBuilder, Kernel]:
    """The corpus builder of a prepared scratch tree and what both differs resolve against."""
    builder = CorpusBuilder(tree.path, tree.release, workdir, tree.compiler, tree.chroot)
    kernel = Kernel(tree.release, load_symbol_table(tree.symbols),
                    load_module_symvers(tree.module_symvers), symtab,
                    tree.module_symvers, builder.entry_sizes(),
                    prefix_bytes((tree.path / ".config").read_text()))
    return builder, kernel


# Disagreements reviewed by hand: (kernel series, case index) -> classification.
KNOWN: dict[tuple[str, int], str] = {}


def _judge(comparison: Comparison, trace: Trace, raw: Callable[[str], str]) -> None:
    ours, theirs = comparison.ours, comparison.kpatch
    assert ours is not None and theirs is not None
    if ours.exit_code != theirs.exit_code:
        comparison.agree = False
    elif ours.exit_code == 0:
        comparison.agree = ours.functions == theirs.functions
    else:
        comparison.agree = True
    if comparison.agree:
        return
    said = _compare_reasons(trace)
    for name in (comparison.kpatch.functions ^ comparison.ours.functions) - said.keys():
        said[name] = f"same ({raw(name)})"
    details = comparison.details
    if ours.exit_code == 2:
        details.append(f"ours refused: {ours.reason}")
    if theirs.exit_code == 2:
        details.append(f"kpatch refused: {theirs.reason}")
    only_theirs = sorted(theirs.functions - ours.functions)
    only_ours = sorted(ours.functions - theirs.functions)
    for name in only_theirs:
        details.append(f"only kpatch carries {name}: ours says {said.get(name, 'nothing')}")
    for name in only_ours:
        details.append(f"only ours carries {name}: ours says {said.get(name, 'nothing')}")
    if ours.exit_code != 2 and theirs.exit_code != 2 and not only_ours and only_theirs and all(
            said.get(name, "").startswith("same (") for name in only_theirs):
        reasons = sorted({said[name] for name in only_theirs})
        comparison.classification = "ours right: kpatch carries functions that are " + \
            "; ".join(reasons)
        return
    comparison.classification = "to review: " + (details[0] if details else "?")


def raw_difference(orig: Path, patched: Path, name: str) -> str:
    """What differs in function ``name`` between the objects, before correlation: its
    bytes, or only the names and addends its relocations use (renamed constants)."""
    old, new = ObjectIndex(read_elf(orig)), ObjectIndex(read_elf(patched))
    before, after = old.by_name.get(name), new.by_name.get(name)
    if before is None or after is None or before.section is None or after.section is None:
        return "not defined in both objects"
    if old.symbol_bytes(before) != new.symbol_bytes(after):
        return "its bytes differ"

    def relocations(index: ObjectIndex, symbol: Symbol) -> list[tuple[int, str, int]]:
        assert symbol.section is not None
        return [(r.offset - symbol.value, r.symbol.name, r.addend)
                for r in index.relocations_between(symbol.section, symbol.value,
                                                   symbol.value + symbol.size)]

    pairs = [(a, b) for a, b in zip(relocations(old, before), relocations(new, after),
                                    strict=False)
             if a != b]
    if not pairs:
        tables = sorted(name for name in ("__bug_table",)
                        if _entries(old, before, name) != _entries(new, after, name))
        if tables:
            return f"identical code; its {', '.join(tables)} entries differ (line numbers)"
        return "identical"
    shown = ", ".join(f"{a[1]}{a[2]:+#x} -> {b[1]}{b[2]:+#x}" for a, b in pairs[:3])
    return f"same bytes, relocations renamed or moved: {shown}"


def _entries(index: ObjectIndex, function: Symbol, table: str) -> list[bytes]:
    """The line and flags of the ``table`` entries (12-byte bug entries) anchored in
    ``function`` or its `.cold` part, in order."""
    section = index.obj.section_by_name(table)
    if section is None:
        return []
    parts = [s for s in (function, index.by_name.get(f"{function.name}.cold")) if s]
    found = []
    for relocation in index.relocations.get(id(section), ()):
        target = index.target_of(relocation, in_code=False)
        if relocation.offset % 12 or not isinstance(target, SymbolTarget):
            continue
        if target.symbol in parts:
            found.append(section.data[relocation.offset + 8:relocation.offset + 12])
    return found


def _compare_reasons(trace: Trace) -> dict[str, str]:
    """Our compare pass's word on each function: "changed (...)", "same (...)"..."""
    found = {}
    for line in trace.lines:
        match = re.match(r"\[compare\] (\S+): (.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found
