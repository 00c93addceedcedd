"""Debian releases other than the host's, in chroots: their compilers and their kernels.

The differ must understand objects from the compilers distributions build their kernels
with. Debian 11's gcc 10 and Debian 13's gcc 14 cannot be installed on Debian 12 (other C
libraries), so each runs in a chroot of its own release, made by ``debootstrap --variant=
minbase`` with only the kernel build packages and kept in the project's store (kind
``chroot``, keyed by suite, mirror and package list; built in a temp dir, published by
rename).

Every command in a chroot runs in a private mount namespace (``unshare --mount``): /proc,
/dev and the host directories it works on (bound at the same path) are mounted there only,
so they vanish with the command, also when it is killed; no mount of the host's /dev is
ever left inside the store, where deleting the cache would reach through it.

A suite's kernel comes from that suite's own index, read inside the chroot: the newest
release of a series and flavour, its image's config, the System.map of its -dbg package
(the archive's first member), the Module.symvers of its headers, and linux-source-X.Y at
the same version (kind ``chroot-kernel``). The tree is then configured with Debian's config
(``olddefconfig``, which may change only toolchain facts) and ``modules_prepare``d inside
the chroot, with the compiler CONFIG_CC_VERSION_TEXT names (kind ``chroot-tree``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base import kbuild, roots
from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.store import Store, content_key, sha256_file
from kpatchbuild.stages.config import kconfig
from kpatchbuild.stages.fetch.debian import (
    VMLINUX_SYMBOLS,
    compact_vmlinux_symbols,
    dbg_members,
    extract_members,
    image_pattern,
    newest,
)
from kpatchbuild.stages.original.original import config_changes, significant_config_changes

MIRROR = "http://deb.debian.org/debian"
# What `make olddefconfig modules_prepare` and single-object builds need, besides gcc-N:
# pahole keeps Debian's BTF options through olddefconfig (they shape struct module), and
# with them 6.x's modules_prepare builds resolve_btfids, whose libbpf headers need python3.
BUILD_PACKAGES = ("make", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "dwarves",
                  "python3-minimal")
# Bumped when what an artifact holds changes, so older ones are not misread.
FORMAT = 1
# The suite's index is refreshed when older than this (Debian drops superseded kernels).
INDEX_MAX_AGE = 24 * 3600

# Runs inside `unshare --mount`: mounts what the command needs, runs it chrooted, then
# removes the mount points it had to create (mounts end with the namespace anyway).
# Arguments: ROOT CWD NETWORK [HOST_DIR...] -- [MOUNT_POINT_TO_REMOVE...] -- COMMAND...
_IN_NAMESPACE = r"""
set -e
root=$1 cwd=$2 network=$3; shift 3
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/tmp"
if [ "$network" = 1 ]; then mount --bind /etc/resolv.conf "$root/etc/resolv.conf"; fi
bound=
while [ "$1" != -- ]; do
    mkdir -p "$root$1"; mount --bind "$1" "$root$1"; bound="$root$1 $bound"; shift
