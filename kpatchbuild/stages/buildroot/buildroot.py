"""Build roots: every compile and link for a target runs with the exact compiler that
built its kernel, whatever the host has.

A target's kernel names its compiler (``CONFIG_CC_VERSION_TEXT``: ``x86_64-linux-gnu-gcc-14
(Debian 14.2.0-19) 14.2.0``). When the host's own ``gcc`` is exactly that one, the host
serves. Otherwise the commands run in a **build root**: a ``debootstrap --variant=minbase``
of the target's Debian release with that compiler (its ``gcc`` package, so ``gcc`` is the
release's gcc and kbuild's recorded commands replay unchanged), binutils and libelf of the
same release, pahole (Debian's configs generate BTF for modules) and the few tools kbuild's
prepare steps run. It is an artifact of the store (kind ``buildroot``), keyed by the release,
its mirror, its package list and the compiler version wanted, made once (about a minute and
650 MB) and shared by every target and recipe that needs it; built in a temp dir and
published by rename like any other artifact. The exact versions it holds are in its
manifest. Before one is made, the release's index must still serve that exact compiler:
otherwise the target is refused, naming both versions (Debian moved its gcc on after the
kernel was built; an older one is not to be had from its mirror).

Commands enter the root as :mod:`kpatchbuild.base.roots` says: a private mount namespace, the
root seen through an overlay whose upper layer is a tmpfs (nothing a command does changes the
published root), the store, the project and the recipe at the same paths inside; no mount
outlives its command, even under SIGKILL. Making and entering a build root needs root
(debootstrap, mounts).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kpatchbuild.base import kbuild, process, roots
from kpatchbuild.base.commands import HOST, Runner, say
from kpatchbuild.base.errors import ToolchainError
from kpatchbuild.base.roots import entering_command, outermost
from kpatchbuild.base.store import Store, content_key
from kpatchbuild.stages.fetch.suites import DebianRelease, Mirrors, SuiteIndex

KIND = "buildroot"
FORMAT = 1
# What kbuild's olddefconfig, modules_prepare, single-object and module builds run, besides
# gcc: pahole keeps Debian's BTF options (they shape struct module) and builds modules' BTF,
# and 6.x's modules_prepare builds resolve_btfids, whose libbpf headers want python3; a
# whole-tree pass (the header index, a kernel built here) also makes the signing key (openssl).
PACKAGES = ("gcc", "make", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "dwarves",
            "python3-minimal", "kmod", "xz-utils", "zstd", "openssl")
# Whose versions the manifest records (the toolchain that decides the objects).
RECORDED = ("gcc", "binutils", "libelf-dev", "dwarves", "make")

@dataclass(frozen=True)
class BuildRoot:
    """A debootstrapped Debian release holding a target's exact compiler."""

    release: DebianRelease
    root: Path
    compiler: kbuild.CompilerVersion
    binds: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        return f"the {self.release.label} build root ({self.compiler.text})"

    def command(self, argv: Sequence[str | os.PathLike[str]], cwd: Path | None) -> list[str]:
        return entering_command(self.root, argv, cwd=cwd, binds=self.binds)

    def seeing(self, binds: Iterable[Path]) -> BuildRoot:
        """This root with ``binds`` visible inside."""
        return replace(self, binds=tuple(outermost(binds)))

    def run(self, argv: Sequence[str], *, network: bool = False) -> str:
        """A short command in the root; its output, or a one-line failure."""
        result = process.run(entering_command(self.root, argv, cwd=None, binds=self.binds,
                                              network=network),
                             error=ToolchainError, what=f"{self.name}: `{' '.join(argv)}`")
        return str(result.stdout)


def config_compiler(config_text: str, where: str) -> kbuild.CompilerVersion:
    """The compiler a kernel's config says built it."""
    found = re.search(r"^CONFIG_CC_VERSION_TEXT=(.*)$", config_text, re.MULTILINE)
    if not found:
        raise ToolchainError(f"{where}: the kernel's config has no CONFIG_CC_VERSION_TEXT; "
                             "cannot tell which compiler built it")
    return kbuild.parse_compiler_text(found.group(1))


