"""Livepatch relocation tables: a second table per section, flagged, beside the ordinary one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kpatchbuild.elf import read_elf_bytes, write_elf
from kpatchbuild.elf.model import (
    R_X86_64_PC32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_INFO_LINK,
    SHF_RELA_LIVEPATCH,
    SHN_LIVEPATCH,
    STB_GLOBAL,
    ElfObject,
    Relocation,
    RelocationTable,
    Section,
    Symbol,
)


def _object() -> ElfObject:
    text = Section(".text.f", flags=SHF_ALLOC | SHF_EXECINSTR, data=b"\xe8" + b"\0" * 9 + b"\xc3")
    exported = Symbol("printk", bind=STB_GLOBAL)
    klp = Symbol(".klp.sym.vmlinux.saved_command_line,0", bind=STB_GLOBAL, shndx=SHN_LIVEPATCH)
    text.relocations = [Relocation(1, R_X86_64_PC32, exported, -4)]
    flags = SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH
    text.extra_relocation_tables = [
        RelocationTable(".klp.rela.vmlinux.text.f", [Relocation(6, R_X86_64_PC32, klp, -4)], flags)
    ]
    return ElfObject(sections=[text], symbols=[exported, klp])


def test_livepatch_table_round_trips(tmp_path: Path) -> None:
    written = write_elf(_object())
    again = read_elf_bytes(written)
    (text,) = again.sections
    assert [(r.offset, r.symbol.name) for r in text.relocations] == [(1, "printk")]
    (table,) = text.extra_relocation_tables
    assert table.name == ".klp.rela.vmlinux.text.f"
    assert table.flags == SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH
    (relocation,) = table.relocations
    assert relocation.offset == 6
    assert relocation.symbol.shndx == SHN_LIVEPATCH
    assert write_elf(again) == written

    path = tmp_path / "klp.o"
    path.write_bytes(written)
    sections = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True,
                              check=True)
    line = next(li for li in sections.stdout.splitlines() if ".klp.rela.vmlinux.text.f" in li)
    # readelf shows SHF_ALLOC, SHF_INFO_LINK and an OS-specific flag as "AIo".
    assert " AIo " in line
    assert sections.stderr == ""
