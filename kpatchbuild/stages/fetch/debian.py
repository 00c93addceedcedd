"""Debian's own kernels: a release resolved to its packages, fetched and unpacked only as needed.

For a release REL (``6.1.0-56-cloud-amd64``) at Debian version V (``6.1.192-2``):
- ``linux-image-REL``: ``vmlinuz-REL`` (booted for proof) and ``config-REL``;
- ``linux-image-REL-dbg``: only its ``System.map`` (the image ships a placeholder) and the
  symbol table of its ``vmlinux`` (kept in the compact form, ``vmlinux.symbols``: which
  object each local symbol comes from), the archive's first two members, so they come out
  without unpacking the rest;
- ``linux-headers-REL``: ``Module.symvers`` (Debian builds with modversions);
- ``linux-source-X.Y`` at exactly V: the code the image was built from.
Everything is resolved in, and fetched from, the index of the target's own Debian release
(:mod:`suites`: apt with a private state, never the host's lists), with ``apt-get
download`` (no root, nothing installed), verified against the sha256 that index gives, and
stored by that hash.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from kpatchbuild.base import process
from kpatchbuild.base.commands import say
from kpatchbuild.base.errors import FetchError
from kpatchbuild.base.store import (
    Artifact,
    Store,
    content_key,
    file_hash,
    sha256_file,
)
from kpatchbuild.differ.symbols import load_symbol_table, write_compact_table
from kpatchbuild.graph.recipe import DebianKernel
from kpatchbuild.stages.fetch.suites import SuiteIndex, debian_release

ROLES = ("image", "dbg", "headers", "source")
# Store kinds of the fetch stage: packages by sha256, the kernel files taken out of them, and
# the unpacked linux-source package.
DEB_KIND = "fetch-deb"
KERNEL_FILES_KIND = "fetch-kernel"
DEBIAN_SOURCE_KIND = "fetch-debian-source"
VMLINUX_SYMBOLS = "vmlinux.symbols"
REFRESH_ENV = "KPATCHBUILD_REFRESH_INDEX"
T = TypeVar("T")


@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    sha256: str
    filename: str  # the .deb's file name as apt-get download writes it
    release: str = "12"  # the Debian release whose index serves it (records before: 12)

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


@dataclass(frozen=True)
class KernelRelease:
    """A resolved Debian kernel: its release string, Debian version and four packages."""

    release: str
    version: str
    packages: dict[str, DebianPackage]

    @property
    def series(self) -> str:
        return ".".join(self.version.split(".")[:2])

    def to_json(self) -> dict:
        return {"release": self.release, "version": self.version,
                "packages": {role: asdict(p) for role, p in self.packages.items()}}

    @classmethod
    def from_json(cls, data: dict) -> KernelRelease:
        return cls(data["release"], data["version"],
                   {role: DebianPackage(**p) for role, p in data["packages"].items()})


# --- Debian version ordering (deb-version(7)), so "newest" means what dpkg means ---

def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_fragment(left: str, right: str) -> int:
    i = j = 0
    while i < len(left) or j < len(right):
        first_diff = 0
        while (i < len(left) and not left[i].isdigit()) or (
            j < len(right) and not right[j].isdigit()
        ):
            lc = _order(left[i]) if i < len(left) and not left[i].isdigit() else 0
            rc = _order(right[j]) if j < len(right) and not right[j].isdigit() else 0
            if lc != rc:
                return lc - rc
            i += 1
            j += 1
        while i < len(left) and left[i] == "0":
            i += 1
        while j < len(right) and right[j] == "0":
            j += 1
        while i < len(left) and left[i].isdigit() and j < len(right) and right[j].isdigit():
            if not first_diff:
                first_diff = ord(left[i]) - ord(right[j])
            i += 1
            j += 1
        if i < len(left) and left[i].isdigit():
            return 1
        if j < len(right) and right[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def compare_versions(left: str, right: str) -> int:
    """<0, 0, >0 as Debian orders the versions ``left`` and ``right``."""

    def split(version: str) -> tuple[int, str, str]:
        epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), upstream, revision

    le, lu, lr = split(left)
    re_, ru, rr = split(right)
    if le != re_:
        return le - re_
    return _compare_fragment(lu, ru) or _compare_fragment(lr, rr)


def newest(versions: list[str]) -> str:
    best = versions[0]
    for version in versions[1:]:
        if compare_versions(version, best) > 0:
            best = version
    return best


# --- Debian's index: the target's own release's, through apt-cache ---

_ENSURED: dict[tuple[Path, str], SuiteIndex] = {}


def index_for(store: Store, release: str) -> SuiteIndex:
    """The index of Debian ``release`` in ``store``, made or refreshed once per process when
    stale (or when ``$KPATCHBUILD_REFRESH_INDEX`` asks)."""
    key = (store.root, release)
    if key not in _ENSURED:
        index = SuiteIndex.in_cache(store.root, debian_release(release, "Debian target"))
        index.ensure(refresh=os.environ.get(REFRESH_ENV, "") not in ("", "0"))
        _ENSURED[key] = index
    return _ENSURED[key]


def available_versions(index: SuiteIndex, names: list[str]) -> dict[str, list[str]]:
    """Binary package name -> versions the index serves (madison, one call for all)."""
    found: dict[str, list[str]] = {name: [] for name in names}
    if not names:
        return found
    for line in index.apt_cache("madison", *names).splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and parts[0] in found and not parts[2].endswith("Sources"):
            if parts[1] not in found[parts[0]]:
                found[parts[0]].append(parts[1])
    return found


def package_record(index: SuiteIndex, name: str, version: str) -> DebianPackage:
    """The index's record of one package version: its sha256 and file name."""
    text = index.apt_cache("show", "--no-all-versions", f"{name}={version}")
    fields = dict(re.findall(r"^(SHA256|Filename|Architecture): (\S+)$", text, re.MULTILINE))
    if "SHA256" not in fields:
        raise FetchError(f"{index.release.label}'s index has no {name} {version}; pin a "
                         f"version it serves (set {REFRESH_ENV}=1 to read it again now)")
    arch = fields.get("Architecture", "amd64")
    epochless = version.split(":", 1)[-1].replace(":", "%3a")
    return DebianPackage(name, version, fields["SHA256"], f"{name}_{epochless}_{arch}.deb",
                         index.release.number)


