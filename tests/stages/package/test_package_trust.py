"""What the packages' maintainer scripts and control files may and may not carry: the
manifests both boot loaders check, the conflict that keeps two replace-mode patches for
one kernel apart, control fields of one line, names that cannot become paths, and a boot
unit the admin disabled that stays disabled."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from kpatchbuild.base.errors import BuildError, KpbError
from kpatchbuild.kpatch.install import Manifest
from kpatchbuild.kpatch.modfile import read_module
from kpatchbuild.stages.package import deb, patch, tool
from tests.stages.package.test_packages import RELEASES, contents, patch_package


def build(item: patch.PatchPackage, directory: Path) -> Path:
    return deb.build(patch.spec(item, "1+1"), directory)


def test_each_module_ships_with_the_manifest_the_boot_loaders_check(tmp_path: Path) -> None:
    item = patch_package(tmp_path)
    root = contents(build(item, tmp_path / "pool"), tmp_path / "root")
    for release in item.releases:
        installed = root / "var/lib/kpatch" / release.release / "livepatch_cmdline"
        with read_module(release.module) as module:
            expected = Manifest.of(module)
        assert Manifest.read(installed.with_suffix(".manifest")) == expected
        assert expected.sha256 == release.sha256 and expected.replace


def test_two_replace_mode_packages_for_one_kernel_conflict(tmp_path: Path) -> None:
    first = patch_package(tmp_path)
    second = replace(patch_package(tmp_path, name="livepatch_other", marker="b"),
                     recipe="other")
    stacking = replace(patch_package(tmp_path, name="livepatch_stacks", marker="c"),
                       recipe="stacks", replace=False)
    debs = [build(item, tmp_path / "pool") for item in (first, second, stacking)]
    fields = subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Provides", "Conflicts"],
                            capture_output=True, text=True, check=True).stdout
    slots = ", ".join(patch.replace_slot(r) for r in RELEASES)
    assert f"Provides: {slots}" in fields and f"Conflicts: {slots}" in fields
    # dpkg itself, unpacking into an empty root: the first with the stacking one goes in,
    # the second replace-mode one is refused for the first.
    root = tmp_path / "root"
    admin = root / "var/lib/dpkg"
    for sub in ("updates", "info", "triggers"):
        (admin / sub).mkdir(parents=True)
    (admin / "status").write_text("")

    def unpack(package: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["dpkg", f"--root={root}", f"--admindir={admin}",
                               "--force-depends", "--force-not-root", "--force-script-chrootless",
                               "--unpack", str(package)], capture_output=True, text=True)

    assert unpack(debs[0]).returncode == 0
    assert unpack(debs[2]).returncode == 0
    refused = unpack(debs[1])
    assert refused.returncode != 0
    said = " ".join(refused.stderr.split())
    assert "kpatch-patch-cmdline conflicts with kpatch-replace-" in said, said
    assert "kpatch-patch-other provides kpatch-replace-" in said, said


def test_a_control_character_in_a_field_is_refused(tmp_path: Path) -> None:
    item = replace(patch_package(tmp_path), description="a fix\nPre-Depends: evil")
    with pytest.raises(BuildError) as refused:
        build(item, tmp_path / "pool")
    assert "package kpatch-patch-cmdline: its Description: " in refused.value.message
    assert "contains a control character (U+000A)" in refused.value.message
    assert "\n" not in refused.value.message
    assert not (tmp_path / "pool").exists() or not list((tmp_path / "pool").glob("*.deb"))


@pytest.mark.parametrize("variable", ["DEBFULLNAME", "DEBEMAIL"])
def test_a_maintainer_with_a_newline_is_refused(tmp_path: Path, variable: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBEMAIL", "team@example.org")
    monkeypatch.setenv(variable, "team@example.org\nPre-Depends: evil")
    with pytest.raises(BuildError, match=rf"^\${variable}: .* contains a control character"):
        build(patch_package(tmp_path), tmp_path / "pool")


@pytest.mark.parametrize(("field", "value", "words"), [
    ("release", "../../../../etc", "is not a kernel release"),
    ("module", "../evil", "is not a module name kpatch accepts"),
])
def test_names_that_would_become_paths_are_refused(tmp_path: Path, field: str, value: str,
                                                   words: str) -> None:
    item = patch_package(tmp_path)
    if field == "release":
        item = replace(item, releases=(replace(item.releases[0], release=value),))
    else:
        item = replace(item, module=value)
    with pytest.raises(KpbError, match=words):
        patch.spec(item, "1+1")


def run_tool_postinst(tmp_path: Path, was_enabled: bool) -> list[str]:
    """The kpatch package's postinst with a deb-systemd-helper that records its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    helper = bin_dir / "deb-systemd-helper"
    helper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                      f'[ "$2" != was-enabled ] || exit {0 if was_enabled else 1}\n')
    helper.chmod(0o755)
    script = tmp_path / "postinst"
    script.write_text(tool.POSTINST)
    done = subprocess.run(["sh", str(script), "configure", "0.1.0+1"],
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return calls.read_text().splitlines()


def test_the_kpatch_package_enables_its_unit_on_first_install(tmp_path: Path) -> None:
    assert "enable kpatch.service" in run_tool_postinst(tmp_path, was_enabled=True)


def test_the_kpatch_package_leaves_a_unit_the_admin_disabled_disabled(tmp_path: Path) -> None:
    calls = run_tool_postinst(tmp_path, was_enabled=False)
    assert "enable kpatch.service" not in calls
    assert "update-state kpatch.service" in calls


def test_the_kpatch_command_runs_python_isolated() -> None:
    assert tool.WRAPPER.startswith("#!/usr/bin/python3 -I\n")
