"""ELF file -> ElfObject, through the record tables of ``structs.py``.

The ELF header, the section headers and the big fixed-size arrays (symbols, relocations)
are all decoded through the same declared records the writer packs with, in bulk where
they are arrays: a kernel object holds tens of thousands of relocations and the differ must
read one in well under a second (pyelftools decodes one entry at a time, and its section
headers are reachable only through a private method). Every range is checked against the
file before it is read, and any failure becomes one ElfFormatError naming the file: a
corrupted object is an input error, never a traceback.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpatchbuild.base.errors import KpbError
from kpatchbuild.elf.model import (
    EM_X86_64,
    ET_REL,
    SHF_RELA_LIVEPATCH,
    SHN_ABS,
    SHN_COMMON,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHN_XINDEX,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_NULL,
    SHT_REL,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    ElfObject,
    Relocation,
    RelocationTable,
    Section,
    Symbol,
)
from kpatchbuild.elf.structs import ELF64_EHDR, ELF64_RELA, ELF64_SHDR, ELF64_SYM, ELF64_WORD

ELF_MAGIC = b"\x7fELF"
EI_OSABI = 7
EI_ABIVERSION = 8
ELFCLASS64 = 2
ELFDATA2LSB = 1
# Kernel sections align to at most a page (or a 2 MiB huge page); anything larger is damage,
# and honouring it would make the writer pad gigabytes.
MAX_ALIGNMENT = 1 << 21


class ElfFormatError(KpbError):
    """The input is not a readable ELF64 x86_64 relocatable object (missing, wrong or corrupt)."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class _RawSection:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


@dataclass(frozen=True, slots=True)
class SymbolRecord:
    """A symbol of a (possibly huge) ELF read without building a model: what symbols.py needs."""

    name: str
    value: int
    size: int
    bind: int
    type: int
    shndx: int
    section_name: str | None
    section_flags: int


def read_elf(path: str | os.PathLike[str]) -> ElfObject:
    """Read a relocatable x86_64 object from a file into the model."""
    raw = _read_file(path)
    return read_elf_bytes(raw, name=str(path))


def read_elf_bytes(
    raw: bytes, *, name: str = "<memory>", require_relocatable: bool = True
) -> ElfObject:
    """Read an ELF image from memory; raises ElfFormatError for anything it cannot trust."""
    try:
        return _Reader(raw, name, require_relocatable).build()
    except ElfFormatError:
        raise
    except Exception as error:  # noqa: BLE001 - any parser failure on hostile input is a format error
        raise ElfFormatError(f"{name}: corrupt ELF ({type(error).__name__}: {error})") from None


def iter_symbol_records(path: str | os.PathLike[str]) -> Iterator[SymbolRecord]:
    """Yield the symbols of any ELF64 x86_64 file (vmlinux, .ko, .o) in symbol-table order.

    Memory-maps the file and touches only the headers, the symbol table and its strings, so a
    590 MB vmlinux with debug info costs the size of its symbol table.
    """
    try:
        with open(path, "rb") as handle:
            try:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:
                raise ElfFormatError(f"{path}: empty file, not an ELF object") from None
    except OSError as error:
        raise ElfFormatError(f"{path}: cannot read: {error.strerror}") from None
    with mapped:
        try:
            reader = _Reader(mapped, str(path), require_relocatable=False)
            records = list(reader.symbol_records())
        except ElfFormatError:
            raise
        except Exception as error:  # noqa: BLE001 - see read_elf_bytes
            raise ElfFormatError(f"{path}: corrupt ELF ({type(error).__name__}: {error})") from None
    yield from records