def resolve_release(spec: DebianKernel, store: Store) -> KernelRelease:
    """Turn a recipe's Debian kernel into a release and its four packages.

    A series + flavour resolves to the newest release Debian serves, and the answer is
    remembered: when Debian moves on, the user is told. An exact image that Debian no longer
    serves still works if an earlier run fetched it.
    """
    memory_key = ("resolved", spec.label)
    index = index_for(store, spec.release)
    if spec.image:
        release = spec.image.removeprefix("linux-image-")
        versions = available_versions(index, [spec.image])[spec.image]
        if not versions:
            remembered = store.recall(memory_key)
            if remembered and all(_deb_path(store, KernelRelease.from_json(remembered)
                                             .packages[r]).exists() for r in ROLES):
                say(f"note: {spec.image} is no longer in Debian's index; using the copy "
                    "fetched earlier")
                return KernelRelease.from_json(remembered)
            raise FetchError(
                f"unknown Debian package {spec.image}: not in {index.release.label}'s index "
                f"({_known_images_hint(index, release)}); name a release Debian serves, or "
                "use series + flavour"
            )
        version = newest(versions)
    else:
        release, version = newest_release(spec, index)
    resolved = KernelRelease(release, version, _packages_for(index, release, version))
    previous = store.remember(memory_key, resolved.to_json())
    if previous and previous["release"] != release and not spec.image:
        say(f"note: Debian moved on: {spec.label} was {previous['release']} "
            f"({previous['version']}), now {release} ({version})")
    return resolved


def _while_index_unchanged(index: SuiteIndex, store: Store, memory: tuple[str, ...],
                           compute: Callable[[], T]) -> T:
    """``compute()``, answered from the store while the index is unchanged (apt-cache takes
    most of a second; a no-op build asks on every run whether Debian moved on)."""
    stamp = index.stamp
    known = store.recall(memory)
    if known and known[0] == stamp:
        return known[1]
    value = compute()
    store.remember(memory, (stamp, value))
    return value


def newest_release_known(spec: DebianKernel, store: Store) -> tuple[str, str]:
    """newest_release, from the store while the release's index is unchanged."""
    index = index_for(store, spec.release)
    release, version = _while_index_unchanged(index, store, ("newest-release", spec.label),
                                              lambda: newest_release(spec, index))
    return release, version


def newest_version_known(package: str, store: Store, release: str) -> str:
    """The newest version of ``package`` Debian ``release`` serves, from the store while its
    index is unchanged (a no-op build asks on every run whether an unpinned source moved)."""
    index = index_for(store, release)

    def ask() -> str:
        versions = available_versions(index, [package])[package]
        if not versions:
            raise FetchError(f"{index.release.label}'s index has no {package}")
        return newest(versions)

    return _while_index_unchanged(index, store, ("newest-version", release, package), ask)


# A release is ``<series>.<patch>[-<abi>]-<flavour>`` (``6.1.0-57-amd64``,
# ``6.12.117+deb12-cloud-amd64``): between the series and the flavour at most one
# dash-separated number, so what follows it is the whole flavour.
_AFTER_SERIES = r"\.[^-\s]+(?:-\d+)?-"
_RELEASE = re.compile(rf"^(\d+\.\d+){_AFTER_SERIES}(\S+)$")