def compiler_package(wanted: kbuild.CompilerVersion) -> str:
    """Debian's package of a gcc release: ``gcc-14`` for 14.2.0."""
    return f"gcc-{wanted.version.split('.')[0]}"


@dataclass(frozen=True)
class Toolchain:
    """Where a target's commands run, and the compiler they meet there. ``override`` says,
    in the words every report repeats, that a recipe accepted another gcc than the
    kernel's (None when the compiler is the kernel's own)."""

    runner: Runner
    compiler: kbuild.CompilerVersion
    override: str | None = None


def accepted_compiler(kernel: kbuild.CompilerVersion, accepted: str, *,
                      where: str) -> kbuild.CompilerVersion:
    """The gcc a recipe's ``accept_compiler`` (a Debian package version such as
    ``14.2.0-20``) names in place of the kernel's; only a build of the same gcc major."""
    upstream = accepted.split("-", 1)[0]
    major = upstream.split(".", 1)[0]
    if major != kernel.version.split(".", 1)[0]:
        raise ToolchainError(f"{where}: accept_compiler {accepted} is gcc {major}, but the "
                             f"kernel was built with '{kernel.text}': another gcc major "
                             "generates other code; name a build of gcc "
                             f"{kernel.version.split('.', 1)[0]}")
    return kbuild.CompilerVersion(f"gcc-{major} (Debian {accepted}) {upstream}", accepted,
                                  upstream)


def toolchain_for(store: Store, config_text: str, release: DebianRelease, *, where: str,
                  binds: Iterable[Path], accept: str | None = None) -> Toolchain:
    """Where the target of ``config_text`` compiles: the host when its gcc is exactly the
    kernel's, else the build root of ``release`` holding that compiler (made if needed),
    seeing ``binds``. ``accept`` (the recipe's ``accept_compiler``) names another build of
    that gcc to use instead, when the release no longer serves the kernel's."""
    kernel = config_compiler(config_text, where)
    wanted, override = kernel, None
    if accept is not None:
        wanted = accepted_compiler(kernel, accept, where=where)
        if not wanted.matches(kernel):
            override = (f"built with gcc {accept}, not the kernel's own '{kernel.text}' "
                        "(the recipe's accept_compiler)")
    return _serving(store, release, wanted, where=where, binds=binds, override=override)


def suite_compiler(store: Store, release: DebianRelease, *, where: str) -> kbuild.CompilerVersion:
    """The gcc ``release`` builds kernels with today (its default gcc package's current
    version): what a kernel configured and built here for that release is compiled by."""
    index = SuiteIndex.in_cache(store.root, release)
    index.ensure()
    policy = index.apt_cache("policy", release.compiler)
    found = re.search(r"^\s*Candidate:\s*(\S+)", policy, re.MULTILINE)
    if found is None or found.group(1) == "(none)":
        raise ToolchainError(f"{where}: {release.label} serves no {release.compiler}; its "
                             f"kernels cannot be built here (index: {index.root})")
    version = found.group(1)
    upstream = version.split("-", 1)[0]
    return kbuild.CompilerVersion(f"{release.compiler} (Debian {version}) {upstream}",
                                  version, upstream)


def suite_toolchain(store: Store, release: DebianRelease, *, where: str,
                    binds: Iterable[Path]) -> Toolchain:
    """Where a kernel built here for ``release`` is configured and built: with that
    release's gcc, the host's when it is exactly that one, else in its build root."""
    return _serving(store, release, suite_compiler(store, release, where=where), where=where,
                    binds=binds, override=None)