def _read_file(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ElfFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ElfFormatError(f"{path}: is a directory, not an ELF object") from None
    except OSError as error:
        raise ElfFormatError(f"{path}: cannot read: {error.strerror}") from None


class _Reader:
    def __init__(self, raw: bytes | mmap.mmap, name: str, require_relocatable: bool) -> None:
        self.raw = raw
        self.name = name
        self.require_relocatable = require_relocatable
        self.header = self._check_ident()
        self._check_header()
        self.raw_sections = self._section_headers()

    def fail(self, reason: str) -> ElfFormatError:
        return ElfFormatError(f"{self.name}: {reason}")

    # -- headers -------------------------------------------------------------------------------

    def _check_ident(self) -> dict[str, Any]:
        raw = self.raw
        if len(raw) < 4 or raw[:4] != ELF_MAGIC:
            raise self.fail("not an ELF file")
        if len(raw) < ELF64_EHDR.size:
            raise self.fail("truncated ELF header")
        if raw[4] != ELFCLASS64 or raw[5] != ELFDATA2LSB:
            raise self.fail("not a 64-bit little-endian ELF object (x86_64 expected)")
        header = ELF64_EHDR.unpack(raw)
        if header["e_shentsize"] != ELF64_SHDR.size:
            raise self.fail(f"bad section header size {header['e_shentsize']}")
        shoff = header["e_shoff"]
        if shoff == 0 or shoff + ELF64_SHDR.size > len(raw):
            raise self.fail("truncated: section header table beyond end of file")
        count = header["e_shnum"]
        if count == 0:  # extended numbering: the real count lives in section 0's sh_size
            count = ELF64_SHDR.unpack(raw, shoff)["sh_size"]
        if shoff + count * ELF64_SHDR.size > len(raw):
            raise self.fail("truncated: section header table beyond end of file")
        header["section_count"] = count
        return header

    def _check_header(self) -> None:
        header = self.header
        machine = header["e_machine"]
        if machine != EM_X86_64:
            raise self.fail(f"not an x86_64 object (machine {machine})")
        if self.require_relocatable and header["e_type"] != ET_REL:
            raise self.fail(f"not a relocatable object (type {header['e_type']})")

    def _section_headers(self) -> list[_RawSection]:
        count: int = self.header["section_count"]
        table = memoryview(self.raw)[self.header["e_shoff"]:][: count * ELF64_SHDR.size]
        headers = [dict(zip(ELF64_SHDR.names, values, strict=True))
                   for values in ELF64_SHDR.iter_tuples(table)]
        shstrndx: int = self.header["e_shstrndx"]
        if shstrndx == SHN_XINDEX:  # extended numbering: the real index is section 0's sh_link
            shstrndx = headers[0]["sh_link"]
        if count and not 0 < shstrndx < count:
            raise self.fail(f"section name table index {shstrndx} out of range")
        self.shstrndx = shstrndx
        names = self._table_bytes(headers[shstrndx]) if count else b""
        result = []
        for index, header in enumerate(headers):
            section_type = header["sh_type"]
            raw_section = _RawSection(
                index=index,
                name=_string_at(names, header["sh_name"], self, "section name"),
                type=section_type,
                flags=header["sh_flags"],
                addr=header["sh_addr"],
                offset=header["sh_offset"],
                size=header["sh_size"],
                link=header["sh_link"],
                info=header["sh_info"],
                addralign=header["sh_addralign"],
                entsize=header["sh_entsize"],
            )
            align = raw_section.addralign
            if align & (align - 1) or align > MAX_ALIGNMENT:
                raise self.fail(f"section {raw_section.name!r} has a bad alignment {align:#x}")
            if section_type not in (SHT_NOBITS, SHT_NULL):
                if raw_section.offset + raw_section.size > len(self.raw):
                    raise self.fail(f"truncated: section {raw_section.name!r} beyond end of file")
            result.append(raw_section)
        return result

    def _table_bytes(self, header: dict[str, int]) -> bytes:
        offset, size = header["sh_offset"], header["sh_size"]
        if offset + size > len(self.raw):
            raise self.fail("truncated: string table beyond end of file")
        return bytes(self.raw[offset : offset + size])

    def _contents(self, raw_section: _RawSection) -> bytes:
        return bytes(self.raw[raw_section.offset : raw_section.offset + raw_section.size])

    # -- symbols -------------------------------------------------------------------------------

    def _symbol_table(self) -> _RawSection | None:
        tables = [s for s in self.raw_sections if s.type == SHT_SYMTAB]
        if len(tables) > 1:
            raise self.fail("more than one symbol table")
        return tables[0] if tables else None

    def _symbol_tuples(
        self, symtab: _RawSection
    ) -> tuple[list[tuple[Any, ...]], bytes, list[int] | None]:
        if symtab.entsize != ELF64_SYM.size or symtab.size % ELF64_SYM.size:
            raise self.fail("symbol table has a bad entry size")
        if not 0 < symtab.link < len(self.raw_sections):
            raise self.fail("symbol table's string table index out of range")
        strtab = self.raw_sections[symtab.link]
        if strtab.type != SHT_STRTAB:
            raise self.fail("symbol table's string table is not a string table")
        entries = list(ELF64_SYM.iter_tuples(memoryview(self._contents(symtab))))
        extended = None
        for candidate in self.raw_sections:
            if candidate.type == SHT_SYMTAB_SHNDX and candidate.link == symtab.index:
                words = self._contents(candidate)
                extended = _words(words)
                if len(extended) < len(entries):
                    raise self.fail("extended section index table shorter than symbol table")
        return entries, self._contents(strtab), extended

    def symbol_records(self) -> Iterator[SymbolRecord]:
        symtab = self._symbol_table()
        if symtab is None:
            raise self.fail("no symbol table (stripped?)")
        entries, strings, extended = self._symbol_tuples(symtab)
        sections = self.raw_sections
        for position, (st_name, st_info, _other, st_shndx, value, size) in enumerate(entries):
            if position == 0:
                continue
            shndx = extended[position] if st_shndx == SHN_XINDEX and extended else st_shndx
            in_section = st_shndx < SHN_LORESERVE or st_shndx == SHN_XINDEX
            section = sections[shndx] if in_section and 0 < shndx < len(sections) else None
            yield SymbolRecord(
                name=_string_at(strings, st_name, self, "symbol name"),
                value=value,
                size=size,
                bind=st_info >> 4,
                type=st_info & 0xF,
                shndx=shndx,
                section_name=section.name if section else None,
                section_flags=section.flags if section else 0,
            )

    # -- the model -----------------------------------------------------------------------------

    def build(self) -> ElfObject:
        header = self.header
        ident: bytes = header["e_ident"]
        obj = ElfObject(
            machine=EM_X86_64,
            type=header["e_type"],
            flags=header["e_flags"],
            osabi=ident[EI_OSABI],
            abiversion=ident[EI_ABIVERSION],
            name=self.name,
        )
        symtab = self._symbol_table()
        structural = {0, self.shstrndx}
        if symtab is not None:
            structural |= {symtab.index, symtab.link}
        by_index: dict[int, Section] = {}
        for raw_section in self.raw_sections:
            if raw_section.index in structural or raw_section.type in (
                SHT_RELA,
                SHT_SYMTAB_SHNDX,
            ):
                continue
            if raw_section.type == SHT_REL:
                raise self.fail(f"section {raw_section.name!r}: REL relocations are not x86_64's")
            section = Section(
                name=raw_section.name,
                type=raw_section.type,
                flags=raw_section.flags,
                data=b"" if raw_section.type == SHT_NOBITS else self._contents(raw_section),
                addralign=raw_section.addralign,
                entsize=raw_section.entsize,
                addr=raw_section.addr,
                nobits_size=raw_section.size if raw_section.type == SHT_NOBITS else 0,
                info=raw_section.info,
            )
            by_index[raw_section.index] = section
            obj.sections.append(section)
        # sh_link of ordinary sections (SHF_LINK_ORDER) names another section.
        for raw_section in self.raw_sections:
            linking = by_index.get(raw_section.index)
            if linking is not None and raw_section.link and raw_section.type != SHT_GROUP:
                linking.link = by_index.get(raw_section.link)
                if linking.link is None:
                    raise self.fail(f"section {raw_section.name!r} links to a missing section")

        symbols: list[Symbol] = []
        if symtab is not None:
            symbols = self._build_symbols(symtab, by_index)
            obj.symbols = symbols[1:]
        for raw_section in self.raw_sections:
            if raw_section.type == SHT_RELA:
                self._attach_relocations(raw_section, by_index, symbols, symtab)
            elif raw_section.type == SHT_GROUP:
                self._attach_group(raw_section, by_index, symbols)
        return obj

    def _build_symbols(self, symtab: _RawSection, by_index: dict[int, Section]) -> list[Symbol]:
        entries, strings, extended = self._symbol_tuples(symtab)
        symbols: list[Symbol] = []
        for position, (st_name, st_info, other, st_shndx, value, size) in enumerate(entries):
            shndx = st_shndx
            if st_shndx == SHN_XINDEX:
                if extended is None:
                    raise self.fail(f"symbol {position} uses an extended index without a table")
                shndx = extended[position]
                section = by_index.get(shndx)
                if section is None:
                    raise self.fail(f"symbol {position} in a missing section {shndx}")
            elif st_shndx in (SHN_UNDEF, SHN_ABS, SHN_COMMON):
                section = None
            elif st_shndx >= SHN_LORESERVE:
                section = None  # processor/OS-specific indices (e.g. SHN_LIVEPATCH) pass through
            else:
                section = by_index.get(st_shndx)
                if section is None:
                    raise self.fail(f"symbol {position} in a missing section {st_shndx}")
            symbols.append(
                Symbol(
                    name=_string_at(strings, st_name, self, "symbol name"),
                    value=value,
                    size=size,
                    bind=st_info >> 4,
                    type=st_info & 0xF,
                    other=other,
                    section=section,
                    shndx=0 if section is not None else st_shndx,
                )
            )
        return symbols

    def _attach_relocations(
        self,
        raw_section: _RawSection,
        by_index: dict[int, Section],
        symbols: list[Symbol],
        symtab: _RawSection | None,
    ) -> None:
        target = by_index.get(raw_section.info)
        if target is None:
            raise self.fail(f"relocation section {raw_section.name!r} patches no known section")
        if symtab is None or raw_section.link != symtab.index:
            raise self.fail(f"relocation section {raw_section.name!r} not tied to the symbol table")
        if raw_section.entsize != ELF64_RELA.size or raw_section.size % ELF64_RELA.size:
            raise self.fail(f"relocation section {raw_section.name!r} has a bad entry size")
        livepatch = bool(raw_section.flags & SHF_RELA_LIVEPATCH)
        if target.relocations is not None and not livepatch:
            raise self.fail(f"section {target.name!r} has two relocation sections")
        count = len(symbols)
        relocations = []
        for offset, info, addend in ELF64_RELA.iter_tuples(memoryview(self._contents(raw_section))):
            symbol_index = info >> 32
            if not 0 < symbol_index < count:
                if symbol_index == 0:
                    raise self.fail(f"{raw_section.name}: relocation at {offset:#x} has no symbol")
                raise self.fail(f"{raw_section.name}: symbol index {symbol_index} out of range")
            relocations.append(Relocation(offset, info & 0xFFFFFFFF, symbols[symbol_index], addend))
        if livepatch:
            # A livepatch module's .klp.rela.<object>.<section>: one per target object, beside
            # the section's ordinary table.
            target.extra_relocation_tables.append(
                RelocationTable(raw_section.name, relocations, raw_section.flags)
            )
            return
        target.relocations = relocations
        target.rela_name = raw_section.name
        target.rela_flags = raw_section.flags

    def _attach_group(
        self, raw_section: _RawSection, by_index: dict[int, Section], symbols: list[Symbol]
    ) -> None:
        section = by_index[raw_section.index]
        words = _words(section.data)
        if not words:
            raise self.fail(f"group section {raw_section.name!r} is empty")
        section.group_flags = words[0]
        members = []
        for index in words[1:]:
            member = by_index.get(index)
            if member is None:
                raise self.fail(f"group {raw_section.name!r} names a missing section {index}")
            members.append(member)
        section.group_members = members
        if not 0 < raw_section.info < len(symbols):
            raise self.fail(f"group {raw_section.name!r} has no signature symbol")
        section.group_signature = symbols[raw_section.info]
        section.data = b""
        section.link = None


def _string_at(table: bytes, offset: int, reader: _Reader, what: str) -> str:
    if offset >= len(table) and offset:
        raise reader.fail(f"{what} offset {offset} beyond its string table")
    end = table.find(b"\0", offset)
    if end < 0:
        raise reader.fail(f"{what} at {offset} not terminated")
    return table[offset:end].decode("utf-8", "surrogateescape")


def _words(data: bytes) -> list[int]:
    return [value for (value,) in ELF64_WORD.iter_tuples(data[: len(data) // 4 * 4])]
