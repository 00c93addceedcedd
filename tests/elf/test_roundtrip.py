"""Read, write, read again: the model must survive serialisation unchanged."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kpatchbuild.elf import read_elf, read_elf_bytes, write_elf
from kpatchbuild.elf.model import (
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_PROGBITS,
    STB_GLOBAL,
    STT_FUNC,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)
from tests.elf.snapshot import snapshot


def _readelf_warnings(path: Path) -> str:
    result = subprocess.run(["readelf", "-a", "-W", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_round_trip_of_gcc_object(basic_object: Path, tmp_path: Path) -> None:
    original = read_elf(basic_object)
    assert any(s.name == ".text.compute" for s in original.sections)
    assert any(s.relocations for s in original.sections)
    written = write_elf(original)
    again = read_elf_bytes(written)
    assert snapshot(again) == snapshot(original)
    # A second write is byte-for-byte stable: the layout depends only on the model.
    assert write_elf(again) == written

    out = tmp_path / "rewritten.o"
    out.write_bytes(written)
    assert _readelf_warnings(out) == ""
    linked = tmp_path / "linked.o"
    subprocess.run(["ld", "-r", "-o", str(linked), str(out)], check=True)
    # objdump shows the same code and relocations as for the compiler's own object.
    def disassembly(path: Path) -> list[str]:
        text = subprocess.run(["objdump", "-dr", str(path)], capture_output=True, text=True,
                              check=True).stdout
        return text.splitlines()[2:]

    assert disassembly(out) == disassembly(basic_object)


def test_object_built_from_scratch_links(tmp_path: Path) -> None:
    """The differ assembles objects from pieces; a hand-made one must be valid too."""
    text = Section(".text.answer", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR,
                   data=b"\xe8\x00\x00\x00\x00\xb8\x2a\x00\x00\x00\xc3", addralign=16)
    callee = Symbol("external_callee", bind=STB_GLOBAL)
    answer = Symbol("answer", 0, 11, STB_GLOBAL, STT_FUNC, section=text)
    text.relocations = [Relocation(1, 4, callee, -4)]
    obj = ElfObject(sections=[text], symbols=[callee, answer])
    out = tmp_path / "scratch.o"
    out.write_bytes(write_elf(obj))
    assert _readelf_warnings(out) == ""
    # locals must precede globals whatever the model's order; the reader sees them so.
    again = read_elf(out)
    assert [s.name for s in again.symbols] == ["external_callee", "answer"]
    assert again.sections[0].relocations[0].symbol.name == "external_callee"
    subprocess.run(["ld", "-r", "-o", str(tmp_path / "l.o"), str(out)], check=True)
    nm = subprocess.run(["nm", str(out)], capture_output=True, text=True, check=True).stdout
    assert "T answer" in nm and "U external_callee" in nm


def test_extended_section_numbering(tmp_path: Path) -> None:
    """More than 65279 sections need SHN_XINDEX; big kernel objects get close."""
    sections = [Section(f".text.f{i}", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, data=b"\xc3")
                for i in range(0xFF10)]
    symbols = [Symbol(f"f{i}", 0, 1, STB_GLOBAL, STT_FUNC, section=s)
               for i, s in enumerate(sections)]
    obj = ElfObject(sections=sections, symbols=symbols)
    written = write_elf(obj)
    again = read_elf_bytes(written)
    assert snapshot(again) == snapshot(obj)
    out = tmp_path / "many.o"
    out.write_bytes(written)
    assert _readelf_warnings(out) == ""


@pytest.mark.skipif(shutil.which("ld") is None, reason="binutils missing")
def test_round_trip_keeps_group_sections(tmp_path: Path) -> None:
    source = tmp_path / "group.cc"
    source.write_text("template <typename T> T twice(T x) { return x + x; }\n"
                      "int use(int y) { return twice(y); }\n")
    obj_path = tmp_path / "group.o"
    subprocess.run(["g++", "-O0", "-c", "-o", str(obj_path), str(source)], check=True)
    original = read_elf(obj_path)
    groups = [s for s in original.sections if s.group_members]
    assert groups and groups[0].group_signature is not None
    again = read_elf_bytes(write_elf(original))
    assert snapshot(again) == snapshot(original)
