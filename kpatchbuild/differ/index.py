"""Lookup tables over one object, built once: what the passes ask of it again and again.

Which named symbols live in a section and where, the relocations of each section sorted by
offset, and what a relocation really points at. The assembler rewrites references to local
symbols as "section symbol + offset", so ``target_of`` turns them back into "symbol + delta"
(or a string literal, or an anonymous piece of a section) before anything is compared.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

from kpatchbuild.elf.model import (
    PC_RELATIVE_TYPES,
    SHF_MERGE,
    SHF_WRITE,
    STT_FILE,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)

# Compiler-made suffixes: `.123` (static locals, clones), `.cold`, `.part.N`, `.isra.N`,
# `.constprop.N`, `.lto_priv.N`. The numbers are a per-file counter and move between builds.
_NUMBER_PART = re.compile(r"\.\d+(?=\.|$)")
# `__UNIQUE_ID_<name><N>` (dynamic-debug descriptors, BUILD_BUG labels...) carries the
# file's __COUNTER__, which moves for every later use when one is added above.
_UNIQUE_ID_COUNTER = re.compile(r"^(__UNIQUE_ID_\w*?)\d+(?=\.|$)")
_CONTENT_NAMES = ("__func__.", "__FUNCTION__.", "__PRETTY_FUNCTION__.", ".LC")
_SUBFUNCTION_PART = re.compile(r"\.(cold|part|isra|constprop|lto_priv|llvm)(\.\d+)?")


# Statics that are never paired with the original's: the patch gets fresh copies, as kpatch
# gives them (its "special statics"). Their names are not identities (127 `__key.0` in
# vmlinux; a `lock.__key.12` of clang moves with every edit), and a fresh one is harmless
# where a wrong pairing is not: a lockdep class key, a once-flag that may fire once more, a
# ratelimit state, compiler-made switch tables and printk-index entries.
_FRESH_STATIC_NAMES = ("__key", "__warned", "__already_done", "_rs", "CSWTCH", "_entry")
# Sections whose every symbol is such a static: once-flags, and compiler-made data (clang's
# unnamed constants, UBSAN's type and source-location descriptors).
_FRESH_SECTIONS = (".data.once", ".data..once")
_FRESH_SECTION_PREFIXES = (".data..L__unnamed_", ".data.__unnamed_", ".data..Lubsan_",
                           ".data.rel.local..Lubsan_", ".Lubsan_", ".rodata..L__unnamed_")


def is_fresh_static(symbol: Symbol) -> bool:
    """Whether ``symbol`` is a static the patch must carry a fresh copy of, never pair."""
    section = symbol.section
    if section is None or symbol.type in (STT_SECTION, STT_FILE) or not symbol.is_local:
        return False
    if section.name.startswith(_FRESH_SECTION_PREFIXES) or symbol.name.startswith(
            (".L__unnamed_", ".Lubsan_")):
        return True
    if symbol.is_function:
        return False
    if section.name in _FRESH_SECTIONS:
        return True
    for name in _FRESH_STATIC_NAMES:
        # gcc: `__key.12`; clang: `ep_alloc.__key.3`, `__key` alone when unique.
        if symbol.name == name or symbol.name.startswith(f"{name}.") or f".{name}." in \
                f"{symbol.name}." and not symbol.name.startswith("."):
            return True
    return False


def relocation_place(relocation: Relocation, source: Section) -> int:
    """The offset a relocation designates in its symbol's section (addend minus the PC bias)."""
    base = relocation.addend
    if relocation.symbol.type != STT_SECTION:
        base += relocation.symbol.value
    if source.is_text and relocation.type in PC_RELATIVE_TYPES:
        return base + 4
    return base


def normalized_name(name: str) -> str:
    """The name without the compiler's numbering, to pair `foo.123` with `foo.456`."""
    return _NUMBER_PART.sub("", _UNIQUE_ID_COUNTER.sub(r"\1", name))


def is_numbered(name: str) -> bool:
    return bool(_NUMBER_PART.search(name) or _UNIQUE_ID_COUNTER.match(name))


def is_content_symbol(symbol: Symbol) -> bool:
    """Symbols that name constant bytes rather than an object with an identity of its own."""
    section = symbol.section
    if section is None or symbol.type == STT_SECTION:
        return False
    if section.flags & SHF_MERGE:
        return True
    return symbol.name.startswith(_CONTENT_NAMES) and not section.flags & SHF_WRITE


