"""The local apt repository the packages are published in, and the versions they get.

Layout (a flat repository: ``deb [signed-by=/usr/share/keyrings/kpatchbuild-archive-keyring.gpg]
file:/path/to/cache/package/bookworm ./``; one per Debian release):

    pool/<package>_<version>_<arch>.deb   every version published (apt takes the newest)
    Packages, Packages.gz, Release        written by apt-ftparchive, renamed into place
    InRelease, Release.gpg                the Release signed (not with ``unsigned=1``)
    kpatchbuild-archive-keyring.gpg       the signing key's public half, for ``signed-by=``
    versions.json                         per package: its version, content and modules

The key is ``$KPATCHBUILD_SIGNING_KEY`` (a secret key in the user's gpg keyring) or else
kpatchbuild's own, made on first use in a GNUPGHOME of its own outside the cache (which is
thrown away and rebuilt; the key must outlive it, or every machine would need a new one).
The Release is valid for ``$KPATCHBUILD_REPOSITORY_VALID_DAYS`` (90) days, so a machine
cannot be held on an old index, with the fixes that came after kept from it, for longer.

A package's version is ``<base>+<UTC timestamp>``: the base is the recipe's ``version``
(the project's own for ``kpatch``), the timestamp the moment its content first appeared.
The same content keeps its version (and its ``.deb``, byte for byte); new content gets a
newer timestamp, so apt sees every update and a version never goes backwards, even from a
new cache (the clock moved on). A lower base than the published one is refused.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from kpatchbuild.base import locks, process
from kpatchbuild.base.errors import BuildError, RecipeError
from kpatchbuild.base.private import data_home, private_directory
from kpatchbuild.base.store import content_key, write_atomically
from kpatchbuild.stages.package import deb
from kpatchbuild.stages.package.deb import DebSpec

SIGNING_KEY_ENV = "KPATCHBUILD_SIGNING_KEY"
KEY_HOME_ENV = "KPATCHBUILD_REPOSITORY_KEY_HOME"
VALID_DAYS_ENV = "KPATCHBUILD_REPOSITORY_VALID_DAYS"
VALID_DAYS = 90
KEYRING = "kpatchbuild-archive-keyring.gpg"
INSTALLED_KEYRING = f"/usr/share/keyrings/{KEYRING}"
SIGNATURES = ("InRelease", "Release.gpg")
SOCKET_PATH_MAX = 107  # sockaddr_un's sun_path, less its NUL
STAMP = "%Y%m%d%H%M%S"


@dataclass(frozen=True)
class Published:
    package: str
    version: str
    deb: Path
    new: bool  # built now (False: the same content was published before)


def version_newer(left: str, right: str) -> bool:
    """dpkg's own ordering: ``left`` > ``right``."""
    return process.run(["dpkg", "--compare-versions", left, "gt", right], check=False,
                       error=BuildError).returncode == 0


def key_home() -> Path:
    """Where kpatchbuild's own signing key lives: ``$KPATCHBUILD_REPOSITORY_KEY_HOME``, else
    ``${XDG_DATA_HOME:-$HOME/.local/share}/kpatchbuild/repository-key``."""
    if os.environ.get(KEY_HOME_ENV):
        return Path(os.environ[KEY_HOME_ENV]).expanduser()
    return data_home("repository-key")


def valid_days() -> int:
    """How many days a Release is valid for: ``$KPATCHBUILD_REPOSITORY_VALID_DAYS``, else 90."""
    value = os.environ.get(VALID_DAYS_ENV, "").strip()
    if not value:
        return VALID_DAYS
    if not value.isdigit() or int(value) < 1:
        raise BuildError(f"${VALID_DAYS_ENV}={value!r}: expected a whole number of days, "
                         f"at least 1 (unset it for {VALID_DAYS})")
    return int(value)


