"""The package stage on small inputs: the kpatch package and a patch package built with
dpkg-deb and checked by lintian, the local apt repository signed and read by apt itself,
versions that only rise, and the refusals that keep an upgrade from going wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from doit.tools import config_changed

from kpatchbuild.base.errors import BuildError, RecipeError
from kpatchbuild.stages.fetch.suites import RELEASES as DEBIAN_RELEASES
from kpatchbuild.stages.package import patch, tool
from kpatchbuild.stages.package.repository import (
    KEY_HOME_ENV,
    KEYRING,
    SIGNING_KEY_ENV,
    VALID_DAYS_ENV,
    Repository,
)
from tests.kpatch.modules import make_module
from tests.support.signing import SigningFiles, appended_signature, make_key

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
    trixie = tool.spec("0.1.0", "trixie").files
    assert "/usr/lib/systemd/system/kpatch.service" in trixie
    assert not any(path.startswith(("/lib/", "/bin/", "/sbin/")) for path in trixie)
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
    assert '/usr/sbin/kpatch replace "$module"' in postinst
    assert "MODULE=livepatch_cmdline" in postinst and "KPATCH_ROOT:" not in postinst
    assert '/usr/sbin/kpatch unload "$MODULE"' in (tmp_path / "ctl/prerm").read_text()
    assert subprocess.run(["sh", "-n", str(tmp_path / "ctl/postinst")]).returncode == 0


def run_script(tmp_path: Path, script_name: str, argument: str, *, kpatch_exit: int = 0,
               running: str = RELEASES[0], livepatch: bool = True, installed: bool = True,
               loaded: bool = False, item: patch.PatchPackage | None = None,
               ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """A maintainer script rendered for a fake root and a fake kpatch that records its
    calls (the package's own scripts name / and /usr/sbin/kpatch, and read no variable to
    change that); returns the run and kpatch's calls. KPATCH_ROOT is set in the script's
    environment and must not reach kpatch."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    for path in (root, bin_dir):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
    calls = tmp_path / "calls"
    calls.write_text("")
    kpatch = bin_dir / "kpatch"
    kpatch.write_text(f'#!/bin/sh\necho "$*${{KPATCH_ROOT:+ KPATCH_ROOT=$KPATCH_ROOT}}" >> '
                      f'{calls}\n[ {kpatch_exit} = 0 ] || echo "kpatch: error: '
                      'livepatch_cmdline: the transition did not finish; rolled back" >&2\n'
                      f"exit {kpatch_exit}\n")
    kpatch.chmod(0o755)
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(running + "\n")
    if livepatch:
        (root / "sys/kernel/livepatch").mkdir(parents=True)
    if loaded:
        (root / "sys/kernel/livepatch/livepatch_cmdline").mkdir()
        (root / "sys/module/livepatch_cmdline").mkdir(parents=True)
    if installed:
        (root / "var/lib/kpatch" / RELEASES[0]).mkdir(parents=True)
        (root / "var/lib/kpatch" / RELEASES[0] / "livepatch_cmdline.ko").write_bytes(b"")
    scripts = patch.maintainer_scripts(item or patch_package(tmp_path),
                                       patch.ScriptPlaces(root=str(root), kpatch=str(kpatch)))
    script = tmp_path / "script"
    script.write_text(scripts[script_name])
    done = subprocess.run(["sh", str(script), argument], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "KPATCH_ROOT": "/tmp/elsewhere"})
    return done, calls.read_text().splitlines()


def test_postinst_replaces_the_running_kernels_patch(tmp_path: Path) -> None:
    done, calls = run_script(tmp_path, "postinst", "configure")
    assert done.returncode == 0, done.stderr
    module = tmp_path / "root/var/lib/kpatch" / RELEASES[0] / "livepatch_cmdline.ko"
    assert calls == [f"replace {module}"]