def parent_function_name(name: str) -> str | None:
    """`foo.cold` -> `foo`: the function a `.cold` part belongs to (None if not a cold part)."""
    if name.endswith(".cold") or re.search(r"\.cold\.\d+$", name):
        return re.sub(r"\.cold(\.\d+)?$", "", name)
    return None


# Symbols that name the padding in front of a function, in its own section: objtool's
# `__pfx_<fn>` (CONFIG_CALL_PADDING, 6.2+: the 16 bytes of NOPs a call thunk or FineIBT may
# use) and clang's kCFI `__cfi_<fn>`. They are part of the function, not functions of their
# own: the section still holds one function.
PADDING_PREFIXES = ("__pfx_", "__cfi_")


def padded_function_name(name: str) -> str | None:
    """`__pfx_foo` -> `foo`: the function a padding symbol stands in front of, else None."""
    for prefix in PADDING_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return None


def base_function_name(name: str) -> str:
    """`foo.isra.0` -> `foo`: the source function a compiler clone was made from."""
    return _SUBFUNCTION_PART.split(name, maxsplit=1)[0]


@dataclass(frozen=True, slots=True)
class SymbolTarget:
    """A relocation pointing at ``symbol`` + ``delta`` (delta as the addend would read)."""

    symbol: Symbol
    delta: int


@dataclass(frozen=True, slots=True)
class StringTarget:
    """A relocation into a string-literal section: what matters is the string itself."""

    section: Section
    offset: int  # start of the string in the section
    text: bytes
    delta: int  # addend - offset: the instruction's own adjustment


@dataclass(frozen=True, slots=True)
class AnonymousTarget:
    """A relocation into a part of a section that no symbol names (constants, jump tables)."""

    section: Section
    addend: int


Target = SymbolTarget | StringTarget | AnonymousTarget


