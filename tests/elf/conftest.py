"""Small objects compiled with the host's gcc: the ELF layer needs no kernel to be tested."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "c"


def compile_fixture(source: Path, output: Path, *extra: str) -> Path:
    subprocess.run(
        ["gcc", "-O2", "-g", "-ffunction-sections", "-fdata-sections", "-c", *extra,
         "-o", str(output), str(source)],
        check=True,
    )
    return output


@pytest.fixture(scope="session")
def basic_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required to build the ELF fixtures")
    out = tmp_path_factory.mktemp("elf") / "basic.o"
    return compile_fixture(FIXTURES / "basic.c", out)