def image_pattern(series: str, flavour: str) -> re.Pattern[str]:
    """Debian's image package names of one series and flavour, its release in group 1.

    The flavour ``amd64`` does not match ``cloud-amd64`` or ``rt-amd64`` images, and
    ``-dbg``/``-unsigned`` packages never match.
    """
    series, flavour = re.escape(series), re.escape(flavour)
    return re.compile(rf"^linux-image-({series}{_AFTER_SERIES}{flavour})$")


def newest_release(spec: DebianKernel, index: SuiteIndex) -> tuple[str, str]:
    prefix = f"linux-image-{spec.series}."
    pattern = image_pattern(spec.series or "", spec.flavour or "")
    names = [n for n in index.apt_cache("pkgnames", prefix).split() if pattern.match(n)]
    if not names:
        raise FetchError(
            f"{index.release.label}'s index has no kernel image for series {spec.series} and "
            f"flavour {spec.flavour} (no {prefix}*-{spec.flavour}); check the release, series "
            "and flavour (e.g. 12 / 6.1 / cloud-amd64)"
        )
    best_name, best_version = "", ""
    for name, versions in available_versions(index, names).items():
        for version in versions:
            if not best_version or compare_versions(version, best_version) > 0:
                best_name, best_version = name, version
    return best_name.removeprefix("linux-image-"), best_version


def _known_images_hint(index: SuiteIndex, release: str) -> str:
    parts = _RELEASE.match(release)
    if not parts:
        return "it serves none of this series"
    series, flavour = parts.groups()
    pattern = image_pattern(series, flavour)
    names = sorted(found.group(1)
                   for n in index.apt_cache("pkgnames", f"linux-image-{series}.").split()
                   if (found := pattern.match(n)))
    return f"it serves {', '.join(names)}" if names else "it serves none of this series"


_ROLE_WORDS = {"headers": "headers", "dbg": "debug symbols"}


def _packages_for(index: SuiteIndex, release: str, version: str) -> dict[str, DebianPackage]:
    series = ".".join(version.split(".")[:2])
    names = {
        "image": f"linux-image-{release}",
        "dbg": f"linux-image-{release}-dbg",
        "headers": f"linux-headers-{release}",
        "source": f"linux-source-{series}",
    }
    served = available_versions(index, list(names.values()))
    packages = {}
    gone = [role for role in ("headers", "dbg") if not served[names[role]]]
    if gone and version in served[names["image"]]:
        what = " and ".join(f"{_ROLE_WORDS[role]} ({names[role]})" for role in gone)
        raise FetchError(
            f"{release}: {index.release.label}'s index still serves its image but no longer "
            f"its {what}: Debian keeps older signed images after dropping those, which a patch "
            "needs (Module.symvers, System.map); target the series' newest release, or an "
            "image that still has them")
    for role, name in names.items():
        if version not in served[name]:
            found = ", ".join(served[name]) or "none"
            raise FetchError(
                f"{name} {version} (the image's version) is not in {index.release.label}'s "
                f"index; versions found: {found}. The source, headers and symbols must match "
                "the image exactly: pick an image release whose version these packages share"
            )
        packages[role] = package_record(index, name, version)
    return packages


# --- fetching and unpacking ---

def _deb_path(store: Store, package: DebianPackage) -> Path:
    return store.path(DEB_KIND, package.sha256) / package.filename


def fetch_package(store: Store, package: DebianPackage) -> Path:
    """The package's .deb in the store, downloaded and sha256-checked if not there yet."""
    manifest: dict[str, Any] = {"package": asdict(package)}

    def download(work: Path) -> None:
        say(f"  fetching {package.name} {package.version}")
        index_for(store, package.release).download(package.spec, work)
        deb = work / package.filename
        if not deb.is_file():
            raise FetchError(f"apt-get download {package.spec} failed: no file written")
        actual = sha256_file(deb)
        if actual != package.sha256:
            raise FetchError(f"{package.filename}: sha256 {actual} does not match Debian's "
                             f"index ({package.sha256}); retry with {REFRESH_ENV}=1")
        manifest["xxh3"] = file_hash(deb)

    return store.make(DEB_KIND, package.sha256, manifest, download).path / package.filename


