"""Pass emit: the patch object, from what the selection passes chose.

Kept ranges become sections (a section cut into pieces keeps its pieces in order), symbols
inside them are copied at their new offsets, and every relocation is retargeted: to a copy
when its target is carried, else to an undefined symbol named as the resolver found it in
the running kernel.
"""

from __future__ import annotations

from kpatchbuild.differ.include.selection import Selection, Slice
from kpatchbuild.differ.index import SymbolTarget, relocation_place
from kpatchbuild.differ.special import ENTRY_TABLES
from kpatchbuild.elf.model import (
    SHF_GROUP,
    SHT_NOBITS,
    SHT_PROGBITS,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FILE,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)

PASS = "emit"
# Sections the module loader patches in or reads before livepatch relocations are bound.
LOADER_ONLY = frozenset(
    {".altinstr_replacement"} | {k.name for k in ENTRY_TABLES.values() if k.loader_resolved_only}
)


def emit(selection: Selection) -> ElfObject:
    """The patch object; a relocation that cannot be carried adds a refusal instead."""
    return _Emitter(selection).emit()


class _Emitter:
    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.patched = selection.patched
        self.out = ElfObject(name="patch")
        self.section_symbols: dict[int, Symbol] = {}  # id(patched section) -> its symbol
        self.symbol_map: dict[int, Symbol] = {}  # id(patched symbol) -> its copy
        self.undefined: dict[str, Symbol] = {}

    def emit(self) -> ElfObject:
        selection, out = self.selection, self.out
        file_symbol = next((s for s in self.patched.obj.symbols if s.type == STT_FILE), None)
        if file_symbol is not None:
            out.symbols.append(Symbol(file_symbol.name, type=STT_FILE, shndx=file_symbol.shndx))
        for piece in selection.slices.values():
            piece.finish()
        ordered = [s for s in self.patched.obj.sections if selection.carries(s)]
        for source in ordered:
            self._copy_section(selection.slices[id(source)])
        for source in ordered:
            self._copy_relocations(selection.slices[id(source)])
        modinfo = self._modinfo()
        if modinfo is not None:
            out.sections.append(modinfo)
        for section in out.sections:
            selection.trace.say(PASS, f"section {section.name}: {section.size} bytes, "
                                      f"{len(section.relocations or ())} relocations")
        out.sections.append(Section(".note.GNU-stack", SHT_PROGBITS, 0, b""))
        return out

    def _copy_section(self, piece: Slice) -> None:
        source = piece.source
        section = Section(
            name=source.name,
            type=source.type,
            flags=source.flags & ~SHF_GROUP,
            data=piece.data(),
            addralign=source.addralign,
            entsize=source.entsize,
            nobits_size=piece.size() if source.type == SHT_NOBITS else 0,
            info=source.info,
        )
        piece.out = section
        self.out.sections.append(section)
        section_symbol = Symbol(source.name, type=STT_SECTION, section=section)
        self.section_symbols[id(source)] = section_symbol
        self.out.symbols.append(section_symbol)
        for symbol in self.patched.symbols_in(source):
            mapped = piece.map(symbol.value, allow_end=symbol.size == 0)
            if mapped is None:
                continue
            copy = Symbol(symbol.name, mapped, symbol.size, self._binding(symbol),
                          symbol.type, symbol.other, section=section)
            self.symbol_map[id(symbol)] = copy
            self.out.symbols.append(copy)

    def _binding(self, symbol: Symbol) -> int:
        """A carried function the running kernel has is local in the patch object: the
        kernel's own stays the one its name means (to modpost, to other objects of the
        patch calling it by name). A global new in the patch stays global: another object
        of the same patch may call it."""
        if symbol.is_function and symbol.bind != STB_LOCAL and \
                self.selection.correlation.orig_of(symbol) is not None:
            return STB_LOCAL
        return symbol.bind

    def _copy_relocations(self, piece: Slice) -> None:
        source = piece.source
        relocations = []
        for start, end in piece.ranges:
            for relocation in self.patched.relocations_between(source, start, end):
                moved = self._retarget(relocation, piece)
                if moved is not None:
                    relocations.append(moved)
        assert piece.out is not None  # every slice was given its output section first
        if relocations:
            piece.out.relocations = relocations
        if source.link is not None:
            piece.out.link = self._link_order_partner(source, relocations)

    def _link_order_partner(self, source: Section, relocations: list[Relocation]
                            ) -> Section | None:
        """The output section a SHF_LINK_ORDER section is ordered with.

        Its own partner when that was included. Some gcc versions put the entries of several
        functions in one ``__patchable_function_entries`` linked to the first function only
        (often ``.init.text``, never included): then the function its kept entries point to.
        ld refuses to mix ordered and unordered input sections of one name, so a partner is
        needed whenever one exists.
        """
        assert source.link is not None
        linked = self.selection.slices.get(id(source.link))
        if linked is not None:
            return linked.out
        for relocation in relocations:
            target = relocation.symbol.section
            if target is not None and target.is_text:
                return target
        return None

    def _retarget(self, relocation: Relocation, piece: Slice) -> Relocation | None:
        source = piece.source
        offset = piece.map(relocation.offset)
        assert offset is not None  # walked ranges hold their relocations
        symbol = relocation.symbol
        where = f"{source.name}+{relocation.offset:#x}"
        refusals = self.selection.refusals
        if symbol.type == STT_SECTION and symbol.section is not None:
            target_piece = self.selection.slices.get(id(symbol.section))
            if target_piece is not None:
                place = relocation_place(relocation, source)
                mapped = target_piece.map(place, allow_end=True)
                if mapped is None:
                    refusals.append(f"{where}: refers to {symbol.section.name}+{place:#x}, "
                                    "which the patch does not carry")
                    return None
                return Relocation(offset, relocation.type,
                                  self.section_symbols[id(symbol.section)],
                                  relocation.addend + mapped - place)
            target = self.patched.target_of(relocation, source.is_text)
            if not isinstance(target, SymbolTarget):
                refusals.append(f"{where}: refers to unnamed {symbol.section.name} data")
                return None
            return self._external(target.symbol, target.delta, offset, relocation, where,
                                  source)
        copy = self.symbol_map.get(id(symbol))
        if copy is not None:
            return Relocation(offset, relocation.type, copy, relocation.addend)
        if symbol.section is not None and self.selection.carries(symbol.section):
            refusals.append(f"{where}: refers to {symbol.name}, outside the carried part")
            return None
        return self._external(symbol, relocation.addend, offset, relocation, where, source)

    def _external(self, symbol: Symbol, addend: int, offset: int, relocation: Relocation,
                  where: str, source: Section) -> Relocation | None:
        selection = self.selection
        resolution = selection.resolution_for(symbol)
        if resolution is None:
            if symbol.section is not None and selection.correlation.orig_of(symbol) is None:
                selection.refusals.append(
                    f"{where}: refers to new symbol {symbol.name} not carried")
            return None
        if source.name in LOADER_ONLY and not selection.resolver.known_at_load(resolution):
            # Alternatives are copied into place at module load, before livepatch relocations
            # are applied: the copy would keep an unresolved address.
            selection.refusals.append(
                f"{where}: uses {resolution.target_name}, which is not exported, in code the "
                "module loader patches in before livepatch relocations are applied"
            )
            return None
        return Relocation(offset, relocation.type, self._undefined(resolution.name), addend)

    def _undefined(self, name: str) -> Symbol:
        symbol = self.undefined.get(name)
        if symbol is None:
            symbol = self.undefined[name] = Symbol(name, bind=STB_GLOBAL)
            self.out.symbols.append(symbol)
        return symbol

    def _modinfo(self) -> Section | None:
        """Namespace imports the patched code needs (`import_ns=`); other modinfo stays home."""
        source = self.patched.obj.section_by_name(".modinfo")
        if source is None:
            return None
        imports = [entry for entry in source.data.split(b"\0") if entry.startswith(b"import_ns=")]
        if not imports:
            return None
        data = b"\0".join(dict.fromkeys(imports)) + b"\0"
        return Section(".modinfo", source.type, source.flags, data, addralign=1)
