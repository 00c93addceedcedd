"""An in-memory ELF64 relocatable object: sections, symbols and relocations as linked values.

Indices are a file-format detail: here a symbol points at its Section, a relocation at its
Symbol, a relocation table hangs off the section it patches. That lets the differ build a new
object out of pieces of another without renumbering anything; the writer assigns indices.
The symbol and string tables are not sections of the model: the writer regenerates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Section types and flags (the subset kernel objects use; other values pass through as ints).
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9
SHT_GROUP = 17
SHT_SYMTAB_SHNDX = 18

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_MERGE = 0x10
SHF_STRINGS = 0x20
SHF_INFO_LINK = 0x40
SHF_LINK_ORDER = 0x80
SHF_GROUP = 0x200
SHF_COMPRESSED = 0x800
# Linux livepatch (Documentation/livepatch/module-elf-format.rst): a relocation table the
# module loader leaves to livepatch, and the section index of symbols livepatch resolves.
SHF_RELA_LIVEPATCH = 0x00100000

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF
SHN_LIVEPATCH = 0xFF20

STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2

STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4
STT_COMMON = 5
STT_TLS = 6

ET_REL = 1
EM_X86_64 = 62

R_X86_64_NONE = 0
R_X86_64_64 = 1
R_X86_64_PC32 = 2
R_X86_64_GOT32 = 3
R_X86_64_PLT32 = 4
R_X86_64_GOTPCREL = 9
R_X86_64_32 = 10
R_X86_64_32S = 11
R_X86_64_PC64 = 24
R_X86_64_GOTPCRELX = 41
R_X86_64_REX_GOTPCRELX = 42

# Relocation types whose value is computed relative to the place being patched: their addend
# carries the distance from the relocated field to the end of the instruction as well.
PC_RELATIVE_TYPES = frozenset(
    {
        R_X86_64_PC32,
        R_X86_64_PLT32,
        R_X86_64_PC64,
        R_X86_64_GOTPCREL,
        R_X86_64_GOTPCRELX,
        R_X86_64_REX_GOTPCRELX,
    }
)


@dataclass(eq=False, slots=True)
class Section:
    """One section; ``data`` is its contents (empty for NOBITS, whose length is ``nobits_size``).

    Identity matters, not equality: two sections with equal contents are still two sections.
    """

    name: str
    type: int = SHT_PROGBITS
    flags: int = 0
    data: bytes = b""
    addralign: int = 1
    entsize: int = 0
    addr: int = 0
    nobits_size: int = 0
    # sh_link and sh_info when they are not the structural references the writer recomputes
    # (symbol table, relocated section); a LINK_ORDER section's partner is a Section.
    link: Section | None = None
    info: int = 0
    # The relocation table that patches this section (written as ".rela<name>").
    relocations: list[Relocation] | None = None
    rela_name: str | None = None
    rela_flags: int = SHF_INFO_LINK
    # Further tables patching this section, written after ``relocations``: a livepatch
    # module has one `.klp.rela.<object>.<section>` per target object besides the ordinary one.
    extra_relocation_tables: list[RelocationTable] = field(default_factory=list)
    # SHT_GROUP only: its flag word, members and signature symbol.
    group_flags: int = 0
    group_members: list[Section] = field(default_factory=list)
    group_signature: Symbol | None = None

    @property
    def size(self) -> int:
        return self.nobits_size if self.type == SHT_NOBITS else len(self.data)

    @property
    def is_alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def is_text(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)

    @property
    def is_strings(self) -> bool:
        return bool(self.flags & SHF_STRINGS)

    def __repr__(self) -> str:
        return f"Section({self.name!r}, size={self.size})"


@dataclass(eq=False, slots=True)
class Symbol:
    """A symbol; ``section`` is None for undefined, absolute and common symbols (see ``shndx``)."""

    name: str
    value: int = 0
    size: int = 0
    bind: int = STB_LOCAL
    type: int = STT_NOTYPE
    other: int = 0
    section: Section | None = None
    # For symbols without a section: SHN_UNDEF, SHN_ABS or SHN_COMMON.
    shndx: int = SHN_UNDEF

    @property
    def is_undefined(self) -> bool:
        return self.section is None and self.shndx == SHN_UNDEF

    @property
    def is_local(self) -> bool:
        return self.bind == STB_LOCAL

    @property
    def is_function(self) -> bool:
        return self.type == STT_FUNC

    @property
    def is_section_symbol(self) -> bool:
        return self.type == STT_SECTION

    def __repr__(self) -> str:
        where = self.section.name if self.section else self.shndx
        return f"Symbol({self.name!r}, {where}+{self.value:#x}/{self.size})"


@dataclass(eq=False, slots=True)
class Relocation:
    """A RELA entry: patch ``offset`` in the owning section with ``symbol + addend`` by ``type``."""

    offset: int
    type: int
    symbol: Symbol
    addend: int = 0


@dataclass(eq=False, slots=True)
class RelocationTable:
    """A relocation table beyond a section's first one (see Section.extra_relocation_tables)."""

    name: str
    relocations: list[Relocation]
    flags: int = SHF_INFO_LINK


@dataclass(eq=False, slots=True)
class ElfObject:
    """A whole relocatable object: header fields that matter, sections and symbols in order."""

    sections: list[Section] = field(default_factory=list)
    symbols: list[Symbol] = field(default_factory=list)
    machine: int = EM_X86_64
    type: int = ET_REL
    flags: int = 0
    osabi: int = 0
    abiversion: int = 0
    name: str = "<memory>"

    def section_by_name(self, name: str) -> Section | None:
        for section in self.sections:
            if section.name == name:
                return section
        return None

    def section_symbol(self, section: Section) -> Symbol | None:
        for symbol in self.symbols:
            if symbol.type == STT_SECTION and symbol.section is section:
                return symbol
        return None
