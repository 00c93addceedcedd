"""SHF_LINK_ORDER sections whose partner the patch does not carry.

gcc 11 and 12 put the __patchable_function_entries of every function of a file into one
section ordered with the file's first function section only (here .init.text). A patch that
keeps only a later function's entry must still order that section with a function it
carries: ld refuses to link ordered and unordered input sections of one name together,
which is what a livepatch module link does with its own objects' entries.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kpatchbuild.elf import read_elf_bytes, write_elf
from kpatchbuild.elf.model import SHF_LINK_ORDER
from tests.differ import cfixtures

SOURCE = """
__attribute__((section(".init.text"))) int setup(void) { return 1; }
int show(int x) { return x + %d; }
"""
ENTRIES = ("-fpatchable-function-entry=16,16",)


@pytest.mark.parametrize("compiler", cfixtures.REQUIRED_COMPILERS)
def test_entries_follow_the_function_they_point_to(compiler: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cfixtures, "compiler", compiler)
    pair = cfixtures.build_pair(tmp_path, SOURCE % 1, SOURCE % 2, extra=ENTRIES)
    result = cfixtures.diff_pair(pair)
    assert [f.name for f in result.changed_functions] == ["show"]
    out = result.output
    (entries,) = [s for s in out.sections if s.name == "__patchable_function_entries"]
    assert entries.flags & SHF_LINK_ORDER
    assert entries.link is not None and entries.link.name == ".text.show"

    # Linked with another object whose entries are ordered, as kbuild links the module.
    patch_object = tmp_path / "patch.o"
    patch_object.write_bytes(write_elf(out))
    other = tmp_path / "other.c"
    other.write_text("int other(void) { return 3; }\n")
    subprocess.run([compiler, *cfixtures.CFLAGS, *ENTRIES, "-o", str(tmp_path / "other.o"),
                    str(other)], check=True)
    linked = subprocess.run(["ld", "-r", "-o", str(tmp_path / "module.o"), str(patch_object),
                             str(tmp_path / "other.o")], capture_output=True, text=True)
    assert linked.returncode == 0, linked.stderr
    assert read_elf_bytes((tmp_path / "module.o").read_bytes()) is not None