def test_a_failed_load_fails_the_configure_step_with_kpatchs_words(tmp_path: Path) -> None:
    done, calls = run_script(tmp_path, "postinst", "configure", kpatch_exit=4)
    assert done.returncode == 4
    assert "the transition did not finish; rolled back" in done.stderr


def test_a_kernel_that_does_not_trust_the_signer_leaves_the_package_installed(
        tmp_path: Path) -> None:
    done, calls = run_script(tmp_path, "postinst", "configure", kpatch_exit=8)
    assert done.returncode == 0, done.stderr
    assert len(calls) == 1
    assert "kpatch-patch-cmdline: installed, not loaded: the running kernel does not trust " \
           "its signer; enrol the certificate as said above, then kpatch load " \
           "livepatch_cmdline (or reboot)" in done.stdout


def signed_package(tmp_path: Path, key: SigningFiles) -> patch.PatchPackage:
    item = patch_package(tmp_path)
    releases = []
    for release in item.releases:
        with tempfile.TemporaryDirectory() as work:
            release.module.write_bytes(appended_signature(release.module.read_bytes(), key,
                                                          Path(work)))
        releases.append(replace(release, signer="Team signing key", hash="sha256",
                                certificate=key.der.read_bytes()))
    return replace(item, releases=tuple(releases))


def test_a_signed_package_ships_its_signers_certificate_and_says_how_to_enrol_it(
        tmp_path: Path) -> None:
    key = make_key(tmp_path / "keys", "Team signing key")
    item = signed_package(tmp_path, key)
    published = publish(Repository(tmp_path / "repo"), item)
    assert lintian(published.deb) == []
    root = contents(published.deb, tmp_path / "root")
    certificate = "/usr/share/kpatch/certs/kpatch-patch-cmdline.der"
    assert (root / certificate.lstrip("/")).read_bytes() == key.der.read_bytes()
    for release in RELEASES:
        meta = json.loads((root / "var/lib/kpatch" / release / "livepatch_cmdline.json")
                          .read_text())
        assert meta["signature"] == {"signer": "Team signing key", "hash": "sha256",
                                     "certificate": certificate}
    info = subprocess.run(["dpkg-deb", "-f", str(published.deb), "Description"],
                          capture_output=True, text=True, check=True).stdout
    assert "signed by 'Team signing key'" in info
    assert f"mokutil --import {certificate}" in " ".join(info.split())
    # Another certificate is another package content: a new version.
    other = make_key(tmp_path / "keys", "Rotated key")
    assert patch.content(item) != patch.content(signed_package(tmp_path / "again", other))


def test_an_unsigned_package_says_lockdown_refuses_it(tmp_path: Path) -> None:
    spec = patch.spec(patch_package(tmp_path), "1")
    assert "Its modules are unsigned: a kernel in lockdown (Secure Boot) refuses them." \
        in spec.description
    assert not any(path.startswith("/usr/share/kpatch/certs") for path in spec.files)


@pytest.mark.parametrize(("situation", "said"), [
    ({"running": "6.1.0-99-cloud-amd64"}, "no module for the running kernel "
                                          "6.1.0-99-cloud-amd64 (this package carries "
                                          f"{' '.join(RELEASES)})"),
    ({"livepatch": False}, "the running kernel has no /sys/kernel/livepatch"),
    ({"loaded": True}, "livepatch_cmdline is loaded already"),
])
def test_postinst_loads_nothing_when_it_should_not(tmp_path: Path, situation: dict,
                                                   said: str) -> None:
    done, calls = run_script(tmp_path, "postinst", "configure", **situation)
    assert done.returncode == 0 and calls == []
    assert said in " ".join(done.stdout.split())


@pytest.mark.parametrize(("argument", "unloads"), [("remove", True), ("upgrade", False)])
def test_prerm_unloads_on_removal_only(tmp_path: Path, argument: str, unloads: bool) -> None:
    done, calls = run_script(tmp_path, "prerm", argument, loaded=True)
    assert done.returncode == 0
    assert calls == (["unload livepatch_cmdline"] if unloads else [])


