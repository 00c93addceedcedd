"""The local apt repository the packages are published in, and the versions they get.

Layout (a flat repository: ``deb [trusted=yes] file:/path/to/cache/package ./``):

    pool/<package>_<version>_<arch>.deb   every version published (apt takes the newest)
    Packages, Packages.gz, Release        written by apt-ftparchive, renamed into place
    InRelease, Release.gpg                when $KPATCHBUILD_SIGNING_KEY names a gpg key
    versions.json                         per package: its version, content and modules

A package's version is ``<base>+<UTC timestamp>``: the base is the recipe's ``version``
(the project's own for ``kpatch``), the timestamp the moment its content first appeared.
The same content keeps its version (and its ``.deb``, byte for byte); new content gets a
newer timestamp, so apt sees every update and a version never goes backwards, even from a
new cache (the clock moved on). A lower base than the published one is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kpatchbuild.base import locks, process
from kpatchbuild.base.errors import BuildError, RecipeError
from kpatchbuild.base.store import content_key, write_atomically
from kpatchbuild.stages.package import deb
from kpatchbuild.stages.package.deb import DebSpec

SIGNING_KEY_ENV = "KPATCHBUILD_SIGNING_KEY"
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

    def write_index(self) -> list[Path]:
        """Packages, Packages.gz and Release for the whole pool; signed when a key is named."""
        with locks.exclusive(self.root / ".lock"):
            packages = self._ftparchive(["packages", "pool"])
            self._replace("Packages", packages.encode())
            self._replace("Packages.gz", deb.gzip_n(packages.encode()))
            release = self._ftparchive([
                "-o", "APT::FTPArchive::Release::Origin=kpatchbuild",
                "-o", "APT::FTPArchive::Release::Label=kpatchbuild",
                "-o", "APT::FTPArchive::Release::Suite=kpatchbuild",
                "-o", "APT::FTPArchive::Release::Architectures=amd64 all",
                "release", "."], only=("Packages", "Packages.gz"))
            self._replace("Release", release.encode())
            written = [self.root / name for name in ("Packages", "Packages.gz", "Release")]
            key = os.environ.get(SIGNING_KEY_ENV)
            if key:
                written += self._sign(key)
            else:
                for name in ("InRelease", "Release.gpg"):
                    (self.root / name).unlink(missing_ok=True)
        return written

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

    def _sign(self, key: str) -> list[Path]:
        release = self.root / "Release"
        outputs = []
        for name, mode in (("InRelease", "--clearsign"), ("Release.gpg", "--detach-sign")):
            temporary = self.root / f".{name}.tmp"
            process.run(["gpg", "--batch", "--yes", "--armor", "--local-user", key, mode,
                         "--output", temporary, release], error=BuildError,
                        what=f"gpg {mode} with key {key}",
                        hint=f"${SIGNING_KEY_ENV} must name a secret key in gpg's keyring "
                             "(unset it for an unsigned repository)")
            os.replace(temporary, self.root / name)
            outputs.append(self.root / name)
        return outputs


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