class ObjectIndex:
    """Precomputed views of one ElfObject for the differ's passes."""

    def __init__(self, obj: ElfObject) -> None:
        self.obj = obj
        self.source_file = next((s.name for s in obj.symbols if s.type == STT_FILE), None)
        self.section_symbols: dict[int, Symbol] = {}
        self.named_in_section: dict[int, list[Symbol]] = {}
        self._starts: dict[int, list[int]] = {}
        for symbol in obj.symbols:
            if symbol.section is None:
                continue
            if symbol.type == STT_SECTION:
                self.section_symbols.setdefault(id(symbol.section), symbol)
            elif symbol.type != STT_FILE and symbol.name:
                self.named_in_section.setdefault(id(symbol.section), []).append(symbol)
        for key, symbols in self.named_in_section.items():
            # Sized symbols before zero-sized labels at the same address.
            symbols.sort(key=lambda s: (s.value, -s.size))
            self._starts[key] = [s.value for s in symbols]
        self.relocations: dict[int, list[Relocation]] = {}
        self._reloc_offsets: dict[int, list[int]] = {}
        self._piece_starts: dict[int, list[int]] = {}
        for section in obj.sections:
            if section.relocations:
                ordered = sorted(section.relocations, key=lambda r: r.offset)
                self.relocations[id(section)] = ordered
                self._reloc_offsets[id(section)] = [r.offset for r in ordered]
        self.functions = [
            s for s in obj.symbols if s.is_function and s.section is not None and s.name
        ]
        self.by_name: dict[str, Symbol] = {}
        for symbol in obj.symbols:
            if symbol.name and symbol.type not in (STT_SECTION, STT_FILE):
                # A defined symbol wins over an undefined one of the same name.
                if symbol.name not in self.by_name or symbol.section is not None:
                    self.by_name[symbol.name] = symbol

    def symbols_in(self, section: Section) -> list[Symbol]:
        return self.named_in_section.get(id(section), [])

    def containing(self, section: Section, offset: int) -> Symbol | None:
        """The named symbol whose extent covers ``offset`` (zero-sized ones cover their start)."""
        symbols = self.named_in_section.get(id(section))
        if not symbols:
            return None
        position = bisect_right(self._starts[id(section)], offset) - 1
        while position >= 0:
            symbol = symbols[position]
            if symbol.value <= offset < symbol.value + max(symbol.size, 1):
                return symbol
            if symbol.size and symbol.value + symbol.size <= offset:
                return None
            position -= 1
        return None

    def piece_bounds(self, section: Section, place: int) -> tuple[int, int]:
        """The piece of out-of-line code (an alternative's replacement, an `.altinstr_aux`
        stub) holding ``place``: from a referenced offset to the next one."""
        starts = self._piece_starts.get(id(section))
        if starts is None:
            found = {0}
            for other in self.obj.sections:
                for relocation in self.relocations.get(id(other), ()):
                    if relocation.symbol.section is section:
                        if relocation.symbol.type == STT_SECTION:
                            found.add(relocation_place(relocation, other))
                        else:
                            found.add(relocation.symbol.value)
            starts = sorted(p for p in found if 0 <= p < section.size)
            self._piece_starts[id(section)] = starts
        index = bisect_right(starts, place) - 1
        start = starts[max(index, 0)]
        end = starts[index + 1] if index + 1 < len(starts) else section.size
        return start, end

    def relocations_between(self, section: Section, start: int, end: int) -> list[Relocation]:
        """Relocations of ``section`` patching bytes in [start, end), sorted by offset."""
        ordered = self.relocations.get(id(section))
        if not ordered:
            return []
        offsets = self._reloc_offsets[id(section)]
        low = bisect_right(offsets, start - 1)
        high = bisect_right(offsets, end - 1)
        return ordered[low:high]

    def symbol_bytes(self, symbol: Symbol) -> bytes:
        section = symbol.section
        assert section is not None
        if section.type == 8:  # NOBITS: zeros
            return bytes(symbol.size)
        return section.data[symbol.value : symbol.value + symbol.size]

    def target_of(self, relocation: Relocation, in_code: bool) -> Target:
        """What ``relocation`` designates, independent of how the assembler spelled it.

        ``in_code``: the relocation patches an instruction, so a PC-relative addend also
        holds the distance from the field to the end of the instruction (usually 4).
        """
        symbol = relocation.symbol
        section = symbol.section
        if section is None:
            return SymbolTarget(symbol, relocation.addend)
        pc_relative = in_code and relocation.type in PC_RELATIVE_TYPES
        if symbol.type != STT_SECTION:
            if not is_content_symbol(symbol):
                return SymbolTarget(symbol, relocation.addend)
            # Labels of merged constants (.LC12) and __func__ strings: the bytes are the identity.
            if not section.flags & SHF_MERGE:
                text = self.symbol_bytes(symbol)
                return StringTarget(section, symbol.value, text, relocation.addend)
            addend = relocation.addend + symbol.value
        else:
            addend = relocation.addend
        if section.is_strings or symbol.type != STT_SECTION:
            return self._string_target(section, addend, pc_relative)
        adjustments = (4, 5, 6, 8) if pc_relative else (0,)
        for adjust in adjustments:
            named = self.containing(section, addend + adjust)
            if named is not None:
                if is_content_symbol(named):
                    text = self.symbol_bytes(named)
                    return StringTarget(section, named.value, text, addend - named.value)
                return SymbolTarget(named, addend - named.value)
        if not section.is_text:
            # One past the end of an array (a loop's bound, ARRAY_SIZE's end): still that array.
            for adjust in adjustments:
                before = self.containing(section, addend + adjust - 1)
                if (before is not None and before.size and not is_content_symbol(before)
                        and before.value + before.size == addend + adjust):
                    return SymbolTarget(before, addend - before.value)
        return AnonymousTarget(section, addend)

    def _string_target(self, section: Section, addend: int, pc_relative: bool) -> Target:
        data = section.data
        adjustments = (4, 5, 6, 8) if pc_relative else (0,)
        if not section.is_strings:
            # Merged constants (.rodata.cst16): their bytes, one entry long, are the identity.
            width = max(section.entsize, 1)
            for adjust in adjustments:
                offset = addend + adjust
                if 0 <= offset < len(data) and offset % width == 0:
                    text = data[offset : offset + width]
                    return StringTarget(section, offset, text, addend - offset)
            return AnonymousTarget(section, addend)
        for adjust in adjustments:
            offset = addend + adjust
            if 0 <= offset < len(data) and (offset == 0 or data[offset - 1] == 0):
                end = data.find(b"\0", offset)
                text = data[offset : end if end >= 0 else len(data)]
                return StringTarget(section, offset, text, addend - offset)
        return AnonymousTarget(section, addend)
