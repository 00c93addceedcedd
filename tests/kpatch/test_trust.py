"""What kpatch, as root, refuses to trust: files named like patches in the working
directory, names and releases that would become paths outside /var/lib/kpatch, module
files others can write, a boot unit whose Python others can change, a second
atomic-replace patch for a kernel, and a root override combined with the real loader."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from kpatchbuild.kpatch import install, livepatch
from kpatchbuild.kpatch.cli import main
from kpatchbuild.kpatch.errors import KpatchError
from kpatchbuild.kpatch.modfile import read_module
from kpatchbuild.kpatch.system import ROOT_ENV, NoLoader, System
from kpatchbuild.kpatch.trust import untrusted_path
from tests.kpatch.conftest import Machine
from tests.kpatch.fakekernel import RELEASE

INSTALLED = f"var/lib/kpatch/{RELEASE}"


# --- which file gets loaded ---

@pytest.mark.parametrize("command", ["load", "replace", "info"])
def test_a_file_named_like_a_patch_in_the_working_directory_is_never_read(
        machine: Machine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        command: str) -> None:
    planted = tmp_path / "cwd"
    planted.mkdir()
    shutil.copy(machine.module("lp_evil"), planted / "lp_evil")
    monkeypatch.chdir(planted)
    result = machine.kpatch(command, "lp_evil")
    assert result.code == 1
    assert "lp_evil: no module of that name is installed for" in result.err or \
        "lp_evil: no such module file, loaded patch or module installed" in result.err
    assert machine.kernel.inserted == []


def test_a_bare_name_means_the_installed_module_even_beside_a_file_of_that_name(
        machine: Machine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert machine.kpatch("install", str(machine.module("lp_a"))).code == 0
    planted = tmp_path / "cwd"
    planted.mkdir()
    (planted / "lp_a").write_bytes(b"planted")
    monkeypatch.chdir(planted)
    result = machine.kpatch("load", "lp_a")
    assert result.code == 0, result.err
    assert [p.parent.name for p in machine.kernel.inserted] == [RELEASE]


def test_install_takes_a_path_not_a_bare_name(machine: Machine, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(machine.module("lp_a").parent)
    result = machine.kpatch("install", "lp_a")
    assert result.code == 1 and "give the module file's path (./lp_a.ko)" in result.err
    assert machine.kpatch("install", "./lp_a.ko").code == 0


def test_the_kernel_gets_the_descriptor_that_was_checked_not_the_path_again(
        machine: Machine) -> None:
    checked = machine.module("lp_checked")
    swapped = machine.module("lp_swapped", replace=False)
    system = machine.kernel.system()
    with read_module(checked) as module:
        os.replace(swapped, checked)  # the path now names another module
        livepatch.load(system, module)
    assert machine.kernel.modules == ["lp_checked"]


@pytest.mark.parametrize(("mode", "words"), [
    (0o664, "writable by group or others (mode 0664)"),
    (0o646, "writable by group or others (mode 0646)"),
])
def test_as_root_a_module_others_can_write_is_refused(machine: Machine, mode: int,
                                                      words: str) -> None:
    module = machine.module("lp_a")
    module.chmod(mode)
    for command in ("load", "replace", "install"):
        result = machine.kpatch(command, str(module))
        assert result.code == 1, command
        assert f"{module}: refused: it is {words}" in result.err
        assert result.err.count("\n") == 1
    assert machine.kernel.inserted == []
    assert not machine.kernel.path("var/lib/kpatch").exists()


def test_as_root_a_module_owned_by_another_user_is_refused(machine: Machine) -> None:
    module = machine.module("lp_a")
    owner = module.stat().st_uid
    system = System(root=machine.kernel.root, loader=machine.kernel, euid=lambda: 0,
                    sleep=machine.kernel.sleep, trusted_owners=frozenset({owner + 1}))
    with read_module(module) as opened, pytest.raises(KpatchError) as refused:
        livepatch.load(system, opened)
    assert f"refused: it is owned by uid {owner}, not root" in refused.value.message
    assert machine.kernel.inserted == []


def test_an_installed_module_changed_since_is_refused(machine: Machine) -> None:
    assert machine.kpatch("install", str(machine.module("lp_a"))).code == 0
    shutil.copy(machine.module("lp_other_bytes", replace=False),
                machine.kernel.path(f"{INSTALLED}/lp_a.ko"))
    for argv in (["load", "lp_a"], ["load", "--all"]):
        result = machine.kpatch(*argv)
        assert result.code == 1
        assert "lp_a.ko: its sha256 is not the one its manifest recorded at install" in result.err
    assert machine.kernel.inserted == []


def test_an_installed_module_without_its_manifest_is_refused(machine: Machine) -> None:
    assert machine.kpatch("install", str(machine.module("lp_a"))).code == 0
    machine.kernel.path(f"{INSTALLED}/lp_a.manifest").unlink()
    result = machine.kpatch("load", "--all")
    assert result.code == 1 and "lp_a.manifest: missing" in result.err
    assert machine.kernel.inserted == []


# --- names that become paths ---

@pytest.mark.parametrize("argv", [
    ["uninstall", "../../../../etc/passwd"],
    ["uninstall", "lp_a", "-k", "../../../etc"],
    ["install", "-k", "../../../../etc", "MODULE"],
    ["unload", "../lp_a"],
    ["signal", "lp_a/../../x"],
    ["force", "LP_A"],
    ["info", ".."],
    ["load", "a" * 56],
])
def test_names_and_releases_that_leave_their_directory_are_refused(
        machine: Machine, tmp_path: Path, argv: list[str]) -> None:
    victim = tmp_path / "etc"
    victim.mkdir()
    (victim / "passwd").write_text("root:x:0:0\n")
    argv = [str(machine.module("lp_a")) if item == "MODULE" else item for item in argv]
    result = machine.kpatch(*argv)
    assert result.code == 1, result.err
    assert "is not a module name kpatch accepts" in result.err or \
        "is not a kernel release" in result.err
    assert result.err.count("\n") == 1
    assert (victim / "passwd").exists()
    assert not machine.kernel.path("var/lib/kpatch").exists()


def test_a_modinfo_name_that_is_a_path_is_refused(machine: Machine) -> None:
    module = machine.module("lp_a")
    evil = module.with_name("evil.ko")
    # The same length in place: a traversal in the module's own .modinfo.
    evil.write_bytes(module.read_bytes().replace(b"name=lp_a\0", b"name=../x\0"))
    assert evil.read_bytes() != module.read_bytes()
    for command in ("install", "load", "info"):
        result = machine.kpatch(command, str(evil))
        assert result.code == 1
        assert "its .modinfo name: '../x' is not a module name kpatch accepts" in result.err
    assert not machine.kernel.path("var/lib/kpatch").exists()


def test_a_running_release_that_is_a_path_is_refused(make_machine) -> None:
    machine = make_machine(release="../../etc")
    result = machine.kpatch("load", "--all")
    assert result.code == 1 and "'../../etc' is not a kernel release" in result.err


# --- the boot unit ---

def test_the_boot_unit_is_refused_for_an_interpreter_others_can_write(
        machine: Machine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (tmp_path / "venv").chmod(0o777)  # a checkout anyone can write
    python = venv / "python3"
    python.symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(python))
    result = machine.kpatch("install", str(machine.module("lp_a")))
    assert result.code == 1
    assert f"the boot unit would run {python} -I -m kpatchbuild.kpatch as root at every " \
           f"boot, but {tmp_path / 'venv'}: it is writable by group or others" in result.err
    assert "install the kpatch package" in result.err
    for path in ("etc/systemd/system/kpatch.service", "var/lib/kpatch"):
        assert not machine.kernel.path(path).exists(), path


def test_the_boot_unit_runs_python_isolated(machine: Machine) -> None:
    assert machine.kpatch("install", str(machine.module("lp_a"))).code == 0
    unit = machine.kernel.path("etc/systemd/system/kpatch.service").read_text()
    assert f"ExecStart={sys.executable} -I -m kpatchbuild.kpatch load --all" in unit


def test_trusted_paths_follow_links_and_allow_only_sticky_open_directories(
        tmp_path: Path) -> None:
    me = frozenset({0, os.geteuid()})
    base = tmp_path / "base"
    base.mkdir()
    target = base / "file"
    target.write_text("")
    assert untrusted_path(target, me) is None
    open_dir = base / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (open_dir / "file").write_text("")
    assert untrusted_path(open_dir / "file", me) == \
        f"{open_dir}: it is writable by group or others (mode 0777)"
    sticky = base / "sticky"
    sticky.mkdir()
    sticky.chmod(0o777 | stat.S_ISVTX)
    (sticky / "file").write_text("")
    assert untrusted_path(sticky / "file", me) is None
    # A link is followed: a trusted link into an open directory is not trusted.
    link = base / "link"
    link.symlink_to(open_dir / "file")
    assert untrusted_path(link, me) == \
        f"{open_dir}: it is writable by group or others (mode 0777)"
    owner = target.stat().st_uid
    assert untrusted_path(target, frozenset({owner + 1})).endswith(
        f"it is owned by uid {owner}, not root")


# --- patches that would retire each other ---

def test_a_second_replace_mode_patch_for_a_kernel_is_refused_naming_the_first(
        machine: Machine) -> None:
    assert machine.kpatch("install", str(machine.module("lp_first"))).code == 0
    machine.kernel.path(f"{INSTALLED}/lp_first.json").write_text(json.dumps(
        {"package": "kpatch-patch-first", "version": "1+1"}))
    result = machine.kpatch("install", str(machine.module("lp_second")))
    assert result.code == 1
    assert "lp_second is an atomic-replace patch, and lp_first (package kpatch-patch-first) " \
           f"is installed for {RELEASE} too" in result.err
    assert "replace-mode patches are cumulative" in result.err
    assert not machine.kernel.path(f"{INSTALLED}/lp_second.ko").exists()
    # A stacking patch beside it, and a new build of the same one, are fine.
    assert machine.kpatch("install", str(machine.module("lp_stacks", replace=False))).code == 0
    assert machine.kpatch("install", str(machine.module("lp_first"))).code == 0


def test_load_all_loads_none_of_several_replace_mode_patches(machine: Machine) -> None:
    assert machine.kpatch("install", str(machine.module("lp_first"))).code == 0
    assert machine.kpatch("install", str(machine.module("lp_stacks", replace=False))).code == 0
    second = machine.module("lp_second")
    shutil.copy(second, machine.kernel.path(f"{INSTALLED}/lp_second.ko"))
    with read_module(second) as module:
        machine.kernel.path(f"{INSTALLED}/lp_second.manifest").write_text(
            install.Manifest.of(module).text())
    result = machine.kpatch("load", "--all")
    assert result.code == 1
    assert f"several atomic-replace patches are installed for {RELEASE}: lp_first, " \
           "lp_second; the one loaded last would retire the others, so none of them is " \
           "loaded" in result.err
    assert machine.kernel.modules == ["lp_stacks"]


def test_list_says_which_packages_patch_is_live(machine: Machine) -> None:
    assert machine.kpatch("install", str(machine.module("lp_a"))).code == 0
    machine.kernel.path(f"{INSTALLED}/lp_a.json").write_text(json.dumps(
        {"package": "kpatch-patch-cmdline", "version": "2+20261206120000"}))
    assert machine.kpatch("load", "lp_a").code == 0
    state = json.loads(machine.kpatch("list", "--json").out)
    assert state["loaded"][0]["package"] == "kpatch-patch-cmdline 2+20261206120000"
    assert "enabled, transition done (from kpatch-patch-cmdline 2+20261206120000)" in \
        machine.kpatch("list").out


# --- the root override ---

def test_a_root_override_never_gets_the_real_loader(machine: Machine,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOT_ENV, str(machine.kernel.root))
    system = System.from_environment()
    assert isinstance(system.loader, NoLoader)
    overridden = System(root=machine.kernel.root, loader=system.loader, euid=lambda: 0,
                        trusted_owners=frozenset({0, os.geteuid()}))
    module = machine.module("lp_a")
    assert main(["load", str(module)], system=overridden) == 1
    assert main(["unload", "lp_a"], system=overridden) == 1
    assert machine.kernel.inserted == []
    monkeypatch.setenv(ROOT_ENV, "/")
    assert not isinstance(System.from_environment().loader, NoLoader)


def test_the_root_override_is_refused_in_one_line(machine: Machine,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    overridden = System(root=machine.kernel.root, loader=NoLoader(machine.kernel.root),
                        euid=lambda: 0, trusted_owners=frozenset({0, os.geteuid()}))
    capsys.readouterr()
    assert main(["load", str(machine.module("lp_a"))], system=overridden) == 1
    err = capsys.readouterr().err
    assert f"{ROOT_ENV}={machine.kernel.root} is set: its /sys and /proc are not the running " \
           "kernel's, so kpatch inserts and removes no module under it" in err
    assert err.count("\n") == 1


def test_an_installed_replace_mode_patch_beside_another_is_not_loaded(machine: Machine) -> None:
    """As a patch package's postinst loads its module: refused, naming the other."""
    assert machine.kpatch("install", str(machine.module("lp_first"))).code == 0
    machine.kernel.path(f"{INSTALLED}/lp_first.json").write_text(json.dumps(
        {"package": "kpatch-patch-first", "version": "1+1"}))
    second = machine.module("lp_second")
    installed = machine.kernel.path(f"{INSTALLED}/lp_second.ko")
    shutil.copy(second, installed)
    with read_module(second) as module:
        installed.with_suffix(".manifest").write_text(install.Manifest.of(module).text())
    result = machine.kpatch("replace", str(installed))
    assert result.code == 1
    assert "lp_second is an atomic-replace patch, and lp_first (package kpatch-patch-first) " \
           "is installed" in result.err
    assert machine.kernel.inserted == []
    # Loading a build from elsewhere is the user's choice: it replaces what is live.
    assert machine.kpatch("replace", str(second)).code == 0


def test_the_working_directory_a_plain_run_searches_is_not_what_the_unit_runs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`python -m` puts the working directory first on sys.path (/ in a guest, mode 1777);
    the unit's `python -I` does not search it, so it is not held against the unit."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    monkeypatch.setattr(sys, "path", [str(open_dir), *sys.path[1:]])
    assert not sys.flags.safe_path  # pytest runs without -P, as kpatch install does
    assert open_dir not in install.command_files()


def test_a_dot_dot_after_a_link_is_walked_where_the_link_leads(tmp_path: Path) -> None:
    """``safe/link/../file`` names open/file when link points into open/: checked there."""
    me = frozenset({0, os.geteuid()})
    safe, open_dir = tmp_path / "safe", tmp_path / "open"
    (open_dir / "inner").mkdir(parents=True)
    safe.mkdir()
    (open_dir / "file").write_text("")
    (safe / "file").write_text("")
    open_dir.chmod(0o777)
    (safe / "link").symlink_to(open_dir / "inner")
    assert untrusted_path(safe / "file", me) is None
    reason = untrusted_path(Path(f"{safe}/link/../file"), me)
    assert reason is not None and "writable by group or others (mode 0777)" in reason
