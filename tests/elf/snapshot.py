"""A comparable picture of an ElfObject: what a round trip must preserve exactly."""

from __future__ import annotations

from kpatchbuild.elf.model import ElfObject, Symbol


def _symbol_key(symbol: Symbol) -> tuple:
    return (
        symbol.name,
        symbol.value,
        symbol.size,
        symbol.bind,
        symbol.type,
        symbol.other,
        symbol.section.name if symbol.section else None,
        symbol.shndx,
    )


def snapshot(obj: ElfObject) -> dict:
    """Everything but file offsets and table indices, which the writer may choose freely."""
    positions = {id(symbol): index for index, symbol in enumerate(obj.symbols)}
    sections = []
    for section in obj.sections:
        relocations = None
        if section.relocations is not None:
            relocations = [
                (rel.offset, rel.type, positions[id(rel.symbol)], rel.addend)
                for rel in section.relocations
            ]
        sections.append(
            (
                section.name,
                section.type,
                section.flags,
                section.data,
                section.size,
                section.addralign,
                section.entsize,
                section.link.name if section.link else None,
                section.info,
                relocations,
                section.rela_name,
                section.group_flags,
                [m.name for m in section.group_members],
                section.group_signature.name if section.group_signature else None,
            )
        )
    return {
        "header": (obj.machine, obj.type, obj.flags, obj.osabi, obj.abiversion),
        "sections": sections,
        "symbols": [_symbol_key(symbol) for symbol in obj.symbols],
    }
