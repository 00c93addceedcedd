"""The target's symbol table, seen the way livepatch will search it at load time.

A livepatch relocation names a symbol by object, name and position (sympos). The kernel
resolves it in klp_find_object_symbol(): it walks kallsyms (vmlinux: address order; a module:
its symbol table order, defined symbols only), counts every symbol of that name, and accepts
position 0 only when the name is unique, else the N-th match (1-based). This module rebuilds
that order from what a distribution ships (System.map or /proc/kallsyms text, or an ELF file:
vmlinux, the module's .ko, an object) and decides the position of the one symbol the patched
object really means, which for a duplicated local name needs evidence: the source file name
when the ELF has STT_FILE symbols, and the object's other symbols lying next to it otherwise.

Module.symvers tells which symbols are exported (resolved by the module loader, no livepatch
relocation needed) and by whom.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kpatchbuild.elf.model import (
    SHF_ALLOC,
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_SECTION,
)
from kpatchbuild.elf.read import ElfFormatError, iter_symbol_records
from kpatchbuild.errors import KpbError

# Type letters that never reach kallsyms: undefined and debugging symbols.
_NOT_IN_KALLSYMS = frozenset("UuNn")


class SymbolsError(KpbError):
    """A symbol-table or Module.symvers file cannot be read or does not fit the request."""

    exit_code = 1


class AmbiguousSymbol(KpbError):
    """The target has several symbols of a name and nothing says which one the object means."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class TargetSymbol:
    """One symbol of the target, in kallsyms order (``order``)."""

    name: str
    address: int
    is_global: bool
    is_weak: bool
    is_function: bool
    order: int
    # The source file (STT_FILE) a local symbol came from, when the table was an ELF file.
    source_file: str | None = None


@dataclass(frozen=True, slots=True)
class Export:
    """One Module.symvers line: ``name`` is exported by ``module`` ("vmlinux" or a module path)."""

    name: str
    module: str
    export_type: str
    namespace: str


