"""The package stage on small inputs: the kpatch package and a patch package built with
dpkg-deb and checked by lintian, the local apt repository read by apt itself, versions that
only rise, and the refusals that keep an upgrade from going wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kpatchbuild.base.errors import RecipeError
from kpatchbuild.stages.package import patch, tool
from kpatchbuild.stages.package.repository import SIGNING_KEY_ENV, Repository
from tests.kpatch.modules import make_module

RELEASES = ("6.1.0-57-cloud-amd64", "6.12.118+deb12-cloud-amd64")
NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


def lintian(deb: Path) -> list[str]:
    """lintian's tags for ``deb``, errors and warnings (info tags are not asked for)."""
    result = subprocess.run(["lintian", "--no-tag-display-limit", str(deb)],
                            capture_output=True, text=True)
    return [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:")]


def contents(deb: Path, into: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)
    return into


def patch_package(tmp_path: Path, *, name: str = "livepatch_cmdline",
                  marker: str = "") -> patch.PatchPackage:
    modules = tmp_path / f"modules{marker}"
    releases = tuple(
        patch.ReleaseModule(release, make_module(modules / release, name, release=release,
                                                 build_id=None, vermagic=f"x{marker}"),
                            ("cmdline_proc_show",))
        for release in RELEASES)
    return patch.PatchPackage("cmdline", name, "/proc/cmdline ends with kpatch=1", True,
                              (patch.PatchFile("cmdline.patch", "ab" * 32),), releases)


def publish(repo: Repository, item: patch.PatchPackage, base: str = "1",
            now: datetime = NOW):
    return repo.publish(item.package, base, patch.content(item),
                        lambda version, date: replace(patch.spec(item, version), date=date),
                        modules=patch.modules_by_release(item), now=now)


def test_the_kpatch_package_runs_with_debians_python_alone(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    published = repo.publish("kpatch", "0.1.0", ["content"],
                             lambda version, date: replace(tool.spec(version), date=date),
                             now=NOW)
    assert published.deb.name == "kpatch_0.1.0+20261206120000_all.deb"
    assert lintian(published.deb) == []
    root = contents(published.deb, tmp_path / "root")
    unit = (root / "lib/systemd/system/kpatch.service").read_text()
    assert "ExecStart=/usr/sbin/kpatch load --all" in unit
    assert (root / "usr/share/initramfs-tools/scripts/init-bottom/kpatch").stat().st_mode & 0o111
    # Debian's own python3 with only the package's files (and python3-pyelftools): the
    # module closure is complete and nothing of the build side is needed.
    wrapper = (root / "usr/sbin/kpatch").read_text().replace(
        '"/usr/share/kpatch"', repr(str(root / "usr/share/kpatch")))
    result = subprocess.run(["/usr/bin/python3", "-I", "-c", wrapper, "info", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "patched functions" in result.stdout or "NAME|MODULE.ko" in result.stdout
    shipped = {p.relative_to(root / "usr/share/kpatch").as_posix()
               for p in (root / "usr/share/kpatch").rglob("*.py")}
    assert "kpatchbuild/kpatch/cli.py" in shipped and "kpatchbuild/base/process.py" in shipped
    assert not any(p.startswith(("kpatchbuild/graph", "kpatchbuild/stages")) for p in shipped)


def test_a_patch_package_carries_every_release_with_its_metadata(tmp_path: Path) -> None:
    item = patch_package(tmp_path)
    published = publish(Repository(tmp_path / "repo"), item)
    assert published.deb.name == "kpatch-patch-cmdline_1+20261206120000_amd64.deb"
    assert lintian(published.deb) == []
    root = contents(published.deb, tmp_path / "root")
    for release in RELEASES:
        module = root / "var/lib/kpatch" / release / "livepatch_cmdline.ko"
        assert module.read_bytes() == (tmp_path / "modules" / release /
                                       "livepatch_cmdline.ko").read_bytes()
        meta = json.loads(module.with_suffix(".json").read_text())
        assert meta["package"] == "kpatch-patch-cmdline" and meta["release"] == release
        assert meta["version"] == "1+20261206120000"
        assert meta["patches"] == [{"file": "cmdline.patch", "sha256": "ab" * 32}]
        assert meta["functions"] == ["cmdline_proc_show"]
    control = subprocess.run(["dpkg-deb", "-e", str(published.deb), str(tmp_path / "ctl")])
    assert control.returncode == 0
    postinst = (tmp_path / "ctl/postinst").read_text()
    assert 'kpatch replace "$module"' in postinst and "MODULE=livepatch_cmdline" in postinst
    assert "kpatch unload $MODULE" in (tmp_path / "ctl/prerm").read_text()
    assert subprocess.run(["sh", "-n", str(tmp_path / "ctl/postinst")]).returncode == 0


def run_script(tmp_path: Path, text: str, argument: str, *, kpatch_exit: int = 0,
               running: str = RELEASES[0], livepatch: bool = True, installed: bool = True,
               loaded: bool = False) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """A maintainer script against a fake root (KPATCH_ROOT) and a fake kpatch and uname,
    which record their calls; returns the run and kpatch's calls."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    for path in (root, bin_dir):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
    calls = tmp_path / "calls"
    calls.write_text("")
    for name, body in (("uname", f"echo {running}"),
                       ("kpatch", f'echo "$*" >> {calls}\n'
                                  f'[ {kpatch_exit} = 0 ] || echo "kpatch: error: '
                                  f'livepatch_cmdline: the transition did not finish; rolled '
                                  f'back" >&2\nexit {kpatch_exit}')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    if livepatch:
        (root / "sys/kernel/livepatch").mkdir(parents=True)
    if loaded:
        (root / "sys/kernel/livepatch/livepatch_cmdline").mkdir()
        (root / "sys/module/livepatch_cmdline").mkdir(parents=True)
    if installed:
        (root / "var/lib/kpatch" / RELEASES[0]).mkdir(parents=True)
        (root / "var/lib/kpatch" / RELEASES[0] / "livepatch_cmdline.ko").write_bytes(b"")
    script = tmp_path / "script"
    script.write_text(text)
    done = subprocess.run(["sh", str(script), argument], capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "KPATCH_ROOT": str(root)})
    return done, calls.read_text().splitlines()


def test_postinst_replaces_the_running_kernels_patch(tmp_path: Path) -> None:
    scripts = patch.spec(patch_package(tmp_path), "1+1").scripts
    done, calls = run_script(tmp_path, scripts["postinst"], "configure")
    assert done.returncode == 0, done.stderr
    module = tmp_path / "root/var/lib/kpatch" / RELEASES[0] / "livepatch_cmdline.ko"
    assert calls == [f"replace {module}"]


def test_a_failed_load_fails_the_configure_step_with_kpatchs_words(tmp_path: Path) -> None:
    scripts = patch.spec(patch_package(tmp_path), "1+1").scripts
    done, calls = run_script(tmp_path, scripts["postinst"], "configure", kpatch_exit=4)
    assert done.returncode == 4
    assert "the transition did not finish; rolled back" in done.stderr


@pytest.mark.parametrize(("situation", "said"), [
    ({"running": "6.1.0-99-cloud-amd64"}, "no module for the running kernel "
                                          "6.1.0-99-cloud-amd64 (this package carries "
                                          f"{' '.join(RELEASES)})"),
    ({"livepatch": False}, "the running kernel has no /sys/kernel/livepatch"),
    ({"loaded": True}, "livepatch_cmdline is loaded already"),
])
def test_postinst_loads_nothing_when_it_should_not(tmp_path: Path, situation: dict,
                                                   said: str) -> None:
    scripts = patch.spec(patch_package(tmp_path), "1+1").scripts
    done, calls = run_script(tmp_path, scripts["postinst"], "configure", **situation)
    assert done.returncode == 0 and calls == []
    assert said in " ".join(done.stdout.split())


@pytest.mark.parametrize(("argument", "unloads"), [("remove", True), ("upgrade", False)])
def test_prerm_unloads_on_removal_only(tmp_path: Path, argument: str, unloads: bool) -> None:
    scripts = patch.spec(patch_package(tmp_path), "1+1").scripts
    done, calls = run_script(tmp_path, scripts["prerm"], argument, loaded=True)
    assert done.returncode == 0
    assert calls == (["unload livepatch_cmdline"] if unloads else [])


def test_a_stacking_module_is_loaded_not_replaced(tmp_path: Path) -> None:
    item = replace(patch_package(tmp_path), replace=False)
    text = patch.spec(item, "1+1").scripts["postinst"]
    assert 'kpatch load "$module"' in text and "kpatch replace" not in text


def test_versions_rise_with_content_and_stay_with_it(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    first = publish(repo, patch_package(tmp_path))
    again = publish(repo, patch_package(tmp_path), now=NOW + timedelta(hours=1))
    assert (again.version, again.new) == (first.version, False)
    assert again.deb == first.deb
    # New content within the same second still gets a newer version.
    renamed = patch_package(tmp_path, name="livepatch_cmdline_v2", marker="2")
    second = publish(repo, renamed, base="2", now=NOW)
    third = publish(repo, patch_package(tmp_path, name="livepatch_cmdline_v3", marker="3"),
                    base="2", now=NOW - timedelta(days=1))
    versions = [first.version, second.version, third.version]
    for older, newer in zip(versions, versions[1:], strict=False):
        assert subprocess.run(["dpkg", "--compare-versions", newer, "gt", older]).returncode == 0


def test_a_lower_version_is_refused(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    publish(repo, patch_package(tmp_path, name="livepatch_cmdline_v2"), base="2")
    with pytest.raises(RecipeError, match=r"version 1 is lower than the published 2\+"):
        publish(repo, patch_package(tmp_path, marker="b"), base="1")


def test_changed_module_under_the_published_name_is_refused(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    publish(repo, patch_package(tmp_path))
    with pytest.raises(RecipeError) as refused:
        publish(repo, patch_package(tmp_path, marker="b"), now=NOW + timedelta(hours=1))
    assert "keeps the name livepatch_cmdline of the published version" in str(refused.value)
    assert "raise the recipe's 'version'" in str(refused.value)


def test_a_recipe_name_that_is_no_package_name_is_refused() -> None:
    with pytest.raises(RecipeError, match="'kpatch-patch-My_Fix' is not a Debian package name"):
        patch.package_name("My_Fix")


def apt_sees(repo: Path, tmp_path: Path, *, signed_by: Path | None = None) -> str:
    """``apt-cache policy`` of the packages, from a private apt state reading only ``repo``."""
    state = tmp_path / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "etc/preferences.d",
                "etc/apt.conf.d", "etc/trusted.gpg.d"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    option = f"[signed-by={signed_by}]" if signed_by else "[trusted=yes]"
    (state / "etc/sources.list").write_text(f"deb {option} file:{repo} ./\n")
    options = [f"-oDir::State={state}", f"-oDir::State::Lists={state}/lists",
               f"-oDir::Cache={state}/cache", f"-oDir::Etc={state}/etc",
               f"-oDir::Etc::SourceList={state}/etc/sources.list",
               "-oDir::Etc::SourceParts=/nonexistent", "-oDebug::NoLocking=1",
               "-oAPT::Sandbox::User=root"]
    update = subprocess.run(["apt-get", *options, "update"], capture_output=True, text=True)
    assert update.returncode == 0 and "W:" not in update.stdout + update.stderr, \
        update.stdout + update.stderr
    return subprocess.run(["apt-cache", *options, "policy", "kpatch", "kpatch-patch-cmdline"],
                          capture_output=True, text=True, check=True).stdout


def test_apt_reads_the_repository_and_takes_the_newest(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    publish(repo, patch_package(tmp_path))
    newest = publish(repo, patch_package(tmp_path, name="livepatch_cmdline_v2", marker="2"),
                     base="2")
    repo.publish("kpatch", "0.1.0", ["content"],
                 lambda version, date: replace(tool.spec(version), date=date), now=NOW)
    written = repo.write_index()
    assert {p.name for p in written} == {"Packages", "Packages.gz", "Release"}
    policy = apt_sees(repo.root, tmp_path)
    assert f"Candidate: {newest.version}" in policy
    assert "Candidate: 0.1.0+20261206120000" in policy


def test_a_signed_repository_verifies_with_the_key(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                    "kpatchbuild test <test@example.org>", "ed25519", "sign", "1d"],
                   check=True, capture_output=True)
    key = tmp_path / "key.gpg"
    key.write_bytes(subprocess.run(["gpg", "--export", "test@example.org"], check=True,
                                   capture_output=True).stdout)
    repo = Repository(tmp_path / "repo")
    publish(repo, patch_package(tmp_path))
    monkeypatch.setenv(SIGNING_KEY_ENV, "test@example.org")
    names = {p.name for p in repo.write_index()}
    assert {"InRelease", "Release.gpg"} <= names
    assert "Candidate: 1+20261206120000" in apt_sees(repo.root, tmp_path, signed_by=key)
    # Unsigned again: the old signatures go, or apt would reject the new Release.
    monkeypatch.delenv(SIGNING_KEY_ENV)
    repo.write_index()
    assert not (repo.root / "InRelease").exists()
    assert not os.path.exists(repo.root / "Release.gpg")


def test_a_patch_package_needs_this_projects_kpatch_not_debians() -> None:
    """Debian's own kpatch package (upstream kpatch 0.9) has no `kpatch replace`."""
    assert patch.kpatch_dependency("0.1.0") == "kpatch (>= 0.1.0), kpatch (<< 0.2~)"
    for version, satisfies in (("0.1.0+20261206120000", True), ("0.1.7+1", True),
                                ("0.9.7-1", False), ("0.2.0+1", False)):
        inside = all(subprocess.run(["dpkg", "--compare-versions", version, op, bound])
                     .returncode == 0 for op, bound in (("ge", "0.1.0"), ("lt", "0.2~")))
        assert inside == satisfies, version