@dataclass(frozen=True)
class SigningKey:
    """A secret key gpg signs with: in ``homedir`` (kpatchbuild's own) or, when ``homedir``
    is None, in the user's keyring."""

    fingerprint: str
    homedir: Path | None = None

    def gpg(self, *arguments: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
        home: list[str | os.PathLike[str]] = \
            ["--homedir", self.homedir] if self.homedir else []
        return ["gpg", *home, "--batch", *arguments]

    @property
    def hint(self) -> str:
        if self.homedir is None:
            return (f"${SIGNING_KEY_ENV} must name a secret key in gpg's keyring (unset it "
                    "for kpatchbuild's own key)")
        return (f"kpatchbuild's repository key in {self.homedir}: check it with gpg --homedir "
                f"{self.homedir} --list-secret-keys (or point ${KEY_HOME_ENV} elsewhere)")

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """The key for the block; kpatchbuild's own leaves no gpg-agent behind."""
        try:
            yield
        finally:
            if self.homedir is not None:
                _stop_agent(self.homedir)


def signing_key() -> SigningKey:
    """``$KPATCHBUILD_SIGNING_KEY`` when set, else kpatchbuild's own (made on first use)."""
    named = os.environ.get(SIGNING_KEY_ENV, "").strip()
    if named:
        found = _secret_keys(["gpg", "--batch"], named)
        if not found:
            raise BuildError(f"${SIGNING_KEY_ENV}={named!r} names no secret key in gpg's "
                             f"keyring (gpg --list-secret-keys {named}); import it, or unset "
                             "it for kpatchbuild's own key")
        if len(found) > 1:
            raise BuildError(f"${SIGNING_KEY_ENV}={named!r} names {len(found)} secret keys "
                             f"({', '.join(found)}); give the fingerprint of one")
        return SigningKey(found[0])
    home = private_directory(key_home(), what="the repository key home", error=BuildError,
                             remedy=f"point ${KEY_HOME_ENV} at a directory of your own")
    _check_agent_socket(home)
    gpg: list[str | os.PathLike[str]] = ["gpg", "--homedir", home, "--batch"]
    # Two first runs at once must not make two keys.
    with locks.exclusive(home / "kpatchbuild.lock"):
        try:
            found = _secret_keys(gpg, None)
            if not found:
                process.run([*gpg, "--passphrase", "", "--quick-gen-key", _key_user_id(),
                             # No expiry: whoever stole the key could extend it anyway, and
                             # an expired key would stop every machine's apt at once;
                             # freshness is the Release's Valid-Until's to give.
                             "ed25519", "sign", "never"], error=BuildError,
                            what=f"making the repository key in {home}",
                            missing="gpg not found: install gnupg")
                found = _secret_keys(gpg, None)
        finally:
            _stop_agent(home)
        if len(found) != 1:
            raise BuildError(f"{home}: holds {len(found)} secret keys, kpatchbuild's repository "
                             f"key home must hold one (gpg --homedir {home} "
                             "--list-secret-keys); remove the others, or point "
                             f"${KEY_HOME_ENV} elsewhere")
    return SigningKey(found[0], home)


def _check_agent_socket(home: Path) -> None:
    """gpg-agent's socket must fit a unix socket address; else gpg says only "No agent
    running"."""
    socket_path = process.run(["gpgconf", "--homedir", home, "--list-dirs", "agent-socket"],
                              check=False, missing="gpgconf not found: install gnupg")
    path = str(socket_path.stdout).strip()
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:
        raise BuildError(f"{home}: gpg-agent's socket there, {path}, is too long for a unix "
                         f"socket ({len(os.fsencode(path))} bytes, at most {SOCKET_PATH_MAX}); "
                         f"point ${KEY_HOME_ENV} at a shorter path")


def _stop_agent(home: Path) -> None:
    """gpg starts an agent per home for any secret key operation; one for kpatchbuild's own
    home would outlive the run (and, in tests, the home)."""
    process.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], check=False,
                missing="gpgconf not found: install gnupg")


def _key_user_id() -> str:
    email = os.environ.get("DEBEMAIL") or f"kpatchbuild@{socket.gethostname()}"
    return f"kpatchbuild repository <{email}>"


def _secret_keys(gpg: Sequence[str | os.PathLike[str]], name: str | None) -> list[str]:
    """The fingerprints of the usable secret keys (matching ``name``, when given)."""
    result = process.run([*gpg, "--with-colons", "--list-secret-keys",
                          *([name] if name else [])], check=False,
                         missing="gpg not found: install gnupg")
    found, primary = [], False
    for line in str(result.stdout).splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            # Expired, revoked or disabled keys cannot sign: as if they were not there.
            primary = fields[1] not in ("e", "r", "d", "i")
        elif fields[0] == "fpr" and primary:
            found.append(fields[9])
            primary = False
    return found


