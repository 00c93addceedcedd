"""Each Debian release read through an apt index of its own: its sources and private state,
the mirrors taken from the host's apt sources, freshness, and (marked ``kernel``: they
reach Debian's archive) real indexes of Debian 12 and 13 that resolve each release's own
kernels and refuse an index whose signature does not verify."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kpatchbuild.base.errors import FetchError
from kpatchbuild.stages.fetch import suites
from kpatchbuild.stages.fetch.suites import Mirrors, SuiteIndex

BOOKWORM, TRIXIE = suites.RELEASES["12"], suites.RELEASES["13"]
MIRRORS = Mirrors("http://mirror.example/debian", "http://mirror.example/debian-security")


def index(tmp_path: Path, release: suites.DebianRelease = BOOKWORM,
          mirrors: Mirrors = MIRRORS) -> SuiteIndex:
    return SuiteIndex(tmp_path / "fetch-index" / release.codename, release, mirrors,
                      Path("/usr/share/keyrings/debian-archive-keyring.gpg"))


def test_a_release_reads_its_own_suites_signed_by_debians_keyring(tmp_path: Path) -> None:
    text = index(tmp_path, TRIXIE).sources_text()
    assert "URIs: http://mirror.example/debian\nSuites: trixie trixie-updates\n" in text
    assert "URIs: http://mirror.example/debian-security\nSuites: trixie-security\n" in text
    assert text.count("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg") == 2
    assert "bookworm" not in text


def test_the_private_state_names_nothing_of_the_hosts(tmp_path: Path) -> None:
    item = index(tmp_path)
    config = item.config_text()
    for key in ("Dir::Etc::sourcelist", "Dir::Etc::sourceparts", "Dir::Etc::preferencesparts",
                "Dir::State::lists", "Dir::State::status", "Dir::Cache"):
        assert f'{key} "{item.root}' in config, key
    assert "/var/lib/apt" not in config and "/etc/apt" not in config


def test_mirrors_come_from_the_hosts_sources_of_either_format(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(suites.MIRROR_ENV, raising=False)
    monkeypatch.delenv(suites.SECURITY_MIRROR_ENV, raising=False)
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(
        "Types: deb\nURIs: http://ftp.example.org/debian/\nSuites: trixie\n\n"
        "Types: deb\nURIs: http://security.example.org/debian-security\n"
        "Suites: trixie-security\n")
    (parts / "other.list").write_text("deb [arch=amd64] https://vendor.example/apt stable main\n")
    assert Mirrors.from_host([tmp_path / "sources.list", parts]) == Mirrors(
        "http://ftp.example.org/debian", "http://security.example.org/debian-security")
    (tmp_path / "sources.list").write_text(
        "# a comment\ndeb http://old.example/debian bookworm main\n")
    assert Mirrors.from_host([tmp_path / "sources.list", parts]).debian == \
        "http://old.example/debian"
    assert Mirrors.from_host([tmp_path / "nothing"]) == Mirrors(
        suites.DEFAULT_MIRROR, suites.DEFAULT_SECURITY_MIRROR)
    monkeypatch.setenv(suites.MIRROR_ENV, "http://local.example/debian/")
    assert Mirrors.from_host([parts]).debian == "http://local.example/debian"


def test_an_unknown_debian_release_is_one_line() -> None:
    with pytest.raises(FetchError, match=r"^recipe.yaml:3: Debian 11 is not a release "
                                         r"kpatchbuild knows \(known: 12 \(bookworm\), 13 "
                                         r"\(trixie\)\)$"):
        suites.debian_release("11", "recipe.yaml:3")


def test_an_index_is_refreshed_when_stale_asked_or_moved(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    updates: list[str] = []

    def update(self: SuiteIndex) -> None:
        updates.append(self.mirrors.debian)
        (self.root / "updated").write_text("")

    monkeypatch.setattr(SuiteIndex, "_update", update)
    item = index(tmp_path)
    item.ensure()
    item.ensure()
    assert len(updates) == 1  # fresh: asked once
    item.ensure(refresh=True)
    assert len(updates) == 2
    old = time.time() - 7 * 3600
    os.utime(item.root / "updated", (old, old))
    item.ensure()
    assert len(updates) == 3
    moved = index(tmp_path, mirrors=Mirrors("http://elsewhere.example/debian",
                                            MIRRORS.security))
    moved.ensure()
    assert updates[-1] == "http://elsewhere.example/debian"


def test_a_missing_keyring_names_the_package(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv(suites.KEYRING_ENV, str(tmp_path / "none.gpg"))
    with pytest.raises(FetchError, match="install the debian-archive-keyring package"):
        suites.keyring()


@pytest.mark.kernel
def test_each_release_resolves_its_own_kernels(tmp_path: Path) -> None:
    """Debian 12 serves 6.1 and its own 6.12 (+deb12); Debian 13 only its 6.12 (+deb13)."""
    found = {}
    for release in (BOOKWORM, TRIXIE):
        item = SuiteIndex.in_cache(tmp_path, release)
        item.ensure()
        names = item.apt_cache("pkgnames", "linux-image-6.").split()
        found[release.number] = {n for n in names if n.endswith("-cloud-amd64")}
        madison = item.apt_cache("madison", "linux-source-6.12")
        assert f"{release.codename}-security" in madison
    assert any(n.startswith("linux-image-6.1.0-") for n in found["12"])
    assert not any(n.startswith("linux-image-6.1.0-") for n in found["13"])
    assert all("+deb13" in n for n in found["13"] if n.startswith("linux-image-6.12."))
    assert all("+deb12" in n for n in found["12"] if n.startswith("linux-image-6.12."))


@pytest.mark.kernel
def test_an_index_whose_signature_does_not_verify_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A keyring that is not Debian's: a key of our own.
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"kpb-gpg-{os.getpid()}"
    home.mkdir(mode=0o700)
    import subprocess
    try:
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                        "--quick-gen-key", "not debian <x@example.org>", "ed25519", "sign",
                        "1d"], check=True, capture_output=True)
        other = tmp_path / "other.gpg"
        other.write_bytes(subprocess.run(["gpg", "--homedir", str(home), "--export"],
                                         check=True, capture_output=True).stdout)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"])
        subprocess.run(["rm", "-rf", str(home)])
    monkeypatch.setenv(suites.KEYRING_ENV, str(other))
    item = SuiteIndex.in_cache(tmp_path, BOOKWORM)
    with pytest.raises(FetchError) as refused:
        item.ensure()
    assert "apt-get update of Debian 12 (bookworm)'s index" in refused.value.message
    assert "NO_PUBKEY" in refused.value.message or "not signed" in refused.value.message
    assert item.updated_at() is None


def test_the_private_state_goes_on_every_apt_command_line(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """apt reads the host's apt.conf.d after APT_CONFIG (a container's `Dir::Cache::pkgcache
    ""` would win there), nothing after its command line; paths are absolute, as apt reads
    relative ones against /etc/apt."""
    monkeypatch.chdir(tmp_path)
    item = SuiteIndex(Path("relative") / "bookworm", BOOKWORM, MIRRORS,
                      Path("/usr/share/keyrings/debian-archive-keyring.gpg"))
    argv = item.apt("apt-cache", "show", "x")
    assert argv[0] == "apt-cache" and argv[-2:] == ["show", "x"]
    options = dict(a[2:].split("=", 1) for a in argv[1:-2])
    assert options["Dir::Cache::pkgcache"] == str(tmp_path / "relative/bookworm/cache/pkgcache.bin")
    assert options["Dir::State::lists"] == str(tmp_path / "relative/bookworm/lists")
    assert options["APT::Architectures::"] == "amd64"
    assert 'APT::Architectures { "amd64"; };' in item.config_text()


def test_a_host_without_apt_runs_it_in_the_apt_root(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The apt root is asked for where the host has no apt-get (or by the setting), and apt
    runs there with the same private state, the index's directory and the download's at the
    same paths."""
    monkeypatch.setenv(suites.APT_ROOT_ENV, "1")
    assert not suites.host_runs_apt()
    monkeypatch.delenv(suites.APT_ROOT_ENV)
    monkeypatch.setattr(suites.shutil, "which", lambda tool: None)
    assert not suites.host_runs_apt()
    monkeypatch.setattr(suites.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert suites.host_runs_apt()

    root = suites.AptRoot(tmp_path, MIRRORS, suites.DEFAULT_KEYRING)
    root._root = Path("/store/fetch-aptroot/k/root")
    apt = SuiteIndex(tmp_path / "fetch-index/bookworm", BOOKWORM, MIRRORS,
                     suites.DEFAULT_KEYRING, root)
    downloads = tmp_path / "debs"
    argv = apt.apt("apt-get", "download", "hello")
    command = root.command(argv, environment=apt.environment, cwd=downloads,
                           binds=[apt.root, downloads])
    assert command[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    at = command.index("/store/fetch-aptroot/k/root")
    assert command[at + 1:at + 3] == [str(downloads), "1"]  # in the download dir, networked
    assert set(command[at + 3:command.index("--", at)]) == {str(apt.root), str(downloads)}
    assert command[command.index("--", at) + 1:][:2] == ["env", f"APT_CONFIG={apt.config}"]
    assert command[-len(argv):] == argv


@pytest.mark.kernel
def test_the_apt_root_reads_and_downloads_as_the_host_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host without apt: Debian 13's index refreshed, queried and a package downloaded
    through the apt root (debootstrapped once into the store), checked against the index."""
    from kpatchbuild.base.store import Store, sha256_file
    from kpatchbuild.stages.fetch import debian

    monkeypatch.setenv(suites.APT_ROOT_ENV, "1")
    store = Store(tmp_path / "cache")
    trixie = SuiteIndex.in_cache(store.root, TRIXIE)
    assert trixie.apt_root is not None
    trixie.ensure()
    assert (store.root / suites.APT_ROOT_KIND).is_dir()
    assert "Candidate: 14." in trixie.apt_cache("policy", "gcc-14")
    record = debian.package_record(trixie, "hello", debian.newest(
        debian.available_versions(trixie, ["hello"])["hello"]))
    downloads = tmp_path / "debs"
    downloads.mkdir()
    trixie.download(record.spec, downloads)
    (deb,) = downloads.glob("hello_*.deb")
    assert sha256_file(deb) == record.sha256