def _serving(store: Store, release: DebianRelease, wanted: kbuild.CompilerVersion, *,
             where: str, binds: Iterable[Path], override: str | None) -> Toolchain:
    try:
        host = kbuild.host_compiler()
    except ToolchainError:
        host = None
    if host is not None and host.matches(wanted):
        return Toolchain(HOST, host, override)
    root = build_root(store, release, wanted, where=where).seeing(binds)
    return Toolchain(root, root.compiler, override)


def build_root(store: Store, release: DebianRelease, wanted: kbuild.CompilerVersion, *,
               where: str) -> BuildRoot:
    """The store's build root of ``release`` with the compiler ``wanted``, made if needed."""
    mirrors = Mirrors.from_host()
    key = content_key(KIND, FORMAT, release.codename, mirrors.debian, PACKAGES,
                      wanted.package, wanted.version)
    artifact = store.lookup(KIND, key)
    if artifact is None:
        _check_served(store, release, wanted, where)
        if os.geteuid() != 0:
            raise ToolchainError(f"{where}: its kernel was built with '{wanted.text}', which "
                                 f"only a {release.label} build root has, and making one "
                                 "needs root (debootstrap, mounts): run this once as root")
        if shutil.which("debootstrap") is None:
            raise ToolchainError(f"{where}: a {release.label} build root needs debootstrap: "
                                 "install it (./run does)")
        manifest: dict[str, Any] = {"release": release.number, "codename": release.codename,
                                    "mirror": mirrors.debian, "packages": list(PACKAGES)}
        artifact = store.make(KIND, key, manifest, lambda work: _make(
            store, work, release, mirrors, wanted, where, manifest))
    found = kbuild.parse_compiler_text(artifact.manifest["compiler"])
    return BuildRoot(release, artifact.path / "root", found)


def _check_served(store: Store, release: DebianRelease, wanted: kbuild.CompilerVersion,
                  where: str) -> None:
    index = SuiteIndex.in_cache(store.root, release)
    index.ensure()
    package = compiler_package(wanted)
    madison = index.apt_cache("madison", package)
    # madison lists the newest first
    served = list(dict.fromkeys(line.split("|")[1].strip() for line in madison.splitlines()
                                if line.count("|") >= 2))
    if wanted.package not in served:
        newest = served[0] if served else None
        remedy = (f"; to build with {package} {newest} anyway, set 'accept_compiler: "
                  f"{newest}' on the target (every report then says so)") if newest else ""
        raise ToolchainError(
            f"{where}: its kernel needs gcc '{wanted.text}', but {release.label} now serves "
            f"{package} {', '.join(served) or 'in no version'}: objects from another build of "
            f"gcc may not match the running kernel, so no build root is made{remedy}")


def _make(store: Store, work: Path, release: DebianRelease, mirrors: Mirrors,
          wanted: kbuild.CompilerVersion, where: str, manifest: dict[str, Any]) -> None:
    log = store.log_path(f"buildroot-{release.codename}-{wanted.package}")
    say(f"  making the {release.label} build root for '{wanted.text}' (debootstrap, about a "
        f"minute); log: {log}")
    root = work / "root"
    log.unlink(missing_ok=True)
    status = roots.debootstrap(root, release.codename, mirrors.debian, log=log,
                               include=PACKAGES, components="main")
    if status != 0:
        raise ToolchainError(f"{where}: debootstrap of {release.codename} from "
                             f"{mirrors.debian} failed (exit {status}); log: {log}")
    for cached in (root / "var/cache/apt/archives").glob("*.deb"):
        cached.unlink()
    made_root = BuildRoot(release, root, wanted)
    first = made_root.run(["gcc", "--version"]).splitlines()[0]
    found = kbuild.parse_compiler_text(first)
    if not found.matches(wanted):
        raise ToolchainError(f"{where}: the {release.label} build root's gcc is "
                             f"'{found.text}', not the kernel's '{wanted.text}'")
    versions = made_root.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n",
                              *RECORDED])
    manifest["compiler"] = first
    manifest["versions"] = dict(line.split(" ", 1) for line in versions.splitlines()
                                if " " in line)
