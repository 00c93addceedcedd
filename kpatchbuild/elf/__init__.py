"""The ELF64 relocatable object model, its reader (pyelftools) and its writer."""

from kpatchbuild.elf.model import ElfObject, Relocation, Section, Symbol
from kpatchbuild.elf.read import ElfFormatError, read_elf, read_elf_bytes
from kpatchbuild.elf.write import write_elf, write_elf_file

__all__ = [
    "ElfFormatError",
    "ElfObject",
    "Relocation",
    "Section",
    "Symbol",
    "read_elf",
    "read_elf_bytes",
    "write_elf",
    "write_elf_file",
]
