"""ElfObject -> ELF64 relocatable bytes.

The writer owns every index and offset: it numbers sections (each relocation table right after
the section it patches, as the assembler does), puts local symbols before global ones as the
ELF spec requires, regenerates the symbol, string and section-name tables, and switches to
extended section numbering when there are more sections than a 16-bit index can name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.elf.model import (
    SHN_LORESERVE,
    SHN_XINDEX,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    STB_LOCAL,
    ElfObject,
    RelocationTable,
    Section,
    Symbol,
)
from kpatchbuild.elf.structs import ELF64_EHDR, ELF64_RELA, ELF64_SHDR, ELF64_SYM, ELF64_WORD

EV_CURRENT = 1


class StringTable:
    """An ELF string table under construction: each distinct string stored once."""

    def __init__(self) -> None:
        self._offsets: dict[str, int] = {"": 0}
        self._chunks: list[bytes] = [b"\0"]
        self._size = 1

    def add(self, text: str) -> int:
        offset = self._offsets.get(text)
        if offset is None:
            encoded = text.encode("utf-8", "surrogateescape") + b"\0"
            offset = self._offsets[text] = self._size
            self._chunks.append(encoded)
            self._size += len(encoded)
        return offset

    def to_bytes(self) -> bytes:
        return b"".join(self._chunks)


@dataclass(slots=True)
class _OutSection:
    """A section as it will be written: header fields plus contents."""

    name: str
    type: int
    flags: int = 0
    data: bytes = b""
    size: int = 0
    addr: int = 0
    link: int = 0
    info: int = 0
    addralign: int = 1
    entsize: int = 0
    offset: int = 0


def write_elf(obj: ElfObject) -> bytes:
    """Serialise the model; indices are derived from list order, never stored in the model."""
    return _Writer(obj).write()


def write_elf_file(obj: ElfObject, path: str | os.PathLike[str]) -> None:
    """Write atomically: a reader never sees a half-written object."""
    target = Path(path)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_bytes(write_elf(obj))
    temporary.replace(target)


class _Writer:
    def __init__(self, obj: ElfObject) -> None:
        self.obj = obj
        self.section_index: dict[int, int] = {}
        self.symbol_index: dict[int, int] = {}

    def write(self) -> bytes:
        obj = self.obj
        # Number the sections: model sections with their relocation tables, then the tables.
        order: list[tuple[str, Section, RelocationTable | None]] = []
        for section in obj.sections:
            order.append(("section", section, None))
            if section.relocations is not None:
                order.append(("rela", section, None))
            for table in section.extra_relocation_tables:
                order.append(("rela", section, table))
        for position, (kind, section, _table) in enumerate(order, start=1):
            if kind == "section":
                self.section_index[id(section)] = position
        symtab_index = len(order) + 1
        strtab_index = symtab_index + 1
        shstrtab_index = strtab_index + 1
        total = shstrtab_index + 1
        extended = total >= SHN_LORESERVE
        if extended:
            total += 1  # the SHT_SYMTAB_SHNDX table

        locals_ = [s for s in obj.symbols if s.bind == STB_LOCAL]
        globals_ = [s for s in obj.symbols if s.bind != STB_LOCAL]
        ordered_symbols = locals_ + globals_
        for position, symbol in enumerate(ordered_symbols, start=1):
            self.symbol_index[id(symbol)] = position

        names = StringTable()
        strings = StringTable()
        out: list[_OutSection] = [_OutSection(name="", type=0)]
        for kind, section, relocations in order:
            if kind == "section":
                out.append(self._plain(section))
            else:
                out.append(self._rela(section, symtab_index, relocations))
        symtab_data, shndx_data = self._symbols(ordered_symbols, strings, extended)
        out.append(
            _OutSection(
                name=".symtab",
                type=SHT_SYMTAB,
                data=symtab_data,
                link=strtab_index,
                info=len(locals_) + 1,
                addralign=8,
                entsize=ELF64_SYM.size,
            )
        )
        out.append(_OutSection(name=".strtab", type=SHT_STRTAB, data=strings.to_bytes()))
        shstrtab = _OutSection(name=".shstrtab", type=SHT_STRTAB)
        out.append(shstrtab)
        if extended:
            out.append(
                _OutSection(
                    name=".symtab_shndx",
                    type=SHT_SYMTAB_SHNDX,
                    data=shndx_data,
                    link=symtab_index,
                    addralign=4,
                    entsize=4,
                )
            )
        for entry in out:
            if entry.type == SHT_GROUP:
                entry.link = symtab_index
        name_offsets = [names.add(entry.name) for entry in out]
        shstrtab.data = names.to_bytes()
        return self._layout(out, name_offsets, shstrtab_index, extended)

    # -- sections ------------------------------------------------------------------------------

    def _plain(self, section: Section) -> _OutSection:
        entry = _OutSection(
            name=section.name,
            type=section.type,
            flags=section.flags,
            data=section.data,
            size=section.nobits_size if section.type == SHT_NOBITS else len(section.data),
            addr=section.addr,
            info=section.info,
            addralign=section.addralign,
            entsize=section.entsize,
        )
        if section.link is not None:
            entry.link = self._index_of(section.link, f"section {section.name!r} link")
        if section.type == SHT_GROUP:
            members = [self._index_of(m, f"group {section.name!r}") for m in section.group_members]
            entry.data = b"".join(
                ELF64_WORD.pack_tuple((word,)) for word in [section.group_flags, *members]
            )
            entry.size = len(entry.data)
            if section.group_signature is None:
                raise ValueError(f"group {section.name!r} has no signature symbol")
            entry.info = self._symbol_of(section.group_signature, f"group {section.name!r}")
        return entry

    def _rela(
        self, section: Section, symtab_index: int, table: RelocationTable | None
    ) -> _OutSection:
        pack = ELF64_RELA.pack_tuple
        symbol_of = self._symbol_of
        relocations = section.relocations if table is None else table.relocations
        where = f"relocations of {section.name!r}"
        data = b"".join(
            pack(
                (
                    rel.offset,
                    (symbol_of(rel.symbol, where) << 32) | rel.type,
                    rel.addend,
                )
            )
            for rel in relocations or ()
        )
        if table is None:
            name, flags = section.rela_name or ".rela" + section.name, section.rela_flags
        else:
            name, flags = table.name, table.flags
        return _OutSection(
            name=name,
            type=SHT_RELA,
            flags=flags,
            data=data,
            size=len(data),
            link=symtab_index,
            info=self.section_index[id(section)],
            addralign=8,
            entsize=ELF64_RELA.size,
        )

    def _symbols(
        self, ordered: list[Symbol], strings: StringTable, extended: bool
    ) -> tuple[bytes, bytes]:
        pack = ELF64_SYM.pack_tuple
        records = [pack((0, 0, 0, 0, 0, 0))]
        shndx_words = [0]
        for symbol in ordered:
            if symbol.section is not None:
                index = self._index_of(symbol.section, f"symbol {symbol.name!r}")
            else:
                index = symbol.shndx
            word = 0
            if symbol.section is not None and index >= SHN_LORESERVE:
                word, index = index, SHN_XINDEX
            shndx_words.append(word)
            info = (symbol.bind << 4) | (symbol.type & 0xF)
            name = strings.add(symbol.name)
            records.append(pack((name, info, symbol.other, index, symbol.value, symbol.size)))
        shndx = b"".join(ELF64_WORD.pack_tuple((w,)) for w in shndx_words) if extended else b""
        return b"".join(records), shndx

    def _index_of(self, section: Section, where: str) -> int:
        index = self.section_index.get(id(section))
        if index is None:
            raise ValueError(f"{where}: section {section.name!r} is not part of the object")
        return index

    def _symbol_of(self, symbol: Symbol, where: str) -> int:
        index = self.symbol_index.get(id(symbol))
        if index is None:
            raise ValueError(f"{where}: symbol {symbol.name!r} is not part of the object")
        return index

    # -- file layout ---------------------------------------------------------------------------

    def _layout(
        self, out: list[_OutSection], name_offsets: list[int], shstrtab_index: int, extended: bool
    ) -> bytes:
        chunks: list[bytes] = []
        position = ELF64_EHDR.size
        for entry in out[1:]:
            if entry.type != SHT_NOBITS:
                entry.size = len(entry.data)
                align = max(entry.addralign, 1)
                padding = -position % align
                if padding:
                    chunks.append(b"\0" * padding)
                    position += padding
                entry.offset = position
                chunks.append(entry.data)
                position += entry.size
            else:
                entry.offset = position
        padding = -position % 8
        chunks.append(b"\0" * padding)
        shoff = position + padding

        if extended:
            out[0].size = len(out)
            out[0].link = shstrtab_index if shstrtab_index >= SHN_LORESERVE else 0
        headers = [
            ELF64_SHDR.pack_tuple(
                (
                    name_offset,
                    entry.type,
                    entry.flags,
                    entry.addr,
                    entry.offset if entry is not out[0] else 0,
                    entry.size,
                    entry.link,
                    entry.info,
                    entry.addralign if entry is not out[0] else 0,
                    entry.entsize,
                )
            )
            for entry, name_offset in zip(out, name_offsets, strict=True)
        ]
        obj = self.obj
        ident = b"\x7fELF" + bytes([2, 1, EV_CURRENT, obj.osabi, obj.abiversion]) + b"\0" * 7
        header = ELF64_EHDR.pack(
            {
                "e_ident": ident,
                "e_type": obj.type,
                "e_machine": obj.machine,
                "e_version": EV_CURRENT,
                "e_entry": 0,
                "e_phoff": 0,
                "e_shoff": shoff,
                "e_flags": obj.flags,
                "e_ehsize": ELF64_EHDR.size,
                "e_phentsize": 0,
                "e_phnum": 0,
                "e_shentsize": ELF64_SHDR.size,
                "e_shnum": 0 if extended else len(out),
                "e_shstrndx": SHN_XINDEX if shstrtab_index >= SHN_LORESERVE else shstrtab_index,
            }
        )
        return header + b"".join(chunks) + b"".join(headers)
