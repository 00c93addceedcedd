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
from collections.abc import Callable
from pathlib import Path

import pytest

from kpatchbuild.base import kbuild, roots
from kpatchbuild.base.commands import HOST
from kpatchbuild.base.errors import ToolchainError
from kpatchbuild.base.store import Store
from kpatchbuild.stages.buildroot import buildroot
from kpatchbuild.stages.fetch.suites import RELEASES
from tests.conftest import build_recipe_stage

DEBIAN_13_CLOUD = "debian13-6.12-cloud-amd64"
TRIXIE_GCC = kbuild.parse_compiler_text("x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0")


def test_a_command_enters_with_its_directories_at_the_same_paths(tmp_path: Path) -> None:
    command = roots.entering_command(Path("/r"), ["make", "-C", "/w/tree"],
                                         cwd=Path("/w"), binds=[tmp_path / "a" / "b", tmp_path])
    assert command[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    tail = command[command.index("kpb-root") + 1:]
    assert tail == ["/r", "/w", "0", str(tmp_path.resolve()), "--", "make", "-C", "/w/tree"]


def test_only_the_outermost_directories_are_bound(tmp_path: Path) -> None:
    base = tmp_path.resolve()
    assert roots.outermost([base / "x" / "y", base / "z", base / "x"]) == [
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
    running = subprocess.Popen(roots.entering_command(root.root, ["sleep", "60"],
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


# --- which compiler, and where (no debootstrap: the release's index is a table) ---

class ServedCompilers:
    """A release's index as the build-root checks read it: madison lines and the policy of
    gcc-N."""

    def __init__(self, versions: list[str]) -> None:
        self.versions = versions  # newest first, as madison lists them
        self.root = Path("/nonexistent/index")

    def ensure(self) -> None:
        pass

    def apt_cache(self, command: str, *args: str) -> str:
        if command == "policy":
            candidate = self.versions[0] if self.versions else "(none)"
            return f"{args[0]}:\n  Installed: (none)\n  Candidate: {candidate}\n"
        assert command == "madison"
        return "".join(f"{args[0]} | {v} | http://deb.debian.org/debian trixie/main amd64 "
                       "Packages\n" for v in self.versions)


@pytest.fixture
def trixie_serves(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], None]:
    def serve(versions: list[str]) -> None:
        monkeypatch.setattr(buildroot.SuiteIndex, "in_cache", classmethod(
            lambda cls, root, release: ServedCompilers(versions)))
    return serve


KERNEL_GCC_14 = 'CONFIG_CC_VERSION_TEXT="x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0"\n'


def test_a_compiler_the_release_no_longer_serves_is_refused_naming_both_and_the_override(
        tmp_path: Path, trixie_serves: Callable[[list[str]], None]) -> None:
    trixie_serves(["14.2.0-21", "14.2.0-20"])
    with pytest.raises(ToolchainError) as caught:
        buildroot.toolchain_for(Store(tmp_path), KERNEL_GCC_14, RELEASES["13"],
                                where="cmdline/debian13-6.12-cloud-amd64", binds=())
    assert caught.value.message == (
        "cmdline/debian13-6.12-cloud-amd64: its kernel needs gcc 'x86_64-linux-gnu-gcc-14 "
        "(Debian 14.2.0-19) 14.2.0', but Debian 13 (trixie) now serves gcc-14 14.2.0-21, "
        "14.2.0-20: objects from another build of gcc may not match the running kernel, so no "
        "build root is made; to build with gcc-14 14.2.0-21 anyway, set 'accept_compiler: "
        "14.2.0-21' on the target (every report then says so)")
    assert not (tmp_path / buildroot.KIND).exists()


def test_accept_compiler_asks_for_that_build_and_says_so(
        tmp_path: Path, trixie_serves: Callable[[list[str]], None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    trixie_serves(["14.2.0-21"])
    asked: list[kbuild.CompilerVersion] = []

    def made(store: Store, release: object, wanted: kbuild.CompilerVersion, *,
             where: str) -> buildroot.BuildRoot:
        buildroot._check_served(store, RELEASES["13"], wanted, where)
        asked.append(wanted)
        return buildroot.BuildRoot(RELEASES["13"], tmp_path / "root", wanted)

    monkeypatch.setattr(buildroot, "build_root", made)
    toolchain = buildroot.toolchain_for(Store(tmp_path), KERNEL_GCC_14, RELEASES["13"],
                                        where="t", binds=(), accept="14.2.0-21")
    assert [(w.package, w.version) for w in asked] == [("14.2.0-21", "14.2.0")]
    assert toolchain.override == ("built with gcc 14.2.0-21, not the kernel's own "
                                  "'x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0' (the "
                                  "recipe's accept_compiler)")
    same = buildroot.toolchain_for(Store(tmp_path), KERNEL_GCC_14.replace("-19", "-21"),
                                   RELEASES["13"], where="t", binds=(), accept="14.2.0-21")
    assert same.override is None  # naming the kernel's own compiler overrides nothing


def test_accept_compiler_of_another_gcc_major_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ToolchainError) as caught:
        buildroot.toolchain_for(Store(tmp_path), KERNEL_GCC_14, RELEASES["13"], where="t",
                                binds=(), accept="15.1.0-1")
    assert "accept_compiler 15.1.0-1 is gcc 15, but the kernel was built with" in \
        caught.value.message
    assert "name a build of gcc 14" in caught.value.message


def test_the_hosts_gcc_serves_when_it_is_the_kernels_under_another_name(
        tmp_path: Path) -> None:
    host = kbuild.host_compiler()
    config = f'CONFIG_CC_VERSION_TEXT="x86_64-linux-gnu-gcc-99 ({host.text.split("(")[1]}"\n'
    toolchain = buildroot.toolchain_for(Store(tmp_path), config, RELEASES["12"],
                                        where="t", binds=())
    assert toolchain.runner is HOST and toolchain.compiler.version == host.version
    assert toolchain.override is None


def test_a_kernel_built_here_uses_its_releases_current_gcc(
        tmp_path: Path, trixie_serves: Callable[[list[str]], None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    trixie_serves(["14.2.0-19"])
    monkeypatch.setattr(buildroot, "build_root", lambda store, release, wanted, where:
                        buildroot.BuildRoot(release, tmp_path / "root", wanted))
    wanted = buildroot.suite_compiler(Store(tmp_path), RELEASES["13"], where="t")
    assert (wanted.package, wanted.version) == ("14.2.0-19", "14.2.0")
    assert wanted.matches(TRIXIE_GCC)
    toolchain = buildroot.suite_toolchain(Store(tmp_path), RELEASES["13"], where="t",
                                          binds=(tmp_path,))
    host = kbuild.host_compiler()
    assert (toolchain.runner is HOST) == host.matches(wanted)
    trixie_serves([])
    with pytest.raises(ToolchainError, match="Debian 13 .trixie. serves no gcc-14"):
        buildroot.suite_compiler(Store(tmp_path), RELEASES["13"], where="t")