def test_a_stacking_module_is_loaded_not_replaced(tmp_path: Path) -> None:
    item = replace(patch_package(tmp_path), replace=False)
    text = patch.spec(item, "1+1").scripts["postinst"]
    assert '/usr/sbin/kpatch load "$module"' in text and "kpatch replace" not in text


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


def gpg_agents(home: Path) -> list[int]:
    """The gpg-agents running for ``home``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"gpg-agent") and os.fsencode(home) in argv:
            found.append(int(proc.name))
    return found


def stop_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                   capture_output=True)


@pytest.fixture
def key_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """kpatchbuild's own key home, not made yet, and no key named: the default signing.

    Under a short directory of /tmp, not tmp_path: gpg-agent's socket lives in the home, and
    a unix socket's path may not be longer than 107 bytes."""
    base = Path(tempfile.mkdtemp(prefix="kpb-key-"))
    home = base / "key"
    monkeypatch.setenv(KEY_HOME_ENV, str(home))
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    monkeypatch.delenv(VALID_DAYS_ENV, raising=False)
    try:
        yield home
    finally:
        stop_agent(home)
        shutil.rmtree(base)


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


def release_fields(repo: Repository) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in (repo.root / "Release").read_text().splitlines()
                if ": " in line and not line.startswith(" "))


def test_apt_reads_the_repository_and_takes_the_newest(tmp_path: Path, key_home: Path) -> None:
    repo = Repository(tmp_path / "repo")
    publish(repo, patch_package(tmp_path))
    newest = publish(repo, patch_package(tmp_path, name="livepatch_cmdline_v2", marker="2"),
                     base="2")
    repo.publish("kpatch", "0.1.0", ["content"],
                 lambda version, date: replace(tool.spec(version), date=date), now=NOW)
    index = repo.write_index()
    assert {p.name for p in index.files} == {"Packages", "Packages.gz", "Release", "InRelease",
                                             "Release.gpg", KEYRING}
    policy = apt_sees(repo.root, tmp_path, signed_by=repo.root / KEYRING)
    assert f"Candidate: {newest.version}" in policy
    assert "Candidate: 0.1.0+20261206120000" in policy


def test_the_repository_is_signed_by_default_with_a_key_of_its_own(
        tmp_path: Path, key_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The user's own keyring is not touched: an empty one, which must stay empty.
    user = tmp_path / "user-gnupg"
    user.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(user))
    repo = Repository(tmp_path / "repo")
    publish(repo, patch_package(tmp_path))
    index = repo.write_index()
    assert index.key is not None and index.key.homedir == key_home
    assert key_home.stat().st_mode & 0o777 == 0o700
    secrets = list((key_home / "private-keys-v1.d").glob("*.key"))
    assert secrets and all(p.stat().st_mode & 0o777 == 0o600 for p in secrets)
    assert not list(user.iterdir())
    assert gpg_agents(key_home) == []
    # What apt's signed-by= takes: a binary keyring (no armour) of that key alone.
    keyring = repo.root / KEYRING
    assert index.keyring == keyring and not keyring.read_bytes().startswith(b"-----")
    shown = subprocess.run(["gpg", "--batch", "--with-colons", "--show-keys", str(keyring)],
                           capture_output=True, text=True, check=True).stdout
    assert f"fpr:::::::::{index.key.fingerprint}:" in shown
    assert "Candidate: 1+20261206120000" in apt_sees(repo.root, tmp_path, signed_by=keyring)
    # The next run signs with the same key.
    again = repo.write_index()
    assert again.key == index.key
    assert keyring.read_bytes() == (repo.root / KEYRING).read_bytes()
    assert gpg_agents(key_home) == []


