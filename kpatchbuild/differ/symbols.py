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

import json
import os
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpatchbuild.base.errors import KpbError
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
    # Which object of the link it came from (the run of locals after one STT_FILE symbol).
    unit: int | None = None


@dataclass(frozen=True, slots=True)
class Export:
    """One Module.symvers line: ``name`` is exported by ``module`` ("vmlinux" or a module path)."""

    name: str
    module: str
    export_type: str
    namespace: str


GLOBAL, WEAK, FUNCTION = 1, 2, 4  # bits of SymbolTable.flags
NO_UNIT = 0xFFFFFFFF


class SymbolTable:
    """All symbols of one livepatch target object ("vmlinux" or a module name).

    Kept as columns sorted by name (names, kallsyms positions, addresses, flag bits, link
    units) rather than one object per symbol: a vmlinux has 120,000 symbols, a patch asks
    about a few dozen, and sorted columns load without building an index. ``units`` says, for
    each local symbol of an ELF table, which object of the link defined it (the locals after
    one STT_FILE symbol), ``unit_files`` the file name of each unit. The constructor takes
    the columns in kallsyms order.
    """

    def __init__(
        self,
        objname: str,
        names: list[str],
        addresses: Sequence[int],
        flags: bytes | bytearray,
        units: Sequence[int] | None = None,
        unit_files: list[str] | None = None,
    ) -> None:
        by_name = sorted(range(len(names)), key=names.__getitem__)  # stable: kallsyms order
        self._set_columns(
            objname,
            [names[p] for p in by_name],
            array("I", by_name),
            array("Q", [addresses[p] for p in by_name]),
            bytes(flags[p] for p in by_name),
            array("I", [units[p] for p in by_name]) if units is not None else None,
            unit_files or [],
        )

    @classmethod
    def from_sorted_columns(cls, objname: str, names: list[str], orders: Sequence[int],
                            addresses: Sequence[int], flags: bytes, units: Sequence[int] | None,
                            unit_files: list[str]) -> SymbolTable:
        """A table from columns already sorted by name (the compact form stores them so)."""
        table = cls.__new__(cls)
        table._set_columns(objname, names, orders, addresses, flags, units, unit_files)
        return table

    def _set_columns(self, objname: str, names: list[str], orders: Sequence[int],
                     addresses: Sequence[int], flags: bytes, units: Sequence[int] | None,
                     unit_files: list[str]) -> None:
        self.objname = objname
        self.names = names
        self.orders = orders
        self.addresses = addresses
        self.flags = flags
        self.units = units
        self.unit_files = unit_files
        self._unit_names: dict[int, frozenset[str]] | None = None
        self._kallsyms_names: list[str] | None = None

    @property
    def has_source_files(self) -> bool:
        return self.units is not None

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: str) -> bool:
        position = bisect_left(self.names, name)
        return position < len(self.names) and self.names[position] == name

    def _entry(self, position: int) -> TargetSymbol:
        bits = self.flags[position]
        unit = self.units[position] if self.units is not None else NO_UNIT
        return TargetSymbol(
            name=self.names[position],
            address=self.addresses[position],
            is_global=bool(bits & GLOBAL),
            is_weak=bool(bits & WEAK),
            is_function=bool(bits & FUNCTION),
            order=self.orders[position],
            source_file=self.unit_files[unit] if unit != NO_UNIT else None,
            unit=unit if unit != NO_UNIT else None,
        )

    def named(self, name: str) -> list[TargetSymbol]:
        """Every symbol called ``name``, in the order livepatch counts them."""
        low = bisect_left(self.names, name)
        high = bisect_right(self.names, name, low)
        return [self._entry(p) for p in range(low, high)]

    def name_at(self, order: int) -> str:
        """The name of the symbol at kallsyms position ``order``."""
        if self._kallsyms_names is None:
            names = [""] * len(self.names)
            for position, kallsyms_order in enumerate(self.orders):
                names[kallsyms_order] = self.names[position]
            self._kallsyms_names = names
        return self._kallsyms_names[order]

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
            if same_file:
                candidates = same_file
                if len({m.unit for m in candidates}) > 1:
                    candidates = self._by_unit(name, source_file, candidates, neighbours)
        if len(candidates) == 1:
            return candidates[0]
        return self._by_neighbourhood(name, candidates, neighbours)

    def _by_unit(self, name: str, source_file: str, candidates: list[TargetSymbol],
                 neighbours: frozenset[str]) -> list[TargetSymbol]:
        """Several objects of one file name (``core.c``): the one whose locals are the object's.

        The linker writes each object's locals after its STT_FILE symbol, so the unit holding
        the most of the object's own symbols is the object; a tie is refused.
        """
        scores: dict[int, int] = {}
        for candidate in candidates:
            assert candidate.unit is not None
            scores[candidate.unit] = len(neighbours & self._names_of_unit(candidate.unit))
        ranked = sorted(scores.values(), reverse=True)
        if ranked[0] == 0 or ranked[0] == ranked[1]:
            raise AmbiguousSymbol(
                f"{len(scores)} objects named {source_file} in {self.objname} define a local "
                f"{name!r} and their other symbols do not tell which one this object is"
            )
        best = max(scores, key=scores.__getitem__)
        return [c for c in candidates if c.unit == best]

    def _names_of_unit(self, unit: int) -> frozenset[str]:
        if self._unit_names is None:
            assert self.units is not None
            members: dict[int, set[str]] = {}
            for position, owner in enumerate(self.units):
                if owner != NO_UNIT:
                    members.setdefault(owner, set()).add(self.names[position])
            self._unit_names = {k: frozenset(v) for k, v in members.items()}
        return self._unit_names.get(unit, frozenset())

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
            while 0 <= position < len(self.names) and strangers <= tolerance:
                if self.name_at(position) in members:
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
    """Read a target symbol table: an ELF file, the compact form, System.map/kallsyms text."""
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
    if magic == COMPACT_MAGIC[:4]:
        return _from_compact(source, objname)
    return _from_text(source, objname)