@dataclass(slots=True)
class SymbolTable:
    """All symbols of one livepatch target object ("vmlinux" or a module name) in kallsyms order."""

    objname: str
    entries: list[TargetSymbol]
    has_source_files: bool = False
    _by_name: dict[str, list[TargetSymbol]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for entry in self.entries:
            self._by_name.setdefault(entry.name, []).append(entry)

    def named(self, name: str) -> list[TargetSymbol]:
        """Every symbol called ``name``, in the order livepatch counts them."""
        return self._by_name.get(name, [])

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def sympos(
        self,
        name: str,
        *,
        local: bool,
        neighbours: frozenset[str] = frozenset(),
        source_file: str | None = None,
    ) -> int:
        """The position livepatch needs for ``name``: 0 when unique, else 1-based.

        ``neighbours`` are the other symbols defined by the object the reference comes from
        and ``source_file`` its STT_FILE name: they pick the right one among duplicated locals.
        Raises AmbiguousSymbol (or SymbolsError when the name is absent).
        """
        matches = self.named(name)
        if not matches:
            raise SymbolsError(f"symbol {name!r} not found in the {self.objname} symbol table")
        if len(matches) == 1:
            return 0
        chosen = self._choose(name, matches, local, neighbours, source_file)
        return matches.index(chosen) + 1

    def _choose(
        self,
        name: str,
        matches: list[TargetSymbol],
        local: bool,
        neighbours: frozenset[str],
        source_file: str | None,
    ) -> TargetSymbol:
        if not local:
            strong = [m for m in matches if m.is_global and not m.is_weak]
            candidates = strong or [m for m in matches if m.is_global]
            if len(candidates) == 1:
                return candidates[0]
            raise AmbiguousSymbol(
                f"{len(candidates)} global symbols named {name!r} in {self.objname}"
            )
        candidates = [m for m in matches if not m.is_global]
        if not candidates:
            raise SymbolsError(f"no local symbol {name!r} in the {self.objname} symbol table")
        if source_file and self.has_source_files:
            same_file = [m for m in candidates if m.source_file == source_file]
            if len(same_file) == 1:
                return same_file[0]
            if same_file:
                candidates = same_file
        if len(candidates) == 1:
            return candidates[0]
        return self._by_neighbourhood(name, candidates, neighbours)

    def _by_neighbourhood(
        self, name: str, candidates: list[TargetSymbol], neighbours: frozenset[str]
    ) -> TargetSymbol:
        # The linker lays out an object's code in one run, so the right candidate is the one
        # inside the longest run of the object's other symbols (a few strangers allowed).
        others = neighbours - {name}
        scores = sorted(
            ((self._run_length(candidate.order, others), candidate) for candidate in candidates),
            key=lambda pair: pair[0],
            reverse=True,
        )
        best, chosen = scores[0]
        if best == 0 or best == scores[1][0]:
            raise AmbiguousSymbol(
                f"{len(candidates)} local symbols named {name!r} in {self.objname} and nothing "
                f"tells which one this object defines"
            )
        return chosen

    def _run_length(self, order: int, members: frozenset[str], tolerance: int = 3) -> int:
        found = 0
        for step in (-1, 1):
            strangers = 0
            position = order + step
            while 0 <= position < len(self.entries) and strangers <= tolerance:
                if self.entries[position].name in members:
                    found += 1
                    strangers = 0
                else:
                    strangers += 1
                position += step
        return found


def module_objname(name: str) -> str:
    """Livepatch names a module as the kernel does: dashes become underscores, no suffix."""
    base = os.path.basename(name)
    for suffix in (".ko", ".o"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base.replace("-", "_")


def load_symbol_table(path: str | os.PathLike[str], objname: str = "vmlinux") -> SymbolTable:
    """Read a target symbol table from an ELF file or from System.map/kallsyms text."""
    source = Path(path)
    try:
        with source.open("rb") as handle:
            magic = handle.read(4)
    except FileNotFoundError:
        raise SymbolsError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise SymbolsError(f"{source}: is a directory, not a symbol table") from None
    except OSError as error:
        raise SymbolsError(f"{source}: cannot read: {error.strerror}") from None
    if magic == b"\x7fELF":
        return _from_elf(source, objname)
    return _from_text(source, objname)


def _from_elf(path: Path, objname: str) -> SymbolTable:
    try:
        records = list(iter_symbol_records(path))
    except ElfFormatError as error:
        raise SymbolsError(error.message) from None
    relocatable = _is_relocatable(path)
    entries: list[TargetSymbol] = []
    current_file: str | None = None
    kept = []
    for record in records:
        if record.type == STT_FILE:
            current_file = record.name
            continue
        if not record.name or record.type == STT_SECTION or record.section_name is None:
            continue
        if relocatable and (
            not record.section_flags & SHF_ALLOC or record.section_name.startswith(".init")
        ):
            continue  # module kallsyms keep only core (non-init, allocated) symbols
        source_file = current_file if record.bind == STB_LOCAL else None
        kept.append((record, source_file))
    if not relocatable:
        # vmlinux kallsyms are sorted by address, strong before weak at equal addresses.
        kept.sort(key=lambda pair: (pair[0].value, pair[0].bind == STB_WEAK))
    for order, (record, source_file) in enumerate(kept):
        entries.append(
            TargetSymbol(
                name=record.name,
                address=record.value,
                is_global=record.bind in (STB_GLOBAL, STB_WEAK),
                is_weak=record.bind == STB_WEAK,
                is_function=record.type == STT_FUNC,
                order=order,
                source_file=source_file,
            )
        )
    return SymbolTable(objname, entries, has_source_files=current_file is not None)


def _is_relocatable(path: Path) -> bool:
    with path.open("rb") as handle:
        header = handle.read(18)
    return len(header) >= 18 and int.from_bytes(header[16:18], "little") == 1


def _from_text(path: Path, objname: str) -> SymbolTable:
    """System.map (`nm -n` output) or /proc/kallsyms; kallsyms lines may carry `[module]`."""
    entries: list[TargetSymbol] = []
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        raise SymbolsError(f"{path}: cannot read: {error.strerror}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 3 or len(parts[1]) != 1:
            raise SymbolsError(f"{path}:{number}: not a System.map or kallsyms line: {line[:80]!r}")
        address_text, kind, name = parts[0], parts[1], parts[2]
        try:
            address = int(address_text, 16)
        except ValueError:
            raise SymbolsError(f"{path}:{number}: bad address {address_text!r}") from None
        module = parts[3].strip("[]") if len(parts) > 3 else "vmlinux"
        if module != objname or kind in _NOT_IN_KALLSYMS:
            continue
        entries.append(
            TargetSymbol(
                name=name,
                address=address,
                is_global=kind.isupper() or kind in "wv",
                is_weak=kind in "wWvV",
                is_function=kind in "tTwW",
                order=len(entries),
            )
        )
    if not entries:
        raise SymbolsError(f"{path}: no symbols of {objname} found")
    return SymbolTable(objname, entries)


def load_module_symvers(path: str | os.PathLike[str]) -> dict[str, Export]:
    """Parse Module.symvers: `CRC<TAB>symbol<TAB>module<TAB>export type<TAB>namespace`."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise SymbolsError(f"{source}: no such file") from None
    except OSError as error:
        raise SymbolsError(f"{source}: cannot read: {error.strerror}") from None
    exports: dict[str, Export] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 4 or not fields[1]:
            raise SymbolsError(f"{source}:{number}: not a Module.symvers line: {line[:80]!r}")
        namespace = fields[4] if len(fields) > 4 else ""
        exports[fields[1]] = Export(fields[1], fields[2], fields[3], namespace)
    return exports
