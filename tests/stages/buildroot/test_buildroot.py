"""Build roots: the target's exact compiler in a debootstrapped root of its Debian release,
entered through a private mount namespace whose mounts never outlive the command; and the
default recipe built and proven in Debian 13's kernel, with Debian 13's gcc 14, from this
Debian 12 host (marked ``kernel``: they debootstrap and fetch from Debian's archive)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kpatchbuild.base import kbuild
from kpatchbuild.base.store import Store
from kpatchbuild.stages.buildroot import buildroot
from kpatchbuild.stages.fetch.suites import RELEASES
from tests.conftest import build_recipe_stage

DEBIAN_13_CLOUD = "debian13-6.12-cloud-amd64"
TRIXIE_GCC = kbuild.parse_compiler_text("x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0")


def test_a_command_enters_with_its_directories_at_the_same_paths(tmp_path: Path) -> None:
    command = buildroot.entering_command(Path("/r"), ["make", "-C", "/w/tree"],
                                         cwd=Path("/w"), binds=[tmp_path / "a" / "b", tmp_path])
    assert command[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    tail = command[command.index("kpb-buildroot") + 1:]
    assert tail == ["/r", "/w", "0", str(tmp_path.resolve()), "--", "make", "-C", "/w/tree"]


def test_only_the_outermost_directories_are_bound(tmp_path: Path) -> None:
    base = tmp_path.resolve()
    assert buildroot.outermost([base / "x" / "y", base / "z", base / "x"]) == [
        base / "x", base / "z"]


def _mounted_under(root: Path) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(root))]


@pytest.mark.kernel
def test_debian_13s_build_root_holds_its_gcc_and_leaves_no_mount(tmp_path: Path) -> None:
    store = Store()
    root = buildroot.build_root(store, RELEASES["13"], TRIXIE_GCC, where="test")
    assert root.compiler.matches(TRIXIE_GCC)
    assert json.loads((root.root.parent / "manifest.json").read_text())["versions"]["gcc"]
    # The host's directory, at the same path inside; what is written there stays.
    seen = root.seeing([tmp_path])
    (tmp_path / "in.c").write_text("int f(void) { return 1; }\n")
    seen.run(["gcc", "-c", "-o", str(tmp_path / "in.o"), str(tmp_path / "in.c")])
    assert "GCC: (Debian 14.2.0-19) 14.2.0" in subprocess.run(
        ["readelf", "-p", ".comment", str(tmp_path / "in.o")], capture_output=True,
        text=True).stdout
    # Killed with SIGKILL mid-command: its namespace, and every mount in it, is gone.
    assert _mounted_under(root.root) == []
    running = subprocess.Popen(buildroot.entering_command(root.root, ["sleep", "60"],
                                                          cwd=None, binds=[tmp_path]))
    time.sleep(1)
    assert _mounted_under(root.root) == []  # private to its namespace, even while it runs
    os.kill(running.pid, signal.SIGKILL)
    running.wait()
    assert _mounted_under(root.root) == []
    assert not any((root.root / "proc").iterdir())
    assert not (root.root / str(tmp_path).lstrip("/") / "in.c").exists()


@pytest.mark.kernel
def test_the_default_recipe_is_built_and_proven_on_debian_13() -> None:
    """Debian 13's own 6.12 kernel, compiled by its gcc 14 in the build root."""
    stage = build_recipe_stage("cmdline", DEBIAN_13_CLOUD)
    release = stage.fetch["kernel"]["release"]
    assert "+deb13" in release and stage.original["release"] == release
    module = stage.work / "livepatch_cmdline.ko"
    comment = subprocess.run(["readelf", "-p", ".comment", str(module)], capture_output=True,
                             text=True).stdout
    assert "GCC: (Debian 14.2.0-19) 14.2.0" in comment and "12.2.0" not in comment
    proof = json.loads((stage.work / "prove.json").read_text())
    assert {"insmod", "check-patched", "rmmod", "check-after"} <= set(proof["steps"])


@pytest.mark.kernel
def test_a_command_changes_nothing_in_the_published_root(tmp_path: Path) -> None:
    """Writes inside the root, and the mount points of its binds, go to the command's own
    overlay: the root stays as it was made, for every other command sharing it."""
    root = buildroot.build_root(Store(), RELEASES["13"], TRIXIE_GCC, where="test")
    bound = Store().tmp / f"buildroot-test-{os.getpid()}"
    bound.mkdir()
    try:
        before = sorted(p.name for p in root.root.iterdir())
        root.seeing([bound]).run(["sh", "-c", f"touch /etc/kpb-scratch && echo made > "
                                              f"{bound}/out"])
        assert (bound / "out").read_text() == "made\n"
        assert not (root.root / "etc/kpb-scratch").exists()
        assert not (root.root / str(bound).lstrip("/")).exists()
        assert sorted(p.name for p in root.root.iterdir()) == before
        assert list((root.root / "tmp").iterdir()) == []
    finally:
        bound.joinpath("out").unlink(missing_ok=True)
        bound.rmdir()