@pytest.mark.parametrize("mode", [0o770, 0o755, 0o707])
def test_a_key_home_open_to_others_is_refused(tmp_path: Path, key_home: Path,
                                              mode: int) -> None:
    key_home.mkdir()
    key_home.chmod(mode)
    repo = Repository(tmp_path / "repo")
    publish(repo, patch_package(tmp_path))
    with pytest.raises(BuildError) as refused:
        repo.write_index()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{key_home}: the repository key home is open to others "
                              f"(mode {mode:04o}); chmod 700 it")
    assert not (repo.root / "Release").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a directory away")
def test_a_key_home_of_another_user_is_refused(tmp_path: Path, key_home: Path) -> None:
    key_home.mkdir(mode=0o700)
    os.chown(key_home, 65534, 65534)
    with pytest.raises(BuildError, match=rf"^{key_home}: the repository key home is owned by "
                                         "uid 65534, not you"):
        Repository(tmp_path / "repo").write_index()


def test_an_unsigned_repository_is_asked_for_and_warned_of(
        tmp_path: Path, key_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kpatchbuild.base.store import Store
    from kpatchbuild.graph import packages

    store = Store(tmp_path / "cache")
    bookworm = DEBIAN_RELEASES["12"]
    repo = packages.repository(store, bookworm)
    assert repo.root == tmp_path / "cache/package/bookworm"
    publish(repo, patch_package(tmp_path))
    packages.write_index(store, bookworm)
    assert {"InRelease", "Release.gpg", KEYRING} <= {p.name for p in repo.root.iterdir()}
    signed = capsys.readouterr().err
    assert f"deb [signed-by=/usr/share/keyrings/{KEYRING}] file:{repo.root} ./" in signed
    assert f"cp {repo.root / KEYRING} /usr/share/keyrings/{KEYRING}" in signed
    assert "trusted=yes" not in signed and "warning" not in signed
    packages.write_index(store, bookworm, signed=False)
    said = capsys.readouterr().err
    for name in ("InRelease", "Release.gpg", KEYRING):
        assert not (repo.root / name).exists(), name
    warnings = [line for line in said.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "apt will not verify anything" in warnings[0]
    assert f"deb [trusted=yes] file:{repo.root} ./" in said
    assert "Candidate: 1+20261206120000" in apt_sees(repo.root, tmp_path)


@pytest.mark.parametrize("days", [None, 30])
def test_the_release_is_valid_for_a_number_of_days(tmp_path: Path, key_home: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   days: int | None) -> None:
    if days:
        monkeypatch.setenv(VALID_DAYS_ENV, str(days))
    repo = Repository(tmp_path / "repo")
    publish(repo, patch_package(tmp_path))
    before = datetime.now(UTC).replace(microsecond=0)
    index = repo.write_index(signed=False)
    fields = release_fields(repo)
    date = parsedate_to_datetime(fields["Date"])
    valid_until = parsedate_to_datetime(fields["Valid-Until"])
    assert before <= date <= datetime.now(UTC)
    assert valid_until - date == timedelta(days=days or 90)
    assert index.valid_until == valid_until


def test_a_bad_validity_is_refused(tmp_path: Path, key_home: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VALID_DAYS_ENV, "90d")
    with pytest.raises(BuildError, match=rf"^\${VALID_DAYS_ENV}='90d': expected a whole "):
        Repository(tmp_path / "repo").write_index()


def test_the_index_is_written_again_past_half_its_validity(tmp_path: Path,
                                                           key_home: Path) -> None:
    """What keeps a second `doit package` from doing work, unless the Release is getting
    old: the repository task's uptodate check."""
    from kpatchbuild.base.store import Store
    from kpatchbuild.graph import matrix
    from kpatchbuild.graph.tasks import generate_tasks, pipelines

    store = Store(tmp_path / "cache")
    items = matrix.select(pipelines(store, "cmdline"), "debian12-6.1-cloud-*")
    tasks = {t["basename"] + ":" + str(t.get("name")): t for t in generate_tasks(items)}
    task = tasks["package:bookworm/repository"]
    fresh = [check for check in task["uptodate"] if not isinstance(check, config_changed)]
    assert len(fresh) == 1 and fresh[0]() is False  # nothing written yet
    repo = Repository(tmp_path / "cache/package/bookworm")
    assert set(task["targets"]) == {str(p) for p in repo.index_files()}
    publish(repo, patch_package(tmp_path))
    repo.write_index()
    assert fresh[0]() is True
    now = datetime.now(UTC)
    assert repo.index_fresh(now=now + timedelta(days=44))
    assert not repo.index_fresh(now=now + timedelta(days=46))
    # An unsigned index is not what a signed task wants, nor the other way round.
    assert not repo.index_fresh(signed=False)
    unsigned = {t["basename"] + ":" + str(t.get("name")): t
                for t in generate_tasks(items, unsigned=True)}["package:bookworm/repository"]
    assert unsigned["targets"] == [str(repo.root / n) for n in ("Packages", "Packages.gz",
                                                                "Release")]
    # A Release from before there was a Valid-Until is written again.
    release = repo.root / "Release"
    release.write_text("".join(line for line in release.read_text().splitlines(True)
                               if not line.startswith("Valid-Until:")))
    assert fresh[0]() is False


def test_a_signed_repository_verifies_with_the_key(tmp_path: Path, key_home: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A key of the user's own, named by $KPATCHBUILD_SIGNING_KEY."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    try:
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                        "kpatchbuild test <test@example.org>", "ed25519", "sign", "1d"],
                       check=True, capture_output=True)
        key = tmp_path / "key.gpg"
        key.write_bytes(subprocess.run(["gpg", "--export", "test@example.org"], check=True,
                                       capture_output=True).stdout)
        repo = Repository(tmp_path / "repo")
        publish(repo, patch_package(tmp_path))
        monkeypatch.setenv(SIGNING_KEY_ENV, "test@example.org")
        index = repo.write_index()
        assert {"InRelease", "Release.gpg", KEYRING} <= {p.name for p in index.files}
        assert index.key is not None and index.key.homedir is None
        assert not key_home.exists()  # kpatchbuild's own key is neither made nor used
        assert "Candidate: 1+20261206120000" in apt_sees(repo.root, tmp_path, signed_by=key)
        # The keyring written beside it is that key.
        shutil.rmtree(tmp_path / "apt")
        assert "Candidate: 1+20261206120000" in apt_sees(repo.root, tmp_path,
                                                         signed_by=repo.root / KEYRING)
        # Unsigned again: the old signatures go, or apt would reject the new Release.
        repo.write_index(signed=False)
        assert not (repo.root / "InRelease").exists()
        assert not os.path.exists(repo.root / "Release.gpg")
        assert not (repo.root / KEYRING).exists()
        monkeypatch.setenv(SIGNING_KEY_ENV, "nobody@example.org")
        with pytest.raises(BuildError, match=r"KPATCHBUILD_SIGNING_KEY='nobody@example.org' "
                                             "names no secret key in gpg's keyring"):
            repo.write_index()
    finally:
        stop_agent(home)


def test_a_patch_package_needs_this_projects_kpatch_not_debians() -> None:
    """Debian's own kpatch package (upstream kpatch 0.9) has no `kpatch replace`."""
    assert patch.kpatch_dependency("0.1.0") == "kpatch (>= 0.1.0), kpatch (<< 0.2~)"
    for version, satisfies in (("0.1.0+20261206120000", True), ("0.1.7+1", True),
                                ("0.9.7-1", False), ("0.2.0+1", False)):
        inside = all(subprocess.run(["dpkg", "--compare-versions", version, op, bound])
                     .returncode == 0 for op, bound in (("ge", "0.1.0"), ("lt", "0.2~")))
        assert inside == satisfies, version
