"""Debian's releases, each read through an apt index of its own.

A Debian target belongs to one Debian release (12 "bookworm", 13 "trixie"), and its kernel
is resolved and fetched against the index of that release's suites (the release, its
-updates and its -security), never against the host's apt lists: the same target means the
same kernel on every host, and a Debian 13 host targets Debian 12 as well as the other way
round.

Each index is apt's own, with a private state: an ``APT_CONFIG`` file naming its sources
(``Signed-By`` Debian's archive keyring, so apt verifies the Release signatures as it does
for the host), its lists, an empty status and its cache, all under
``<cache>/fetch-index/<codename>/``. apt reads the host's ``apt.conf.d`` first (proxies,
retries) and this file after it, so the host's network settings apply while its sources,
pins and state do not. ``apt-get update`` refreshes an index when it is older than
:data:`MAX_AGE_HOURS` hours, or when asked (``refresh``); apt replaces each list file by a
rename, so an interrupted refresh leaves the previous index whole.

The mirror is the one the host's apt sources name for Debian (and for its security
archive), or ``$KPATCHBUILD_DEBIAN_MIRROR`` / ``$KPATCHBUILD_DEBIAN_SECURITY_MIRROR``.

A host without apt (Fedora, Arch) runs apt in the **apt root**: a ``debootstrap
--variant=minbase`` of Debian 12, made once in the store (kind ``fetch-aptroot``, about
200 MB), entered as :mod:`kpatchbuild.base.roots` says with the index's directory (and the
download's) at the same path: the same apt, the same private state, the same signature
checks. ``$KPATCHBUILD_APT_ROOT=1`` asks for it on a host that has apt too.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpatchbuild.base import locks, process, roots
from kpatchbuild.base.commands import say
from kpatchbuild.base.errors import FetchError
from kpatchbuild.base.roots import entering_command
from kpatchbuild.base.store import Store, content_key, write_atomically

INDEX_KIND = "fetch-index"
MAX_AGE_HOURS = 6.0
MIRROR_ENV = "KPATCHBUILD_DEBIAN_MIRROR"
SECURITY_MIRROR_ENV = "KPATCHBUILD_DEBIAN_SECURITY_MIRROR"
KEYRING_ENV = "KPATCHBUILD_DEBIAN_KEYRING"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
HOST_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
APT_ROOT_ENV = "KPATCHBUILD_APT_ROOT"
APT_ROOT_KIND = "fetch-aptroot"
APT_ROOT_FORMAT = 1
APT_ROOT_SUITE = "bookworm"


@dataclass(frozen=True)
class DebianRelease:
    """A Debian release: its number, as recipes and target names say it, and its codename,
    as its archive's suites are named."""

    number: str
    codename: str
    compiler: str  # its default gcc's package: what kernels built here by default use

    @property
    def suites(self) -> tuple[str, str]:
        """The archive's suites of the release and of its point updates."""
        return self.codename, f"{self.codename}-updates"

    @property
    def security_suite(self) -> str:
        return f"{self.codename}-security"

    @property
    def label(self) -> str:
        return f"Debian {self.number} ({self.codename})"


RELEASES = {release.number: release for release in (DebianRelease("12", "bookworm", "gcc-12"),
                                                    DebianRelease("13", "trixie", "gcc-14"))}


def debian_release(number: str, what: str) -> DebianRelease:
    """The release numbered ``number``; a one-line refusal naming those kpatchbuild knows."""
    try:
        return RELEASES[number]
    except KeyError:
        known = ", ".join(f"{r.number} ({r.codename})" for r in RELEASES.values())
        raise FetchError(f"{what}: Debian {number} is not a release kpatchbuild knows "
                         f"(known: {known})") from None


@dataclass(frozen=True)
class Mirrors:
    """Where Debian's archive and its security archive are fetched from."""

    debian: str
    security: str

    @classmethod
    def from_host(cls, sources: Iterable[Path] = HOST_SOURCES) -> Mirrors:
        """The environment's mirrors, else those the host's apt sources name for Debian,
        else Debian's own."""
        named = _host_uris(sources)
        debian = os.environ.get(MIRROR_ENV) or next(
            (uri for uri in named if uri.rstrip("/").endswith("/debian")), DEFAULT_MIRROR)
        security = os.environ.get(SECURITY_MIRROR_ENV) or next(
            (uri for uri in named if uri.rstrip("/").endswith("/debian-security")),
            DEFAULT_SECURITY_MIRROR)
        return cls(debian.rstrip("/"), security.rstrip("/"))


