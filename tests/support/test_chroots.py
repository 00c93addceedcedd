"""Commands in a Debian chroot see the host directories they need, and leave no mount behind.

The chroot is the corpus's trixie one (made once, kept in the store). A mount left in it
would outlive the test, and deleting the cache would then reach through it into the host.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kpatchbuild.base.store import Store
from tests.support.chroots import SUITE_TREES, Chroot, ChrootError, make_chroot

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def chroot() -> Chroot:
    spec = SUITE_TREES["6.12-gcc14"]
    return make_chroot(Store(), spec.suite, spec.packages)


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A host directory outside /tmp (the chroot mounts a tmpfs of its own on /tmp), so its
    mount point has to be created in the chroot itself."""
    path = Store().tmp / f"chroot-test-{os.getpid()}" / "deeper"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path.parent)


def _mounts_under(root: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(str(root))]


def test_bound_directory_is_shared_and_its_mount_point_removed(chroot: Chroot,
                                                               outside_tmp: Path) -> None:
    top_before = sorted(chroot.root.iterdir())
    chroot.run(["sh", "-c", "gcc-14 -dumpversion > version"], binds=[outside_tmp],
               cwd=outside_tmp)
    assert (outside_tmp / "version").read_text().strip().split(".")[0] == "14"
    assert not (chroot.root / outside_tmp.relative_to("/")).exists()
    assert sorted(chroot.root.iterdir()) == top_before
    assert _mounts_under(chroot.root) == []


def test_directory_under_tmp_is_bound_in_the_chroot_tmpfs(chroot: Chroot, tmp_path: Path) -> None:
    chroot.run(["touch", str(tmp_path / "made-inside")], binds=[tmp_path])
    assert (tmp_path / "made-inside").is_file()
    assert list((chroot.root / "tmp").iterdir()) == []


def test_failure_is_one_line_naming_the_command(chroot: Chroot, outside_tmp: Path) -> None:
    with pytest.raises(ChrootError) as caught:
        chroot.run(["sh", "-c", "echo no such thing >&2; exit 7"], binds=[outside_tmp])
    message = caught.value.message
    assert "\n" not in message and "exit 7" in message and "no such thing" in message
    assert "trixie chroot" in message
    assert not (chroot.root / outside_tmp.relative_to("/")).exists()
    assert _mounts_under(chroot.root) == []