@dataclass(frozen=True)
class Index:
    """What :meth:`Repository.write_index` wrote."""

    files: list[Path]
    valid_until: datetime
    key: SigningKey | None  # None: unsigned
    keyring: Path | None


class Repository:
    """A flat apt repository under ``root``, with the state that keeps versions rising."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pool = root / "pool"
        self.state_file = root / "versions.json"

    def _state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
            return data
        except FileNotFoundError:
            return {}

    def publish(self, package: str, base: str, content: object,
                make: Callable[[str, datetime], DebSpec],
                modules: dict[str, tuple[str, str]] | None = None,
                now: datetime | None = None) -> Published:
        """The package of ``content`` in the pool, built by ``make(version, date)`` unless
        the same content was published before; ``modules`` (release -> module name, sha256)
        are checked against the published ones."""
        key = content_key(content)
        with locks.exclusive(self.root / ".lock"):
            state = self._state()
            before = state.get(package)
            if before and before["content"] == key and before["base"] == base:
                existing = self.pool / before["file"]
                if existing.is_file():
                    return Published(package, before["version"], existing, False)
            if before:
                _check_rising(package, base, before)
                _check_module_names(package, modules or {}, before.get("modules", {}))
            date = (now or datetime.now(UTC)).replace(microsecond=0)
            stamp = int(date.strftime(STAMP))
            if before and before["base"] == base and stamp <= before["stamp"]:
                stamp = before["stamp"] + 1
            version = f"{base}+{stamp}"
            spec = make(version, date)
            built = deb.build(spec, self.pool)
            state[package] = {"version": version, "base": base, "stamp": stamp,
                              "content": key, "file": built.name, "modules": modules or {}}
            write_atomically(self.state_file, json.dumps(state, indent=2, sort_keys=True))
        return Published(package, version, built, True)

    def write_index(self, *, signed: bool = True) -> Index:
        """Packages, Packages.gz and Release for the whole pool, the Release valid for
        :func:`valid_days`; signed, with the key's keyring beside it, unless ``signed`` is
        off (then no signature or keyring is left behind)."""
        days = valid_days()
        key = signing_key() if signed else None
        with locks.exclusive(self.root / ".lock"):
            packages = self._ftparchive(["packages", "pool"])
            self._replace("Packages", packages.encode())
            self._replace("Packages.gz", deb.gzip_n(packages.encode()))
            release = self._ftparchive([
                "-o", "APT::FTPArchive::Release::Origin=kpatchbuild",
                "-o", "APT::FTPArchive::Release::Label=kpatchbuild",
                "-o", "APT::FTPArchive::Release::Suite=kpatchbuild",
                "-o", "APT::FTPArchive::Release::Architectures=amd64 all",
                "-o", f"APT::FTPArchive::Release::ValidTime={days * 86400}",
                "release", "."], only=("Packages", "Packages.gz"))
            self._replace("Release", release.encode())
            written = [self.root / name for name in ("Packages", "Packages.gz", "Release")]
            keyring = None
            if key is not None:
                with key.in_use():
                    written += self._sign(key)
                    keyring = self._export(key)
                written.append(keyring)
            else:
                # Old signatures would not match the new Release: apt would reject it.
                for name in (*SIGNATURES, KEYRING):
                    (self.root / name).unlink(missing_ok=True)
        _, valid_until = _release_dates(release)
        if valid_until is None:
            raise BuildError(f"{self.root / 'Release'}: apt-ftparchive wrote no Valid-Until; "
                             "install apt-utils 1.1 or later")
        return Index(written, valid_until, key, keyring)

    def index_files(self, *, signed: bool = True) -> list[Path]:
        """The files :meth:`write_index` leaves in the repository."""
        names = ["Packages", "Packages.gz", "Release"]
        return [self.root / name for name in
                (*names, *SIGNATURES, KEYRING) if signed or name in names]

    def index_fresh(self, *, signed: bool = True, now: datetime | None = None) -> bool:
        """Whether the index as written is still good: all of it there (and no signature
        when unsigned), and at least half of the Release's validity left, so that a machine
        updating from it now and then never sees it expire."""
        if not all(path.is_file() for path in self.index_files(signed=signed)):
            return False
        if not signed and any((self.root / name).exists() for name in (*SIGNATURES, KEYRING)):
            return False
        try:
            date, valid_until = _release_dates((self.root / "Release").read_text())
        except (OSError, ValueError):
            return False
        if date is None or valid_until is None:
            return False
        return valid_until - (now or datetime.now(UTC)) >= (valid_until - date) / 2

    def _ftparchive(self, arguments: list[str], only: tuple[str, ...] = ()) -> str:
        if only:  # apt-ftparchive release hashes every file it finds: give it just these
            view = self.root / ".release-view"
            if view.exists():
                for path in view.iterdir():
                    path.unlink()
            view.mkdir(exist_ok=True)
            for name in only:
                os.link(self.root / name, view / name)
            cwd = view
        else:
            cwd = self.root
        result = process.run(["apt-ftparchive", *arguments], cwd=cwd, error=BuildError,
                             what=f"apt-ftparchive {arguments[-2]}",
                             missing="apt-ftparchive not found: install apt-utils (the "
                                     "README's set-up does)")
        return str(result.stdout)

    def _replace(self, name: str, data: bytes) -> None:
        temporary = self.root / f".{name}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, self.root / name)

    def _sign(self, key: SigningKey) -> list[Path]:
        release = self.root / "Release"
        outputs = []
        for name, mode in (("InRelease", "--clearsign"), ("Release.gpg", "--detach-sign")):
            temporary = self.root / f".{name}.tmp"
            process.run(key.gpg("--yes", "--armor", "--local-user", key.fingerprint, mode,
                                "--output", temporary, release), error=BuildError,
                        what=f"gpg {mode} with key {key.fingerprint}", hint=key.hint,
                        missing="gpg not found: install gnupg")
            os.replace(temporary, self.root / name)
            outputs.append(self.root / name)
        return outputs

    def _export(self, key: SigningKey) -> Path:
        """The key's public half as a binary keyring: what apt's ``signed-by=`` reads."""
        temporary = self.root / f".{KEYRING}.tmp"
        temporary.unlink(missing_ok=True)
        process.run(key.gpg("--export", "--export-options", "export-minimal", "--output",
                            temporary, key.fingerprint), error=BuildError,
                    what=f"gpg --export {key.fingerprint}", hint=key.hint,
                    missing="gpg not found: install gnupg")
        # gpg exports nothing, and says so only in a warning, for a key it does not have.
        if not temporary.is_file() or temporary.stat().st_size == 0:
            raise BuildError(f"gpg --export {key.fingerprint} wrote no key for {KEYRING}; "
                             f"{key.hint}")
        temporary.chmod(0o644)
        os.replace(temporary, self.root / KEYRING)
        return self.root / KEYRING


def _release_dates(release: str) -> tuple[datetime | None, datetime | None]:
    """A Release's Date and Valid-Until (None where it has none)."""
    fields = dict(line.split(": ", 1) for line in release.splitlines()
                  if line[:1] not in ("", " ") and ": " in line)
    date, valid_until = (fields.get(name) for name in ("Date", "Valid-Until"))
    return (parsedate_to_datetime(date) if date else None,
            parsedate_to_datetime(valid_until) if valid_until else None)


def _check_rising(package: str, base: str, before: dict[str, Any]) -> None:
    if base != before["base"] and version_newer(before["base"], base):
        raise RecipeError(f"{package}: version {base} is lower than the published "
                          f"{before['version']}: a package version never goes backwards; "
                          f"give the recipe a 'version' above {before['base']}")


def _check_module_names(package: str, modules: dict[str, tuple[str, str]],
                        before: dict[str, list[str]]) -> None:
    for release, (name, sha) in sorted(modules.items()):
        old = before.get(release)
        if old and old[0] == name and old[1] != sha:
            raise RecipeError(
                f"{package}: the module for {release} changed but keeps the name {name} of "
                "the published version: the kernel cannot replace a loaded patch by a module "
                "of its own name, so an upgrade would leave the old patch applied; raise the "
                "recipe's 'version' (its module is then named after it)")
