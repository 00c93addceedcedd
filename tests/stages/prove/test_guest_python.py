"""The host's Python laid out for a guest initramfs, and the generic guest-script run."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from kpatchbuild.base.errors import KpbError
from kpatchbuild.stages.prove import guestpython, initramfs, vm
from kpatchbuild.stages.prove.guestpython import GuestPython

PROJECT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def kpatch_python() -> GuestPython:
    return guestpython.guest_python(["kpatchbuild.kpatch.__main__"])


def test_with_parents_adds_missing_directories_once() -> None:
    entries = initramfs.with_parents([
        initramfs.directory("usr"),
        initramfs.regular_file("usr/lib/a/x.py", b"x"),
        initramfs.regular_file("usr/lib/a/y.py", b"y"),
        initramfs.regular_file("usr/lib/a/x.py", b"second copy"),
    ])
    assert [e.path for e in entries] == ["usr", "usr/lib", "usr/lib/a", "usr/lib/a/x.py",
                                         "usr/lib/a/y.py"]
    assert entries[3].data == b"x"
    assert stat.S_ISDIR(entries[1].mode)


def test_the_interpreter_comes_with_its_libraries(kpatch_python: GuestPython) -> None:
    paths = {e.path for e in kpatch_python.entries}
    interpreter = Path(sys.executable).resolve()
    assert kpatch_python.interpreter == str(interpreter)
    assert str(interpreter).lstrip("/") in paths
    assert any(p.endswith("ld-linux-x86-64.so.2") for p in paths)
    assert any("/libc.so" in p for p in paths)
    # ctypes (the module syscalls) needs its extension and libffi.
    assert any("_ctypes" in p and p.endswith(".so") for p in paths)
    assert any("libffi.so" in p for p in paths)


def test_the_command_and_its_imports_come_compiled(kpatch_python: GuestPython) -> None:
    entries = {e.path: e for e in kpatch_python.entries}
    cli = str(PROJECT / "kpatchbuild/kpatch/cli.py").lstrip("/")
    assert cli in entries
    pyc = next(p for p in entries if "kpatch/__pycache__/cli.cpython-" in p)
    # A hash-based pyc whose source is not checked: flags word 0b01.
    assert int.from_bytes(entries[pyc].data[4:8], "little") == 0b01
    assert any(p.endswith("elftools/elf/elffile.py") for p in entries)
    assert any(p.endswith("/os.py") for p in entries)  # the stdlib's landmark
    assert str(PROJECT) in kpatch_python.pythonpath


def test_the_command_imports_nothing_of_the_build_side(kpatch_python: GuestPython) -> None:
    tops = {name.split(".")[0] for name in kpatch_python.modules}
    assert not tops & {"doit", "diskcache", "yaml", "xxhash"}
    build_side = {"kpatchbuild.graph.tasks", "kpatchbuild.base.store", "kpatchbuild.graph.recipe",
                  "kpatchbuild.stages.module.module", "kpatchbuild.stages.prove.vm",
                  "kpatchbuild.elf"}
    assert not build_side & set(kpatch_python.modules)


def test_command_runs_the_interpreter_without_site(kpatch_python: GuestPython) -> None:
    command = kpatch_python.command("-m", "kpatchbuild.kpatch", "list")
    assert command.startswith("env PYTHONPATH=")
    assert f"{kpatch_python.interpreter} -S -m kpatchbuild.kpatch list" in command


def test_an_import_that_fails_is_named() -> None:
    with pytest.raises(KpbError, match=r"importing no_such_module_here failed: "
                                        r"ModuleNotFoundError"):
        guestpython.guest_python(["no_such_module_here"])


def test_a_guest_script_needs_a_kernel(tmp_path: Path) -> None:
    with pytest.raises(KpbError, match=r"kernel image not found: .*missing-vmlinuz"):
        vm.run_guest_script(tmp_path / "missing-vmlinuz", "true", workdir=tmp_path)