def extract_members(deb: Path, members: list[str], dest: Path, *, first_only: bool = False) -> None:
    """Pull ``members`` (paths as stored, ``./usr/...``) out of a .deb into ``dest``.

    ``first_only`` stops tar at each member's first match: for the -dbg package, whose
    System.map and vmlinux are the first members of a 300-800 MB archive. dpkg-deb then
    complains of a broken pipe and exits non-zero; that is expected, so success is judged
    by the extracted file.
    """
    tar_args = ["tar", "-x", "-C", str(dest)] + (["--occurrence=1"] if first_only else [])
    tar = process.piped(["dpkg-deb", "--fsys-tarfile", deb], [*tar_args, *members])
    missing = [m for m in members if not (dest / m).is_file()]
    if missing:
        raise FetchError(f"{deb.name} does not hold {', '.join(missing)} "
                         f"({tar.stderr.strip() or 'not found in the archive'})")


def dbg_members(release: str) -> list[str]:
    """The -dbg package's System.map and vmlinux: its first two members."""
    return [f"./usr/lib/debug/boot/System.map-{release}",
            f"./usr/lib/debug/boot/vmlinux-{release}"]


def compact_vmlinux_symbols(vmlinux: Path, destination: Path) -> None:
    """Keep vmlinux's full symbol table in the compact form, then drop the 600 MB vmlinux.

    Its STT_FILE symbols tell which object defined each local symbol: how livepatch's
    position of a `__key.0` among 127 namesakes is found (System.map cannot tell).
    """
    write_compact_table(load_symbol_table(vmlinux), destination)
    vmlinux.unlink()


def kernel_files(store: Store, kernel: KernelRelease) -> Artifact:
    """vmlinuz, config, System.map and Module.symvers of a release, in one small artifact."""
    key = content_key("debian-kernel-files-2", kernel.release,
                      [kernel.packages[r].sha256 for r in ("image", "dbg", "headers")])
    rel = kernel.release
    wanted = {
        "image": [f"./boot/vmlinuz-{rel}", f"./boot/config-{rel}"],
        "dbg": dbg_members(rel),
        "headers": [f"./usr/src/linux-headers-{rel}/Module.symvers"],
    }
    manifest: dict[str, Any] = {"release": rel, "version": kernel.version,
                                "packages": {r: asdict(p) for r, p in kernel.packages.items()}}

    def extract(work: Path) -> None:
        scratch = work / "scratch"
        scratch.mkdir()
        for role, members in wanted.items():
            deb = fetch_package(store, kernel.packages[role])
            extract_members(deb, members, scratch, first_only=role == "dbg")
        shutil.move(scratch / f"boot/vmlinuz-{rel}", work / "vmlinuz")
        shutil.move(scratch / f"boot/config-{rel}", work / "config")
        shutil.move(scratch / f"usr/lib/debug/boot/System.map-{rel}", work / "System.map")
        shutil.move(scratch / f"usr/src/linux-headers-{rel}/Module.symvers",
                    work / "Module.symvers")
        compact_vmlinux_symbols(scratch / f"usr/lib/debug/boot/vmlinux-{rel}",
                                work / VMLINUX_SYMBOLS)
        shutil.rmtree(scratch)
        if (work / "System.map").stat().st_size < 100_000:
            raise FetchError(f"System.map-{rel} from {kernel.packages['dbg'].filename} is "
                             "too small to be the real one")
        manifest["files"] = {name: file_hash(work / name)
                             for name in ("vmlinuz", "config", "System.map", "Module.symvers",
                                          VMLINUX_SYMBOLS)}

    return store.make(KERNEL_FILES_KIND, key, manifest, extract)


def source_tarball(store: Store, package: DebianPackage) -> Path:
    """The kernel source tarball inside a ``linux-source-X.Y`` package."""
    def extract(work: Path) -> None:
        deb = fetch_package(store, package)
        series = package.name.removeprefix("linux-source-")
        member = f"./usr/src/linux-source-{series}.tar.xz"
        extract_members(deb, [member], work)
        shutil.move(work / member, work / "source.tar.xz")
        shutil.rmtree(work / "usr")

    artifact = store.make(DEBIAN_SOURCE_KIND, package.sha256, {"package": asdict(package)},
                          extract)
    return artifact.path / "source.tar.xz"


def source_package(store: Store, spec_package: str, pinned: str | None,
                   release: str) -> DebianPackage:
    """A ``linux-source-X.Y`` package of Debian ``release``: the pinned version, or the
    newest it serves."""
    index = index_for(store, release)
    versions = available_versions(index, [spec_package])[spec_package]
    if not versions:
        raise FetchError(f"unknown Debian package {spec_package}: not in "
                         f"{index.release.label}'s index; check the name (linux-source-6.1)")
    if pinned and pinned not in versions:
        raise FetchError(f"{spec_package} {pinned} is no longer in {index.release.label}'s "
                         f"index (it serves {', '.join(versions)}); pin one of those, or drop "
                         "the version to take the newest")
    return package_record(index, spec_package, pinned or newest(versions))
