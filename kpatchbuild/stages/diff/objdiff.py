"""The diff stage: the differ applied to one object pair of a target, cached by content.

The differ itself (kpatchbuild.differ) knows only ELF objects and a symbol table; this stage
gives it the target's symbol table and exports, the special-section entry sizes measured on
the target's own tree, and keeps each result under (original object, patched object, symbol
files, entry sizes, differ version), so an edit elsewhere never re-diffs this object.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import xxhash

from kpatchbuild import differ, elf
from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.store import Store, content_key, file_hash
from kpatchbuild.differ import CannotPatch, diff_objects
from kpatchbuild.differ.report import write_report
from kpatchbuild.differ.resolve import kernel_version
from kpatchbuild.differ.special import PROBE_SOURCE, sizes_from_probe
from kpatchbuild.differ.symbols import (
    Export,
    SymbolTable,
    load_module_symvers,
    load_symbol_table,
    module_objname,
)
from kpatchbuild.elf.model import STB_LOCAL
from kpatchbuild.elf.read import iter_symbol_records, read_elf
from kpatchbuild.elf.write import write_elf_file
from kpatchbuild.stages.patched.patched import ObjectPair, Workspace


def differ_sources() -> list[Path]:
    """The differ's and ELF code's sources, subpackages included (the include passes)."""
    found = []
    for package in (differ, elf):
        assert package.__file__ is not None
        found += sorted(Path(package.__file__).parent.rglob("*.py"))
    return found


def differ_version() -> str:
    """A hash of the differ's and ELF code's sources: a changed differ re-diffs everything."""
    digest = xxhash.xxh3_64()
    for path in differ_sources():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


PROBE_OBJECT = "kernel/kpatchbuild_entry_sizes.o"


def measured_entry_sizes(store: Store, workspace: Workspace) -> dict[str, int]:
    """Special-section entry sizes of this kernel, from a probe compiled in its tree.

    No debug info needed: the probe puts each sizeof() into a symbol's value.
    """
    remembered = store.recall(("entry-sizes", workspace.stage.key))
    if remembered:
        return dict(remembered)
    log = store.log_path(f"diff-entry-sizes-{workspace.stage.key[:12]}")
    with workspace.locked():
        source = PROBE_OBJECT[:-2] + ".c"
        workspace.set_contents({source: PROBE_SOURCE.encode()})
        try:
            probe = workspace.compile(PROBE_OBJECT, log)
            sizes = sizes_from_probe(read_elf(probe))
        finally:
            (workspace.tree / source).unlink(missing_ok=True)
    store.remember(("entry-sizes", workspace.stage.key), sizes)
    return sizes


@dataclass(frozen=True)
class SymbolFiles:
    """What a target's references are resolved against."""

    symbols: Path  # System.map, vmlinux, or the module's .ko
    symvers: Path  # Module.symvers


@dataclass(frozen=True)
class DiffFiles:
    """One object's diff: its report and, when something changed, its patch object."""

    object: str
    target: str
    report: Path
    output: Path | None

    def to_json(self) -> dict:
        return {"object": self.object, "target": self.target, "report": str(self.report),
                "output": str(self.output) if self.output else None}


def diff_pair(store: Store, pair: ObjectPair, files: SymbolFiles, sizes: dict[str, int],
              release: str, provided: tuple[str, ...] = ()) -> DiffFiles:
    """Diff one pair for the kernel ``release``, from the cache when diffed before.

    A refusal (CannotPatch) is not cached: it is raised again, the same, on every run.
    """
    symbols_hash, symvers_hash = file_hash(files.symbols), file_hash(files.symvers)
    key = content_key("diff", differ_version(), file_hash(Path(pair.original)),
                      file_hash(Path(pair.patched)), symbols_hash, symvers_hash,
                      sorted(sizes.items()), pair.target, sorted(provided),
                      kernel_version(release))
    name = Path(pair.object).name
    artifact = store.lookup("diff", key)
    if not artifact:
        objname = "vmlinux" if pair.target == "vmlinux" else module_objname(pair.target)
        try:
            table, exports = _target_tables(str(files.symbols), symbols_hash,
                                            str(files.symvers), symvers_hash, objname)
            result = diff_objects(
                Path(pair.original), Path(pair.patched), target=pair.target,
                symbols=table, exports=exports, entry_sizes=sizes,
                object_name=pair.object, provided_by_patch=provided,
                kernel_version=kernel_version(release),
            )
        except CannotPatch:
            raise
        except KpbError as error:
            raise KpbError(f"{pair.object}: {error.message}") from None
        with store.publishing("diff", key, {"object": pair.object,
                                            "target": pair.target}) as work:
            output = None
            if result.output is not None:
                output = work / name
                write_elf_file(result.output, output)
            write_report(result, work / "report.json", target=pair.target,
                         output=str(store.path("diff", key) / name) if output else None)
        artifact = store.lookup("diff", key)
        assert artifact is not None
    output_path = artifact.path / name
    return DiffFiles(pair.object, pair.target, artifact.path / "report.json",
                      output_path if output_path.is_file() else None)


@functools.lru_cache(maxsize=4)
def _target_tables(symbols: str, symbols_hash: str, symvers: str, symvers_hash: str,
                   objname: str) -> tuple[SymbolTable, dict[str, Export]]:
    """The target's symbol table and exports, read once per process for all the objects a
    patch changes (System.map's 87,000 lines take half a second); keyed by content too."""
    return load_symbol_table(symbols, objname), load_module_symvers(symvers)


def new_globals(pair: ObjectPair) -> frozenset[str]:
    """Globals the patched object defines and its original does not (a new function or
    variable another object of the same patch may use)."""
    def defined_globals(path: str) -> set[str]:
        return {record.name for record in iter_symbol_records(path)
                if record.bind != STB_LOCAL and record.section_name is not None and record.name}
    return frozenset(defined_globals(pair.patched) - defined_globals(pair.original))


def provided_by_others(pair: ObjectPair, pairs: list[ObjectPair]) -> tuple[str, ...]:
    """What the patch's other objects newly define, whatever they patch (vmlinux or a
    module): references to those stay inside the patch, bound when its objects are linked
    into the one livepatch module, as kpatch binds them."""
    names: set[str] = set()
    for other in pairs:
        if other.object != pair.object:
            names |= new_globals(other)
    return tuple(sorted(names))


def decision_lines(diff: DiffFiles) -> list[str]:
    """The kpatch-style lines of a diff, from its report."""
    report = json.loads(diff.report.read_text())
    lines = [f"{diff.object}: changed function: {f['name']}"
             for f in report["changed_functions"]]
    lines += [f"{diff.object}: new function: {f['name']}" for f in report["new_functions"]]
    lines += [f"{diff.object}: {kind} callback: {name}"
              for kind, name in sorted(report.get("callbacks", {}).items())]
    return lines
