"""Fast checks without a kernel tree: build ids from small images, refusals of bad input."""

from __future__ import annotations

import gzip
import lzma
import re
import struct
import subprocess
from pathlib import Path

import pytest

from kpatchbuild.differ import FunctionChange
from kpatchbuild.elf.model import ElfObject
from kpatchbuild.stages.module.buildid import BuildIdError, kernel_build_id
from kpatchbuild.stages.module.module import ModuleLinkError, ObjectDiff, link_module


@pytest.fixture(scope="module")
def program_with_build_id(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """An executable and the build id readelf sees in it."""
    directory = tmp_path_factory.mktemp("buildid")
    source = directory / "main.c"
    source.write_text("int main(void) { return 0; }\n")
    program = directory / "main"
    subprocess.run(["gcc", "-Wl,--build-id=sha1", "-o", str(program), str(source)], check=True)
    notes = subprocess.run(["readelf", "-n", str(program)], capture_output=True, text=True,
                           check=True).stdout
    return program.read_bytes(), re.search(r"Build ID: ([0-9a-f]+)", notes).group(1)


def _bzimage(payload: bytes, setup_sectors: int = 1) -> bytes:
    setup = bytearray((setup_sectors + 1) * 512)
    setup[0x1F1] = setup_sectors
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    struct.pack_into("<II", setup, 0x248, 0, len(payload))
    return bytes(setup) + payload + struct.pack("<I", 0)  # the kernel's trailing size word


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress], ids=["gzip", "xz"])
def test_build_id_from_compressed_image(program_with_build_id: tuple[bytes, str], compress,
                                        tmp_path: Path) -> None:
    program, build_id = program_with_build_id
    image = tmp_path / "vmlinuz"
    image.write_bytes(_bzimage(compress(program)))
    assert kernel_build_id(image) == build_id


def test_build_id_refusals(tmp_path: Path, program_with_build_id: tuple[bytes, str]) -> None:
    not_an_image = tmp_path / "vmlinuz"
    not_an_image.write_bytes(b"\0" * 4096)
    with pytest.raises(BuildIdError, match="not an x86 bzImage"):
        kernel_build_id(not_an_image)
    unknown = tmp_path / "unknown"
    unknown.write_bytes(_bzimage(b"\x99" * 64))
    with pytest.raises(BuildIdError, match="unknown compression"):
        kernel_build_id(unknown)
    with pytest.raises(BuildIdError, match="no such file|cannot read"):
        kernel_build_id(tmp_path / "missing")


def _diff(changed: tuple[FunctionChange, ...]) -> ObjectDiff:
    return ObjectDiff("a.o", "vmlinux", ElfObject(), changed)


def test_refuses_nothing_to_patch(tmp_path: Path) -> None:
    with pytest.raises(ModuleLinkError, match="no changed function"):
        link_module(tmp_path, "livepatch_x", [_diff(())], tmp_path / "work",
                    release="6.1.0-56-cloud-amd64", log=tmp_path / "log")


def test_refuses_bad_module_name(tmp_path: Path) -> None:
    change = FunctionChange("f", "f", 0, ".text.f", False, "0", "0")
    with pytest.raises(ModuleLinkError, match="module name"):
        link_module(tmp_path, "live-patch x", [_diff((change,))], tmp_path / "work",
                    release="6.1.0-56-cloud-amd64", log=tmp_path / "log")


def test_refuses_changed_function_missing_from_object(tmp_path: Path) -> None:
    change = FunctionChange("f", "f", 0, ".text.f", False, "0", "0")
    with pytest.raises(ModuleLinkError, match="does not define the changed function f"):
        link_module(tmp_path, "livepatch_x", [_diff((change,))], tmp_path / "work",
                    release="6.1.0-56-cloud-amd64", log=tmp_path / "log")