done
shift
created=
while [ "$1" != -- ]; do created="$1 $created"; shift; done
shift
status=0
chroot "$root" /usr/bin/env -i -C "$cwd" PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@" || status=$?
for dir in $bound; do umount "$dir"; done
# Another command in the same chroot may be using a directory this one made (for a bind of
# its own beneath it): then it stays, empty once that one is done.
for dir in $created; do
    case "$dir" in "$root"/tmp/*) ;; *) rmdir "$dir" 2>/dev/null || true ;; esac
done
exit $status
"""


class ChrootError(KpbError):
    """A chroot, a suite's kernel or its tree could not be made: one line saying why."""


@dataclass(frozen=True)
class Chroot:
    """A debootstrapped Debian release under ``root``."""

    suite: str
    root: Path
    packages: tuple[str, ...]

    def run(self, argv: Sequence[str], *, binds: Sequence[Path] = (), cwd: Path | None = None,
            network: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as root in the chroot, host directories ``binds`` at the same paths.

        Output is captured; a failure (with ``check``) raises ChrootError with the last
        lines of its error output.
        """
        # The absolute path of each bind-mount point that does not exist yet in the chroot,
        # shallowest first, so the script can remove exactly what it created.
        created: list[str] = []
        for host in binds:
            inside = self.root / Path(host).resolve().relative_to("/")
            missing = [p for p in [inside, *inside.parents]
                       if p.is_relative_to(self.root) and not p.exists()]
            created += [str(p) for p in reversed(missing) if str(p) not in created]
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _IN_NAMESPACE,
             "kpb-chroot", str(self.root), str(cwd or "/"), "1" if network else "0",
             *(str(Path(b).resolve()) for b in binds), "--", *created, "--", *argv],
            capture_output=True, text=True,
        )
        if check and result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-6:])
            raise ChrootError(f"{self.suite} chroot: `{' '.join(argv)}` failed "
                              f"(exit {result.returncode}): {tail}")
        return result


def make_chroot(store: Store, suite: str, packages: Sequence[str]) -> Chroot:
    """The store's chroot of ``suite`` with ``packages``, debootstrapped if not there yet."""
    wanted = tuple(sorted(set(packages)))
    key = content_key("chroot", FORMAT, suite, MIRROR, wanted)
    artifact = store.lookup("chroot", key)
    if artifact is None:
        if shutil.which("debootstrap") is None:
            raise ChrootError(f"debootstrap is not installed: a {suite} chroot needs it "
                              "(./run installs it; apt-get install debootstrap)")
        manifest = {"suite": suite, "mirror": MIRROR, "packages": list(wanted)}
        log = store.log_path(f"chroot-{suite}-{key[:12]}")
        with store.publishing("chroot", key, manifest) as work:
            log.unlink(missing_ok=True)
            status = roots.debootstrap(work / "root", suite, MIRROR, log=log, include=wanted)
            if status != 0:
                raise ChrootError(f"debootstrap of {suite} from {MIRROR} failed "
                                  f"(exit {status}); log: {log}")
        artifact = store.lookup("chroot", key)
        assert artifact is not None
    return Chroot(suite, artifact.path / "root", wanted)


@dataclass(frozen=True)
class SuiteTree:
    """A corpus tree from another Debian release: its suite, the compiler the corpus is
    compiled with there, and the kernel series and flavour taken from that suite.

    ``as_built`` says the compiler is the one Debian built the kernel with (checked against
    its config): objects that could patch Debian's kernel. Otherwise the tree is another
    compiler of the same release configured with Debian's config, as the 6.1 tree is with
    gcc 11 on the host: not objects for Debian's kernel, but that compiler's code for the
    same edits.
    """

    label: str  # what per-tree expectations are keyed on
    suite: str
    compiler: str
    series: str
    as_built: bool = True
    flavour: str = "cloud-amd64"

    @property
    def packages(self) -> tuple[str, ...]:
        """What the suite's chroot holds: one chroot serves every tree of its suite."""
        compilers = {tree.compiler for tree in SUITE_TREES.values() if tree.suite == self.suite}
        return (*BUILD_PACKAGES, *sorted(compilers))


SUITE_TREES = {
    tree.label: tree
    for tree in (
        SuiteTree("5.10", "bullseye", "gcc-10", "5.10"),  # Debian 11
        SuiteTree("5.10-gcc9", "bullseye", "gcc-9", "5.10", as_built=False),
        SuiteTree("6.12-gcc14", "trixie", "gcc-14", "6.12"),  # Debian 13
        SuiteTree("6.12-gcc13", "trixie", "gcc-13", "6.12", as_built=False),
    )
}


# --- a suite's kernel ---

@dataclass(frozen=True)
class SuiteKernel:
    """One Debian release of a suite: the files the corpus needs, in the store."""

    suite: str
    release: str  # 6.12.117+deb13-cloud-amd64
    version: str  # 6.12.117-1
    files: Path  # config, System.map, Module.symvers, source.tar.xz

    @property
    def config(self) -> str:
        return (self.files / "config").read_text()


def _index_age(chroot: Chroot) -> float:
    lists = chroot.root / "var/lib/apt/lists"
    stamps = [p.stat().st_mtime for p in lists.glob("*_Packages")]
    return time.time() - max(stamps) if stamps else float("inf")


def _newest_release(chroot: Chroot, series: str, flavour: str) -> tuple[str, str]:
    """(release, version) of the newest ``series`` kernel of ``flavour`` the chroot's index has."""
    names = chroot.run(["apt-cache", "pkgnames", f"linux-image-{series}."]).stdout.split()
    pattern = image_pattern(series, flavour)
    images = [n for n in names if pattern.match(n)]
    if not images:
        raise ChrootError(f"{chroot.suite}'s index has no linux-image-{series}.*-{flavour}")
    versions: dict[str, str] = {}
    madison = chroot.run(["apt-cache", "madison", *images]).stdout
    for line in madison.splitlines():
        name, version = (part.strip() for part in line.split("|")[:2])
        versions.setdefault(version, name)
    best = newest(list(versions))
    return versions[best].removeprefix("linux-image-"), best


def _package_sha256(chroot: Chroot, spec: str) -> str:
    shown = chroot.run(["apt-cache", "show", "--no-all-versions", spec]).stdout
    found = re.search(r"^SHA256: (\S+)$", shown, re.M)
    if not found:
        raise ChrootError(f"{chroot.suite}'s index has no {spec}")
    return found.group(1)


def suite_kernel(store: Store, chroot: Chroot, series: str, flavour: str) -> SuiteKernel:
    """The newest ``series`` kernel of ``flavour`` in the chroot's suite, fetched if needed.

    The index is the chroot's own, refreshed when a day old. Only the needed members are
    kept (the -dbg package alone is ~300 MB, for its System.map); apt-get download checks
    each package against the index's hashes, and they are checked again here.
    """
    if _index_age(chroot) > INDEX_MAX_AGE:
        chroot.run(["apt-get", "update", "-q"], network=True)
    release, version = _newest_release(chroot, series, flavour)
    key = content_key("chroot-kernel", FORMAT, chroot.suite, release, version)
    artifact = store.lookup("chroot-kernel", key)
    if artifact is None:
        names = {"image": f"linux-image-{release}", "dbg": f"linux-image-{release}-dbg",
                 "headers": f"linux-headers-{release}", "source": f"linux-source-{series}"}
        sums = {role: _package_sha256(chroot, f"{name}={version}") for role, name in names.items()}
        manifest = {"suite": chroot.suite, "release": release, "version": version,
                    "packages": {role: {"name": names[role], "sha256": sums[role]}
                                 for role in names}}
        with store.publishing("chroot-kernel", key, manifest) as work:
            debs = work / "debs"
            debs.mkdir()
            chroot.run(["apt-get", "download", "-q", *(f"{n}={version}" for n in names.values())],
                       binds=[debs], cwd=debs, network=True)
            members = {
                "image": [f"./boot/config-{release}"],
                "dbg": [f"./usr/lib/debug/boot/System.map-{release}"],
                "headers": [f"./usr/src/linux-headers-{release}/Module.symvers"],
                "source": [f"./usr/src/linux-source-{series}.tar.xz"],
            }
            for role, name in names.items():
                (deb,) = debs.glob(f"{name}_*.deb")
                if sha256_file(deb) != sums[role]:
                    raise ChrootError(f"{deb.name}: sha256 does not match {chroot.suite}'s index")
                extract_members(deb, members[role], work, first_only=role == "dbg")
                deb.unlink()
            for member, name in ((members["image"][0], "config"),
                                 (members["dbg"][0], "System.map"),
                                 (members["headers"][0], "Module.symvers"),
                                 (members["source"][0], "source.tar.xz")):
                shutil.move(work / member, work / name)
            shutil.rmtree(work / "boot")
            shutil.rmtree(work / "usr")
            debs.rmdir()
        artifact = store.lookup("chroot-kernel", key)
        assert artifact is not None
    return SuiteKernel(chroot.suite, release, version, artifact.path)


def dbg_vmlinux(chroot: Chroot, kernel: SuiteKernel, work: Path, checksum: str) -> Path:
    """The kernel's -dbg vmlinux, fetched in ``chroot`` into ``work`` (its .deb, checked
    against ``checksum`` from the suite's index, is dropped once the vmlinux is out)."""
    name = f"linux-image-{kernel.release}-dbg"
    chroot.run(["apt-get", "download", "-q", f"{name}={kernel.version}"],
               binds=[work], cwd=work, network=True)
    (deb,) = work.glob(f"{name}_*.deb")
    if sha256_file(deb) != checksum:
        raise ChrootError(f"{deb.name}: sha256 does not match {chroot.suite}'s index")
    members = dbg_members(kernel.release)
    extract_members(deb, members, work, first_only=True)
    deb.unlink()
    return work / members[1]


def suite_kernel_symbols(store: Store, chroot: Chroot, kernel: SuiteKernel) -> Path:
    """The compact symbol table of the kernel's vmlinux (from its -dbg package, fetched again:
    the kernel's files keep only System.map)."""
    key = content_key("chroot-kernel-symbols", FORMAT, chroot.suite, kernel.release,
                      kernel.version)
    artifact = store.lookup("chroot-kernel-symbols", key)
    if artifact is None:
        name = f"linux-image-{kernel.release}-dbg"
        checksum = _package_sha256(chroot, f"{name}={kernel.version}")
        with store.publishing("chroot-kernel-symbols", key, {"package": name}) as work:
            vmlinux = dbg_vmlinux(chroot, kernel, work, checksum)
            compact_vmlinux_symbols(vmlinux, work / VMLINUX_SYMBOLS)
            shutil.rmtree(work / "usr")
        artifact = store.lookup("chroot-kernel-symbols", key)
        assert artifact is not None
    return artifact.path / VMLINUX_SYMBOLS


# --- the kernel's tree, prepared as Debian built it ---

def config_compiler(config: str) -> kbuild.CompilerVersion:
    """The compiler a kernel config was made with (CONFIG_CC_VERSION_TEXT)."""
    text = kconfig.parse_config(config).get("CONFIG_CC_VERSION_TEXT", "")
    return kbuild.parse_compiler_text(text)


def check_compiler(chroot: Chroot, compiler: str, kernel: SuiteKernel) -> None:
    """The chroot's ``compiler`` must be the one Debian built ``kernel`` with."""
    wanted = config_compiler(kernel.config)
    first = chroot.run([compiler, "--version"]).stdout.splitlines()[0]
    found = kbuild.parse_compiler_text(first)
    if not found.matches(wanted):
        raise ChrootError(f"{kernel.release} was built by '{wanted.text}'; the {chroot.suite} "
                          f"chroot's {compiler} is '{found.text}': objects would not match")


@dataclass(frozen=True)
class PreparedTree:
    tree: Path
    kernel: SuiteKernel
    compiler: str


def prepared_tree(store: Store, chroot: Chroot, kernel: SuiteKernel, compiler: str, *,
                  as_built: bool = True) -> PreparedTree:
    """Debian's source of ``kernel``, configured with its config and modules_prepare'd in the
    chroot by ``compiler`` (with ``as_built``, checked to be Debian's), with the release
    pinned on the command line as Debian's build does; Module.symvers is Debian's.

    Either way olddefconfig may change only toolchain facts: another compiler must still
    build the kernel Debian configured, or its objects say nothing of Debian's.
    """
    if as_built:
        check_compiler(chroot, compiler, kernel)
    key = content_key("chroot-tree", FORMAT, chroot.packages, chroot.suite, str(kernel.files),
                      kernel.release, compiler)
    artifact = store.lookup("chroot-tree", key)
    if artifact is None:
        manifest: dict = {"suite": chroot.suite, "release": kernel.release, "compiler": compiler}
        log = store.log_path(f"chroot-tree-{kernel.release}-{compiler}")
        with store.publishing("chroot-tree", key, manifest) as work:
            subprocess.run(["tar", "-xf", str(kernel.files / "source.tar.xz"), "-C", str(work)],
                           check=True)
            (unpacked,) = work.iterdir()
            tree = unpacked.rename(work / "tree")
            (tree / ".config").write_text(kernel.config)
            result = chroot.run(make_command(tree, kernel.release, compiler,
                                             "olddefconfig", "modules_prepare"),
                                binds=[work], check=False)
            log.write_text(result.stdout + result.stderr)
            if result.returncode != 0:
                raise ChrootError(f"preparing {kernel.release} in the {chroot.suite} chroot "
                                  f"failed; log: {log}")
            changes = config_changes(kernel.config, (tree / ".config").read_text())
            significant = significant_config_changes(changes)
            if significant:
                raise ChrootError(f"{kernel.release}: olddefconfig changed Debian's config "
                                  f"beyond toolchain facts: {sorted(significant)[:6]}; log: {log}")
            manifest["config_changes"] = changes
            shutil.copyfile(kernel.files / "Module.symvers", tree / "Module.symvers")
        artifact = store.lookup("chroot-tree", key)
        assert artifact is not None
    return PreparedTree(artifact.path / "tree", kernel, compiler)


def make_command(tree: Path, release: str, compiler: str, *targets: str) -> list[str]:
    """``make`` in ``tree`` as the chroot builds: its gcc-N as both CC and HOSTCC (the
    chroot has no plain `gcc`), the release pinned."""
    return ["make", "-s", "-C", str(tree), f"-j{os.cpu_count() or 1}",
            f"KERNELRELEASE={release}", f"CC={compiler}", f"HOSTCC={compiler}", *targets]