def _from_elf(path: Path, objname: str) -> SymbolTable:
    try:
        records = list(iter_symbol_records(path))
    except ElfFormatError as error:
        raise SymbolsError(error.message) from None
    relocatable = _is_relocatable(path)
    unit_files: list[str] = []
    kept = []
    for record in records:
        if record.type == STT_FILE:
            unit_files.append(record.name)
            continue
        if not record.name or record.type == STT_SECTION or record.section_name is None:
            continue
        if relocatable and (
            not record.section_flags & SHF_ALLOC or record.section_name.startswith(".init")
        ):
            continue  # module kallsyms keep only core (non-init, allocated) symbols
        unit = len(unit_files) - 1 if record.bind == STB_LOCAL and unit_files else NO_UNIT
        kept.append((record, unit))
    if not relocatable:
        # vmlinux kallsyms are sorted by address, strong before weak at equal addresses.
        kept.sort(key=lambda pair: (pair[0].value, pair[0].bind == STB_WEAK))
    flags = bytearray(len(kept))
    for position, (record, _) in enumerate(kept):
        flags[position] = (
            (GLOBAL if record.bind in (STB_GLOBAL, STB_WEAK) else 0)
            | (WEAK if record.bind == STB_WEAK else 0)
            | (FUNCTION if record.type == STT_FUNC else 0)
        )
    return SymbolTable(
        objname,
        [record.name for record, _ in kept],
        array("Q", [record.value for record, _ in kept]),
        flags,
        array("I", [unit for _, unit in kept]) if unit_files else None,
        unit_files,
    )


def _is_relocatable(path: Path) -> bool:
    with path.open("rb") as handle:
        header = handle.read(18)
    return len(header) >= 18 and int.from_bytes(header[16:18], "little") == 1


def _from_text(path: Path, objname: str) -> SymbolTable:
    """System.map (`nm -n` output) or /proc/kallsyms; kallsyms lines may carry `[module]`."""
    names: list[str] = []
    addresses = array("Q")
    flags = bytearray()
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
        names.append(name)
        addresses.append(address)
        flags.append((GLOBAL if kind.isupper() or kind in "wv" else 0)
                     | (WEAK if kind in "wWvV" else 0)
                     | (FUNCTION if kind in "tTwW" else 0))
    if not names:
        raise SymbolsError(f"{path}: no symbols of {objname} found")
    return SymbolTable(objname, names, addresses, flags)


# The compact form of a symbol table (`write_compact_table`): a vmlinux's full .symtab with
# its link units, some 5 MB instead of the 600 MB vmlinux, loaded in a few hundredths of a
# second. A header line names the format, then one JSON line, then the columns.
COMPACT_MAGIC = b"kpatchbuild symbol table 1\n"


def write_compact_table(table: SymbolTable, path: str | os.PathLike[str]) -> None:
    """Write ``table`` in the compact form (publish it by rename: this writes in place)."""
    names = "\n".join(table.names).encode("utf-8", errors="surrogateescape")
    units = table.units if table.units is not None else array("I")
    header = {"objname": table.objname, "count": len(table.names), "names": len(names),
              "units": table.unit_files if table.units is not None else None}
    with open(path, "wb") as handle:
        handle.write(COMPACT_MAGIC)
        handle.write(json.dumps(header).encode() + b"\n")
        handle.write(names)
        handle.write(array("I", table.orders).tobytes())
        handle.write(array("Q", table.addresses).tobytes())
        handle.write(bytes(table.flags))
        handle.write(array("I", units).tobytes())


def _from_compact(path: Path, objname: str) -> SymbolTable:
    data = path.read_bytes()
    damaged = (f"{path}: damaged compact symbol table ({{}}); delete it to have it made again")
    try:
        line_end = data.index(b"\n", len(COMPACT_MAGIC))
        header = json.loads(data[len(COMPACT_MAGIC):line_end])
        count, names_size = int(header["count"]), int(header["names"])
        columns = _Columns(data, line_end + 1)
        raw_names = columns.take(names_size)
        try:
            names = raw_names.decode("ascii")
        except UnicodeDecodeError:
            names = raw_names.decode("utf-8", errors="surrogateescape")
        orders = columns.array("I", count)
        addresses = columns.array("Q", count)
        flags = columns.take(count)
        units = columns.array("I", count) if header["units"] is not None else None
    except (ValueError, KeyError, TypeError) as error:
        raise SymbolsError(damaged.format(error)) from None
    name_list = names.split("\n") if count else []
    if len(name_list) != count:
        raise SymbolsError(damaged.format("names do not match the count"))
    if header["objname"] != objname:
        raise SymbolsError(f"{path}: a symbol table of {header['objname']}, not of {objname}")
    return SymbolTable.from_sorted_columns(objname, name_list, orders, addresses, flags, units,
                                           header["units"] or [])


class _Columns:
    """Reads the compact form's columns one after the other, checking each is whole."""

    def __init__(self, data: bytes, position: int) -> None:
        self.data = data
        self.position = position

    def take(self, size: int) -> bytes:
        chunk = self.data[self.position:self.position + size]
        if len(chunk) != size:
            raise ValueError("truncated")
        self.position += size
        return chunk

    def array(self, typecode: str, count: int) -> array[Any]:
        column = array(typecode)
        column.frombytes(self.take(column.itemsize * count))
        return column


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
