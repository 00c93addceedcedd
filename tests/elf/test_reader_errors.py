"""Bad input is reported as one ElfFormatError naming the file, whatever is wrong with it."""

from __future__ import annotations

import struct
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpatchbuild.elf import ElfFormatError, read_elf, read_elf_bytes, write_elf


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ElfFormatError, match="no such file"):
        read_elf(tmp_path / "absent.o")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ElfFormatError, match="directory"):
        read_elf(tmp_path)


def test_not_elf(tmp_path: Path) -> None:
    path = tmp_path / "text.o"
    path.write_text("hello\n")
    with pytest.raises(ElfFormatError, match="not an ELF file"):
        read_elf(path)


def test_32_bit(basic_object: Path) -> None:
    raw = bytearray(basic_object.read_bytes())
    raw[4] = 1  # ELFCLASS32
    with pytest.raises(ElfFormatError, match="64-bit"):
        read_elf_bytes(bytes(raw))


def test_other_machine(basic_object: Path) -> None:
    raw = bytearray(basic_object.read_bytes())
    struct.pack_into("<H", raw, 18, 183)  # EM_AARCH64
    with pytest.raises(ElfFormatError, match="not an x86_64 object"):
        read_elf_bytes(bytes(raw))


def test_not_relocatable(tmp_path: Path) -> None:
    source = tmp_path / "main.c"
    source.write_text("int main(void) { return 0; }\n")
    exe = tmp_path / "main"
    subprocess.run(["gcc", "-o", str(exe), str(source)], check=True)
    with pytest.raises(ElfFormatError, match="not a relocatable object"):
        read_elf(exe)


def test_truncated(basic_object: Path) -> None:
    raw = basic_object.read_bytes()
    with pytest.raises(ElfFormatError, match="truncated"):
        read_elf_bytes(raw[: len(raw) - 100])
    with pytest.raises(ElfFormatError, match="truncated ELF header"):
        read_elf_bytes(raw[:40])


def _read_or_clean_error(raw: bytes) -> None:
    try:
        obj = read_elf_bytes(raw, name="fuzzed.o")
    except ElfFormatError as error:
        message = error.message
        assert message.startswith("fuzzed.o: ") and "\n" not in message
        return
    # Whatever was accepted must also be writable (the differ will rely on that).
    try:
        write_elf(obj)
    except ValueError:
        pass


FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.data())
def test_fuzz_truncation(basic_object: Path, data: st.DataObject) -> None:
    raw = basic_object.read_bytes()
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    _read_or_clean_error(raw[:cut])


@FUZZ
@given(data=st.data())
def test_fuzz_corruption(basic_object: Path, data: st.DataObject) -> None:
    raw = bytearray(basic_object.read_bytes())
    # Aim most of the damage at the headers and tables, where a parser can go wrong.
    header_end = 64
    shoff = struct.unpack_from("<Q", raw, 0x28)[0]
    regions = st.one_of(
        st.integers(0, header_end - 1),
        st.integers(shoff, len(raw) - 1),
        st.integers(0, len(raw) - 1),
    )
    edits = data.draw(st.lists(st.tuples(regions, st.integers(0, 255)), min_size=1, max_size=12))
    for position, value in edits:
        raw[position] = value
    _read_or_clean_error(bytes(raw))


@FUZZ
@given(data=st.data())
def test_fuzz_header_fields(basic_object: Path, data: st.DataObject) -> None:
    """Overwrite whole 8-byte fields with extreme values (sizes, offsets, counts)."""
    raw = bytearray(basic_object.read_bytes())
    shoff = struct.unpack_from("<Q", raw, 0x28)[0]
    count = struct.unpack_from("<H", raw, 0x3C)[0]
    index = data.draw(st.integers(0, count - 1))
    field = data.draw(st.sampled_from([0, 4, 8, 16, 24, 32, 40, 44, 48, 56]))
    width = 4 if field in (0, 4, 40, 44) else 8
    value = data.draw(st.sampled_from([0, 1, 0xFF00, 0xFFFF, 2**31, 2**width * 8 // 8 - 1]))
    raw[shoff + index * 64 + field : shoff + index * 64 + field + width] = value.to_bytes(
        width, "little"
    )
    _read_or_clean_error(bytes(raw))
