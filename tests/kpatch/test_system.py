"""The real system interface: the root prefix, /proc parsing, and the syscalls' wiring."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kpatchbuild.kpatch.modfile import read_module
from kpatchbuild.kpatch.system import ROOT_ENV, SyscallLoader, System
from tests.kpatch.conftest import Machine
from tests.kpatch.fakekernel import BUILD_ID, RELEASE


def test_the_root_prefix_comes_from_the_environment(machine: Machine,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOT_ENV, str(machine.kernel.root))
    system = System.from_environment()
    assert system.root == machine.kernel.root
    assert system.release() == RELEASE
    assert system.build_id() == BUILD_ID
    assert system.livepatch_dir == machine.kernel.root / "sys/kernel/livepatch"


def test_a_root_without_the_kernel_release_is_named(tmp_path: Path) -> None:
    from kpatchbuild.kpatch.errors import KpatchError
    with pytest.raises(KpatchError, match=r"proc/sys/kernel/osrelease: cannot read the kernel "
                                          rf"release under {ROOT_ENV}="):
        System(root=tmp_path, loader=SyscallLoader()).release()


def test_proc_modules_taint_marks_livepatch_modules(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/modules").write_text(
        "livepatch_b 16384 1 - Live 0xffffffffc0300000 (OEK)\n"
        "virtio_ring 45056 1 virtio, Live 0xffffffffc0200000\n"
        "livepatch_a 16384 0 - Live 0xffffffffc0100000 (OEK)\n")
    modules = System(root=tmp_path, loader=SyscallLoader()).loaded_modules()
    assert [(m.name, m.refcount, m.is_livepatch) for m in modules] == [
        ("livepatch_b", 1, True), ("virtio_ring", 1, False), ("livepatch_a", 0, True)]


def test_unload_leaves_a_module_that_is_not_a_livepatch_alone(machine: Machine) -> None:
    machine.kpatch("load", str(machine.module("plain_driver", livepatch=False)))  # refused
    with read_module(machine.module("plain_driver", livepatch=False)) as plain:
        machine.kernel.insert(plain.descriptor, plain.path)  # loaded by hand
    result = machine.kpatch("unload", "plain_driver")
    assert result.code == 1
    assert "plain_driver: a loaded module but not a livepatch module; kpatch leaves it " \
           "alone" in result.err
    assert machine.kernel.modules == ["plain_driver"]


def test_the_syscalls_report_the_kernels_errno(tmp_path: Path) -> None:
    """Whatever this host allows, a bogus removal and load fail with an errno, not a crash."""
    loader = SyscallLoader()
    with pytest.raises(OSError) as removed:
        loader.remove("kpb_no_such_module_here")
    assert removed.value.errno in (errno.ENOENT, errno.EPERM, errno.ENOSYS)
    bogus = tmp_path / "bogus.ko"
    bogus.write_bytes(b"not an ELF module")
    descriptor = os.open(bogus, os.O_RDONLY)
    with pytest.raises(OSError) as inserted:
        loader.insert(descriptor, bogus)
    os.close(descriptor)
    assert inserted.value.errno in (errno.ENOEXEC, errno.EPERM, errno.ENOSYS, errno.EINVAL)