def _host_uris(sources: Iterable[Path]) -> list[str]:
    """The archive URIs of the host's apt sources, one-line (``.list``) and deb822
    (``.sources``) alike, in the order apt reads them."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix in (".list", ".sources"))
        elif source.is_file():
            files.append(source)
    uris: list[str] = []
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            uris += [uri for line in re.findall(r"^URIs:\s*(.+)$", text, re.MULTILINE)
                     for uri in line.split()]
        else:
            uris += re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.MULTILINE)
    return [uri for uri in uris if uri.startswith(("http://", "https://", "file:"))]


def keyring() -> Path:
    """Debian's archive keyring, which every index's Release signature is checked with."""
    path = Path(os.environ.get(KEYRING_ENV) or DEFAULT_KEYRING)
    if not path.is_file():
        raise FetchError(f"{path}: Debian's archive keyring is missing: install the "
                         f"debian-archive-keyring package, or point ${KEYRING_ENV} at it")
    return path


def host_runs_apt() -> bool:
    """Whether apt runs on the host (else in the apt root)."""
    return os.environ.get(APT_ROOT_ENV, "") != "1" and all(
        shutil.which(tool) for tool in ("apt-get", "apt-cache"))


class AptRoot:
    """A Debian root where apt runs for a host that has none; made on first use."""

    def __init__(self, store_root: Path, mirrors: Mirrors, keyring_path: Path) -> None:
        self.store = Store(store_root)
        self.mirrors = mirrors
        self.keyring = keyring_path
        self._root: Path | None = None

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = self._made() / "root"
        return self._root

    def command(self, argv: Sequence[str], *, environment: dict[str, str],
                cwd: Path | None, binds: Sequence[Path]) -> list[str]:
        """``argv`` with ``environment`` in the apt root, ``binds`` at the same paths."""
        keyring_dir = [self.keyring.parent] if self.keyring != DEFAULT_KEYRING else []
        return entering_command(
            self.root, ["env", *(f"{k}={v}" for k, v in environment.items()), *argv],
            cwd=cwd, binds=[*binds, *keyring_dir], network=True)

    def _made(self) -> Path:
        key = content_key(APT_ROOT_KIND, APT_ROOT_FORMAT, APT_ROOT_SUITE, self.mirrors.debian)
        found = self.store.lookup(APT_ROOT_KIND, key)
        if found is not None:
            return found.path
        if shutil.which("debootstrap") is None:
            raise FetchError("this host has no apt, and the apt root that reads Debian's "
                             "indexes in its place needs debootstrap: install it")
        manifest: dict[str, Any] = {"suite": APT_ROOT_SUITE, "mirror": self.mirrors.debian}
        return self.store.make(APT_ROOT_KIND, key, manifest, self._debootstrap).path

    def _debootstrap(self, work: Path) -> None:
        log = self.store.log_path("fetch-aptroot")
        log.unlink(missing_ok=True)
        say(f"  this host has no apt: making the apt root that reads Debian's indexes "
            f"(debootstrap {APT_ROOT_SUITE}, under a minute, once); log: {log}")
        status = roots.debootstrap(work / "root", APT_ROOT_SUITE, self.mirrors.debian,
                                   log=log, keyring=self.keyring)
        if status != 0:
            raise FetchError(f"the apt root: debootstrap of {APT_ROOT_SUITE} from "
                             f"{self.mirrors.debian} failed (exit {status}); log: {log}")


class SuiteIndex:
    """apt's index of one Debian release, with a state of its own under ``root``; apt runs on
    the host, or in ``apt_root`` (a host without apt)."""

    def __init__(self, root: Path, release: DebianRelease, mirrors: Mirrors,
                 keyring_path: Path, apt_root: AptRoot | None = None) -> None:
        self.root = root.absolute()  # apt reads relative Dir:: settings against /etc/apt
        self.release = release
        self.mirrors = mirrors
        self.keyring = keyring_path
        self.apt_root = apt_root
        self.config = self.root / "apt.conf"
        self.lists = self.root / "lists"

    @classmethod
    def in_cache(cls, cache_root: Path, release: DebianRelease) -> SuiteIndex:
        mirrors, keyring_path = Mirrors.from_host(), keyring()
        apt_root = None if host_runs_apt() else AptRoot(cache_root, mirrors, keyring_path)
        return cls(cache_root / INDEX_KIND / release.codename, release, mirrors,
                   keyring_path, apt_root)

    # --- the private state ---

    def sources_text(self) -> str:
        """The release's suites, deb822, each signed by Debian's archive keyring."""
        stanza = ("Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\n"
                  f"Architectures: amd64\nSigned-By: {self.keyring}\n")
        return "\n".join((stanza.format(uri=self.mirrors.debian,
                                        suites=" ".join(self.release.suites)),
                          stanza.format(uri=self.mirrors.security,
                                        suites=self.release.security_suite)))

    def settings(self) -> dict[str, str]:
        """The private state's settings. They go on every apt command line as well as in
        the APT_CONFIG file: apt reads the host's apt.conf.d after that file (so a
        container's ``Dir::Cache::pkgcache ""`` would turn the binary cache off again, and
        each query would read the whole index: 0.6 s instead of 0.2), but nothing after
        its command line."""
        root = self.root
        values: dict[str, object] = {
            "Dir::Etc::sourcelist": root / "sources.list",
            "Dir::Etc::sourceparts": root / "sources.list.d",
            "Dir::Etc::preferences": root / "preferences",
            "Dir::Etc::preferencesparts": root / "preferences.d",
            "Dir::State": root / "state",
            "Dir::State::lists": self.lists,
            "Dir::State::status": root / "status",
            "Dir::Cache": root / "cache",
            "Dir::Cache::archives": root / "cache/archives",
            # Containers turn the binary cache off; ours makes each query 0.2 s, not 1 s.
            "Dir::Cache::pkgcache": root / "cache/pkgcache.bin",
            "Dir::Cache::srcpkgcache": root / "cache/srcpkgcache.bin",
            "APT::Architecture": "amd64",
            "APT::Architectures::": "amd64",  # the list holding only amd64
            "Acquire::Languages": "none",
            # apt would hand downloads to _apt, who cannot enter the private cache (0700):
            # it then warns and downloads as root anyway.
            **({"APT::Sandbox::User": "root"} if os.geteuid() == 0 else {}),
        }
        return {key: str(value) for key, value in values.items()}

    def config_text(self) -> str:
        return "".join(f'{key} "{value}";\n' if not key.endswith("::") else
                       f'{key[:-2]} {{ "{value}"; }};\n'
                       for key, value in self.settings().items())

    def apt(self, tool: str, *arguments: str) -> list[str]:
        """``tool`` (apt-get, apt-cache) on this index, its state on the command line."""
        options = [f"-o{key}={value}" for key, value in self.settings().items()]
        return [tool, *options, *arguments]

    def _run(self, tool: str, *arguments: str, cwd: Path | None = None,
             **checks: Any) -> Any:
        """``tool`` on this index, on the host or in the apt root (seeing the index and
        ``cwd``)."""
        argv = self.apt(tool, *arguments)
        if self.apt_root is None:
            return process.run(argv, env=self.environment, cwd=cwd, error=FetchError,
                               missing=f"{tool} not found: Debian targets need apt (or, on a "
                                       "host without it, debootstrap for the apt root)",
                               **checks)
        entered = self.apt_root.command(argv, environment=self.environment, cwd=cwd,
                                        binds=[self.root, *([cwd] if cwd else [])])
        return process.run(entered, cwd=cwd, error=FetchError, **checks)

    def _prepare(self) -> None:
        for directory in ("sources.list.d", "preferences.d", "state", "lists/partial",
                          "cache/archives/partial"):
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        for name, text in (("sources.list", ""), ("preferences", ""), ("status", ""),
                           ("sources.list.d/debian.sources", self.sources_text()),
                           ("apt.conf", self.config_text())):
            path = self.root / name
            if not path.is_file() or path.read_text() != text:
                write_atomically(path, text)

    @property
    def environment(self) -> dict[str, str]:
        return {"APT_CONFIG": str(self.config)}

    # --- freshness ---

    def updated_at(self) -> float | None:
        """When apt last completed a refresh (the time it wrote the lists' stamp)."""
        try:
            return (self.root / "updated").stat().st_mtime
        except FileNotFoundError:
            return None

    @property
    def stamp(self) -> str:
        """Changes whenever the index does: answers read from it are kept under it."""
        updated = self.updated_at()
        return f"{self.release.codename}:{updated or 0}:{self.mirrors.debian}"

    def ensure(self, *, refresh: bool = False, max_age_hours: float = MAX_AGE_HOURS) -> None:
        """The index present and fresh: refreshed when asked, when it is older than
        ``max_age_hours``, or when the sources changed (another mirror, another keyring)."""
        with locks.exclusive(self.root.parent / f".{self.release.codename}.lock"):
            self.root.mkdir(parents=True, exist_ok=True)
            changed = not self.config.is_file() or \
                (self.root / "sources.list.d/debian.sources").read_text() != self.sources_text()
            self._prepare()
            updated = self.updated_at()
            stale = updated is None or time.time() - updated > max_age_hours * 3600
            if refresh or stale or changed:
                self._update()

    def _update(self) -> None:
        say(f"  refreshing the index of {self.release.label} from {self.mirrors.debian} "
            f"and {self.mirrors.security}")
        result = self._run("apt-get", "-q", "update", check=False)
        complaints = [line for line in (result.stdout + result.stderr).splitlines()
                      if line.startswith(("E:", "W:", "Err:"))]
        if result.returncode != 0 or complaints:
            shown = " | ".join(complaints[-3:]) or process.last_complaint(result)
            raise FetchError(f"apt-get update of {self.release.label}'s index "
                             f"({self.root}) failed: {shown}; check the mirror "
                             f"(${MIRROR_ENV}) and the network, then retry")
        write_atomically(self.root / "updated", f"{time.time()}\n")

    # --- queries ---

    def apt_cache(self, *arguments: str) -> str:
        """apt-cache on this index; its status is not read: a name the index does not know
        is an empty answer."""
        return str(self._run("apt-cache", *arguments, check=False).stdout)

    def download(self, spec: str, directory: Path) -> None:
        """``apt-get download NAME=VERSION`` from this index into ``directory``."""
        self._run("apt-get", "-q", "download", spec, cwd=directory,
                  what=f"apt-get download {spec} ({self.release.label})")
