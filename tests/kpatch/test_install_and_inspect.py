"""install, uninstall, load --all, list and info against the fake kernel; module file reading."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kpatchbuild.kpatch.modfile import PatchedFunction, read_module
from tests.kpatch.conftest import Machine
from tests.kpatch.fakekernel import BUILD_ID, RELEASE

UNIT = "etc/systemd/system/kpatch.service"
WANTS = "etc/systemd/system/sysinit.target.wants/kpatch.service"
HOOK = "etc/initramfs-tools/hooks/kpatch"
PREMOUNT = "etc/initramfs-tools/scripts/init-bottom/kpatch"


def test_install_keeps_the_module_and_writes_the_boot_unit(machine: Machine) -> None:
    module = machine.module("lp_a")
    result = machine.kpatch("install", str(module))
    assert result.code == 0, result.err
    installed = machine.kernel.path(f"var/lib/kpatch/{RELEASE}/lp_a.ko")
    assert installed.read_bytes() == module.read_bytes()
    unit = machine.kernel.path(UNIT).read_text()
    assert f"ExecStart={sys.executable} -I -m kpatchbuild.kpatch load --all\n" in unit
    assert "Before=sysinit.target" in unit and "WantedBy=sysinit.target" in unit
    assert "ConditionKernelCommandLine=!kpatch.enable=0" in unit
    assert os.readlink(machine.kernel.path(WANTS)) == "/etc/systemd/system/kpatch.service"
    assert not machine.kernel.path(HOOK).exists()  # this system has no initramfs-tools
    assert f"installed lp_a for {RELEASE}: kpatch.service loads it at boot" in result.out
    assert machine.kernel.inserted == []  # installing does not load


def test_install_adds_initramfs_hooks_where_initramfs_tools_is_used(machine: Machine) -> None:
    machine.kernel.path("etc/initramfs-tools").mkdir(parents=True)
    assert machine.kpatch("install", str(machine.module("lp_a"))).code == 0
    hook = machine.kernel.path(HOOK)
    assert "copy_exec /sbin/insmod" in hook.read_text() and hook.stat().st_mode & 0o111
    assert 'directory="${rootmnt}/var/lib/kpatch/${release}"' in \
        machine.kernel.path(PREMOUNT).read_text()

    result = machine.kpatch("uninstall", "lp_a")
    assert result.code == 0, result.err
    for path in (UNIT, WANTS, HOOK, PREMOUNT, f"var/lib/kpatch/{RELEASE}"):
        assert not os.path.lexists(machine.kernel.path(path)), path


def initramfs_boot(tmp_path: Path, modules: list[Path], *, release: str = RELEASE,
                   build_id: str = BUILD_ID, cmdline: str = "quiet",
                   prepare=None) -> tuple[list[str], str]:
    """The init-bottom script run against a root filesystem holding ``modules`` installed
    by ``kpatch install`` (a fake kernel root), a fake /proc and /sys, the host's od, tr,
    sha256sum and stat, and an insmod that records what it is given; returns the names
    inserted and what the script said."""
    from kpatchbuild.kpatch.cli import main
    from kpatchbuild.kpatch.install import initramfs_script_text
    from tests.kpatch.fakekernel import FakeKernel, notes_with_build_id

    root = tmp_path / "rootfs"
    kernel = FakeKernel(root, release=release)
    for module in modules:
        assert main(["install", "-k", release, str(module)], system=kernel.system()) == 0
    if prepare:
        prepare(root / "var/lib/kpatch" / release)
    system = tmp_path / "system"
    system.mkdir()
    (system / "cmdline").write_text(cmdline + "\n")
    (system / "osrelease").write_text(release + "\n")
    (system / "notes").write_bytes(notes_with_build_id(build_id))
    inserted = tmp_path / "inserted"
    inserted.write_text("")
    insmod = tmp_path / "insmod"
    insmod.write_text(f'#!/bin/sh\necho "$1" >> {inserted}\n')
    insmod.chmod(0o755)
    script = tmp_path / "init-bottom-kpatch"
    script.write_text(initramfs_script_text(
        paths={"cmdline": str(system / "cmdline"), "osrelease": str(system / "osrelease"),
               "notes": str(system / "notes"), "trusted_uid": str(os.geteuid())},
        tools={"insmod": str(insmod)}))
    done = subprocess.run(["sh", str(script)], env={"PATH": "/usr/bin:/bin", "rootmnt": str(root)},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [Path(p).name for p in inserted.read_text().split()], " ".join(done.stderr.split())


def test_the_initramfs_script_inserts_the_root_filesystems_modules_of_its_release(
        machine: Machine, tmp_path: Path) -> None:
    modules = [machine.module("lp_a"), machine.module("lp_b", replace=False)]
    other = machine.module("lp_other", release="6.12.118+deb12-cloud-amd64", build_id=None)
    inserted, said = initramfs_boot(tmp_path, modules)
    assert inserted == ["lp_a.ko", "lp_b.ko"] and said == ""
    # kpatch.enable=0 on the command line: nothing.
    assert initramfs_boot(tmp_path / "off", modules, cmdline="quiet kpatch.enable=0")[0] == []
    # Another release's module is not this kernel's.
    assert initramfs_boot(tmp_path / "other", [other], release="6.12.118+deb12-cloud-amd64"
                          )[0] == ["lp_other.ko"]


def test_the_initramfs_script_checks_what_kpatch_load_checks(machine: Machine,
                                                             tmp_path: Path) -> None:
    """A module dropped in without a manifest, changed since it was installed, writable by
    others, or built for another build of the release is not inserted; the others are."""
    good, changed, loose = (machine.module(name, replace=False)
                            for name in ("lp_good", "lp_changed", "lp_loose"))

    def tamper(directory: Path) -> None:
        shutil.copy(good, directory / "lp_stray.ko")
        with open(directory / "lp_changed.ko", "ab") as stream:
            stream.write(b"\0")
        (directory / "lp_loose.ko").chmod(0o666)

    inserted, said = initramfs_boot(tmp_path, [good, changed, loose], prepare=tamper)
    assert inserted == ["lp_good.ko"]
    assert "lp_stray.ko: no manifest beside it: not loaded" in said
    assert "lp_changed.ko: its sha256 is not its manifest's: not loaded" in said
    assert "lp_loose.ko: owner and mode" in said and ":666: only root may own" in said
    # The same modules on another build of the same release: none of them.
    inserted, said = initramfs_boot(tmp_path / "rebuilt", [good], build_id="ab" * 20)
    assert inserted == [] and "built for another build of" in said


def test_the_initramfs_script_loads_no_one_of_several_replace_mode_modules(
        machine: Machine, tmp_path: Path) -> None:
    first, second = machine.module("lp_first"), machine.module("lp_second")
    stacking = machine.module("lp_stacking", replace=False)

    def second_replace_module(directory: Path) -> None:
        # Put there by hand, past kpatch install's refusal: the boot still refuses it.
        from kpatchbuild.kpatch.install import Manifest
        from kpatchbuild.kpatch.modfile import read_module
        shutil.copy(second, directory / "lp_second.ko")
        with read_module(second) as module:
            (directory / "lp_second.manifest").write_text(Manifest.of(module).text())

    inserted, said = initramfs_boot(tmp_path, [first, stacking], prepare=second_replace_module)
    assert inserted == ["lp_stacking.ko"]
    assert "several atomic-replace patches are installed for" in said
    assert "lp_first.ko lp_second.ko" in said


@pytest.mark.parametrize("unit_directory", ["lib/systemd/system", "usr/lib/systemd/system"])
def test_install_leaves_the_boot_hooks_to_the_kpatch_package(machine: Machine,
                                                             unit_directory: str) -> None:
    """Debian 12's kpatch package has its unit in /lib, Debian 13's in /usr/lib."""
    machine.kernel.path("etc/initramfs-tools").mkdir(parents=True)
    packaged = machine.kernel.path(f"{unit_directory}/kpatch.service")
    packaged.parent.mkdir(parents=True)
    packaged.write_text("[Unit]\n")
    result = machine.kpatch("install", str(machine.module("lp_a")))
    assert result.code == 0, result.err
    assert machine.kernel.path(f"var/lib/kpatch/{RELEASE}/lp_a.ko").is_file()
    for path in (UNIT, WANTS, HOOK, PREMOUNT):
        assert not os.path.lexists(machine.kernel.path(path)), path


def test_the_boot_hooks_stay_until_the_last_module_goes(machine: Machine) -> None:
    machine.kpatch("install", str(machine.module("lp_a")))
    assert machine.kpatch("install", str(machine.module("lp_b", replace=False))).code == 0
    machine.kpatch("uninstall", "lp_a")
    assert machine.kernel.path(UNIT).exists()
    machine.kpatch("uninstall", "lp_b")
    assert not machine.kernel.path(UNIT).exists()
    assert not os.path.lexists(machine.kernel.path(WANTS))


def test_install_for_another_release_stages_it_for_that_kernel(machine: Machine) -> None:
    next_release = "6.1.0-57-cloud-amd64"
    module = machine.module("lp_next", release=next_release, build_id=None)
    result = machine.kpatch("install", "-k", next_release, str(module))
    assert result.code == 0, result.err
    assert machine.kernel.path(f"var/lib/kpatch/{next_release}/lp_next.ko").is_file()
    assert f"loads it when {next_release} boots" in result.out
    # Not for the running kernel: load --all leaves it alone.
    assert "no patches installed for" in machine.kpatch("load", "--all").out


def test_install_refuses_a_module_built_for_another_release(machine: Machine) -> None:
    module = machine.module("lp_a")
    result = machine.kpatch("install", "-k", "6.1.0-57-cloud-amd64", str(module))
    assert result.code == 5
    assert f"built for kernel {RELEASE} (build id {BUILD_ID}), not 6.1.0-57-cloud-amd64; " \
           f"install it for the kernel it was built for (-k {RELEASE})" in result.err
    assert not machine.kernel.path("var/lib/kpatch").exists()


def test_install_refuses_a_module_that_is_not_a_livepatch(machine: Machine) -> None:
    result = machine.kpatch("install", str(machine.module("plain", livepatch=False)))
    assert result.code == 1
    assert "not a livepatch module" in result.err


def test_uninstall_of_a_module_not_installed_names_where_it_is(machine: Machine) -> None:
    other = "6.1.0-57-cloud-amd64"
    machine.kpatch("install", "-k", other,
                   str(machine.module("lp_x", release=other, build_id=None)))
    result = machine.kpatch("uninstall", "lp_x")
    assert result.code == 1
    assert f"lp_x: not installed for {RELEASE} (installed for {other}: use -k)" in result.err


def test_load_all_loads_what_is_installed_and_skips_what_is_loaded(machine: Machine) -> None:
    machine.kpatch("install", str(machine.module("lp_a", replace=False)))
    machine.kpatch("install", str(machine.module(
        "lp_b", replace=False, functions=[("vmlinux", "version_proc_show", 0)])))
    machine.kpatch("load", "lp_a")  # by name: the installed file
    result = machine.kpatch("load", "--all")
    assert result.code == 0, result.err
    assert "lp_a: already loaded" in result.out
    assert "loaded lp_b" in result.out
    assert sorted(machine.kernel.modules) == ["lp_a", "lp_b"]


def test_load_all_goes_on_past_a_bad_module_and_fails_at_the_end(machine: Machine) -> None:
    machine.kpatch("install", str(machine.module("lp_a", replace=False)))
    bad_dir = machine.kernel.path(f"var/lib/kpatch/{RELEASE}")
    (bad_dir / "lp_0bad.ko").write_text("not a module\n")
    digest = hashlib.sha256(b"not a module\n").hexdigest()
    (bad_dir / "lp_0bad.manifest").write_text(f"{digest} - stack\n")
    result = machine.kpatch("load", "--all")
    assert result.code == 1
    assert "lp_0bad.ko: not a kernel module" in result.err
    assert "loaded lp_a" in result.out


def test_list_shows_loaded_and_installed_patches(machine: Machine) -> None:
    machine.kpatch("install", str(machine.module("lp_a")))
    machine.kpatch("load", "lp_a")
    human = machine.kpatch("list")
    assert human.code == 0
    assert "lp_a" in human.out and "enabled, transition done" in human.out
    assert f"  {RELEASE} (running):" in human.out
    state = json.loads(machine.kpatch("list", "--json").out)
    assert state["kernel"] == {"release": RELEASE, "build_id": BUILD_ID, "livepatch": True}
    assert state["loaded"] == [{"name": "lp_a", "patch": True, "enabled": True,
                                "transition": False, "package": None}]
    assert state["installed"] == {RELEASE: ["lp_a"]}


def test_list_shows_a_module_whose_patch_is_gone(machine: Machine) -> None:
    machine.kpatch("load", str(machine.module("lp_v1")))
    # Load the replacement by hand, as `load` would: the old module stays, patch retired.
    machine.kpatch("load", str(machine.module("lp_v2")))
    state = json.loads(machine.kpatch("list", "--json").out)
    assert {"name": "lp_v1", "patch": False, "enabled": False, "transition": False,
            "package": None} in state["loaded"]
    assert "module loaded, patch inactive (replaced or disabled)" in machine.kpatch("list").out


def test_info_of_a_file_reads_its_metadata_and_functions(machine: Machine) -> None:
    module = machine.module("lp_two", functions=[("vmlinux", "cmdline_proc_show", 0),
                                                 ("binfmt_misc", "bm_status_read", 2)])
    state = json.loads(machine.kpatch("info", "--json", str(module)).out)
    assert state["name"] == "lp_two"
    assert state["release"] == RELEASE and state["build_id"] == BUILD_ID
    assert state["replace"] is True and state["loaded"] is False
    assert state["functions_from"] == "file"
    assert state["functions"] == [
        {"object": "vmlinux", "function": "cmdline_proc_show", "sympos": 1},
        {"object": "binfmt_misc", "function": "bm_status_read", "sympos": 2}]
    human = machine.kpatch("info", str(module)).out
    assert "binfmt_misc: bm_status_read,2" in human and "state:       not loaded" in human


def test_info_shows_what_the_package_says_of_an_installed_module(machine: Machine) -> None:
    assert machine.kpatch("install", str(machine.module("lp_a"))).code == 0
    installed = machine.kernel.path(f"var/lib/kpatch/{RELEASE}/lp_a.json")
    installed.write_text(json.dumps({
        "package": "kpatch-patch-cmdline", "version": "2+20261206120000", "recipe": "cmdline",
        "patches": [{"file": "cmdline.patch", "sha256": "0123456789abcdef" * 4}]}))
    human = machine.kpatch("info", "lp_a").out
    assert "package:     kpatch-patch-cmdline 2+20261206120000" in human
    assert "recipe:      cmdline" in human
    assert "patch:       cmdline.patch (sha256 0123456789abcdef)" in human
    assert json.loads(machine.kpatch("info", "--json", "lp_a").out)["package"]["recipe"] \
        == "cmdline"
    installed.write_text("{not json")
    broken = machine.kpatch("info", "lp_a")
    assert broken.code == 1 and "lp_a.json: unreadable package metadata" in broken.err


def test_info_of_a_loaded_patch_reads_sysfs(machine: Machine) -> None:
    machine.kpatch("load", str(machine.module("lp_a")))
    # sysfs is the truth for a loaded patch: show what the kernel lists there.
    (machine.patch_dir("lp_a") / "vmlinux" / "extra_function,1").mkdir()
    state = json.loads(machine.kpatch("info", "--json", "lp_a").out)
    assert state["functions_from"] == "sysfs"
    assert state["enabled"] is True and state["transition"] is False
    assert {"object": "vmlinux", "function": "extra_function", "sympos": 1} \
        in state["functions"]


def test_info_of_an_unknown_name_is_refused(machine: Machine) -> None:
    result = machine.kpatch("info", "lp_nowhere")
    assert result.code == 1
    assert "lp_nowhere: no such module file, loaded patch or module installed" in result.err


def test_module_file_reading_follows_the_registration_tables(tmp_path: Path) -> None:
    from tests.kpatch.modules import make_module
    module = make_module(tmp_path, "lp_tables",
                         [("vmlinux", "a", 0), ("vmlinux", "b", 3), ("nfsd", "c", 1)],
                         replace=False)
    info = read_module(module)
    assert info.functions == (PatchedFunction("vmlinux", "a", 0),
                              PatchedFunction("vmlinux", "b", 3),
                              PatchedFunction("nfsd", "c", 1))
    assert info.replace is False and info.livepatch
    assert info.vermagic_release == RELEASE


@pytest.mark.kernel
def test_a_module_the_pipeline_built_is_read(default_recipe_stage) -> None:
    """The default recipe's real module: its modinfo and its one patched function."""
    record = json.loads((default_recipe_stage.work / "module.json").read_text())
    info = read_module(Path(record["module"]))
    assert info.name == "livepatch_cmdline" and info.livepatch and info.replace
    assert info.release == record["release"] == info.vermagic_release
    assert info.build_id and len(info.build_id) == 40
    assert info.functions == (PatchedFunction("vmlinux", "cmdline_proc_show", 0),)


def test_damaged_module_files_are_one_line_refusals(tmp_path: Path) -> None:
    """Truncated or corrupted files: a KpatchError naming the file, never another error."""
    from kpatchbuild.kpatch.errors import KpatchError
    from tests.kpatch.modules import make_module
    data = make_module(tmp_path, "lp_whole").read_bytes()
    damaged = tmp_path / "damaged.ko"
    variants = [data[:length] for length in range(0, len(data), max(1, len(data) // 97))]
    for offset in range(0, len(data), max(1, len(data) // 61)):
        flipped = bytearray(data)
        flipped[offset] ^= 0xFF
        variants.append(bytes(flipped))
    for variant in variants:
        damaged.write_bytes(variant)
        try:
            read_module(damaged)
        except KpatchError as error:
            assert str(damaged) in error.message
