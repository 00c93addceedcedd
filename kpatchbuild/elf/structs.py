"""The on-disk records of ELF64 little-endian, declared once as field tables.

Both the reader (for the bulk tables pyelftools would decode one entry at a time) and the
writer pack and unpack through these declarations, so a field's width and order are written
down in exactly one place, like pyelftools' ``elftools/elf/structs.py``.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator, Mapping
from typing import Any


class Record:
    """One fixed-size ELF record: its C name and (field, struct code) pairs in file order."""

    __slots__ = ("name", "fields", "names", "_codec")

    def __init__(self, name: str, fields: tuple[tuple[str, str], ...]) -> None:
        self.name = name
        self.fields = fields
        self.names = tuple(field for field, _ in fields)
        self._codec = struct.Struct("<" + "".join(code for _, code in fields))

    @property
    def size(self) -> int:
        return self._codec.size

    def pack(self, values: Mapping[str, int | bytes]) -> bytes:
        """Pack a mapping of every field; a missing field is a programming error."""
        return self._codec.pack(*(values[name] for name in self.names))

    def pack_tuple(self, values: tuple[int, ...]) -> bytes:
        return self._codec.pack(*values)

    def unpack(self, data: bytes | memoryview | mmap.mmap, offset: int = 0) -> dict[str, Any]:
        """The fields by name: ints, and bytes for the ``s`` fields (``e_ident``)."""
        return dict(zip(self.names, self._codec.unpack_from(data, offset), strict=True))

    def iter_tuples(self, data: bytes | memoryview) -> Iterator[tuple[Any, ...]]:
        """Decode a packed array of records at C speed: the hot path for symbols and relocations."""
        return self._codec.iter_unpack(data)


ELF64_EHDR = Record(
    "Elf64_Ehdr",
    (
        ("e_ident", "16s"),
        ("e_type", "H"),
        ("e_machine", "H"),
        ("e_version", "I"),
        ("e_entry", "Q"),
        ("e_phoff", "Q"),
        ("e_shoff", "Q"),
        ("e_flags", "I"),
        ("e_ehsize", "H"),
        ("e_phentsize", "H"),
        ("e_phnum", "H"),
        ("e_shentsize", "H"),
        ("e_shnum", "H"),
        ("e_shstrndx", "H"),
    ),
)

ELF64_SHDR = Record(
    "Elf64_Shdr",
    (
        ("sh_name", "I"),
        ("sh_type", "I"),
        ("sh_flags", "Q"),
        ("sh_addr", "Q"),
        ("sh_offset", "Q"),
        ("sh_size", "Q"),
        ("sh_link", "I"),
        ("sh_info", "I"),
        ("sh_addralign", "Q"),
        ("sh_entsize", "Q"),
    ),
)

ELF64_SYM = Record(
    "Elf64_Sym",
    (
        ("st_name", "I"),
        ("st_info", "B"),
        ("st_other", "B"),
        ("st_shndx", "H"),
        ("st_value", "Q"),
        ("st_size", "Q"),
    ),
)

ELF64_RELA = Record(
    "Elf64_Rela",
    (
        ("r_offset", "Q"),
        ("r_info", "Q"),
        ("r_addend", "q"),
    ),
)

# The extended section index table (SHT_SYMTAB_SHNDX) and group tables are arrays of words.
ELF64_WORD = Record("Elf64_Word", (("value", "I"),))

assert ELF64_EHDR.size == 64 and ELF64_SHDR.size == 64
assert ELF64_SYM.size == 24 and ELF64_RELA.size == 24
