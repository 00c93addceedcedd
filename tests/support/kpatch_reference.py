"""kpatch's create-diff-object, the reference the differ is compared with.

Debian 13 packages kpatch-build (0.9.10-1): its ``/usr/lib/kpatch/create-diff-object`` is
fetched through trixie's index like any Debian package, kept in the store (kind
``kpatch-reference``) and run in the trixie chroot the corpus already uses (it links
trixie's libelf). kpatch-build runs it once per changed object:

    create-diff-object ORIG.o PATCHED.o vmlinux SYMTAB Module.symvers PATCHNAME OUT.o

with SYMTAB the output of ``readelf -s --wide vmlinux`` (kept per kernel, kind
``kpatch-symtab``: the -dbg package's vmlinux is extracted once for it). It exits 0 with
an object written, 3 when nothing changed functionally, and 1 or 2 when it refuses; it
prints ``changed function: NAME`` and ``new function: NAME`` for what it carries.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base.store import Store, content_key
from kpatchbuild.differ.special import ENTRY_TABLES, ORC_TABLE, PRINTK_INDEX_TABLE
from kpatchbuild.stages.fetch.debian import (
    dbg_members,
    extract_members,
    fetch_package,
    index_for,
    package_record,
)
from tests.support.chroots import (
    SUITE_TREES,
    Chroot,
    SuiteKernel,
    _package_sha256,
    dbg_vmlinux,
    make_chroot,
)

KPATCH_BUILD_VERSION = "0.9.10-1"
TOOL = "./usr/lib/kpatch/create-diff-object"
REFERENCE_KIND = "kpatch-reference"
SYMTAB_KIND = "kpatch-symtab"
# The chroot the Debian 13 corpus tree compiles in: the same packages, so the same chroot.
SUITE = "trixie"
TIMEOUT = 120  # seconds for one object pair; kpatch takes milliseconds

_SIZED = (*ENTRY_TABLES.values(), ORC_TABLE, PRINTK_INDEX_TABLE)
_CHANGE = re.compile(r"(?:^|: )(changed|new) function: (\S+)$", re.M)
_ERROR = re.compile(r"ERROR: (.*)$", re.M)


@dataclass(frozen=True)
class ReferenceOutcome:
    """What create-diff-object said of one pair."""

    exit_code: int  # 0 written, 3 no change, 1 or 2 refused
    changed: frozenset[str]
    new: frozenset[str]
    log: str

    @property
    def error(self) -> str:
        """kpatch's reason for a refusal: its ERROR lines, else the last line it printed."""
        found = _ERROR.findall(self.log)
        if found:
            return " | ".join(found)
        lines = self.log.strip().splitlines()
        return lines[-1] if lines else f"exit {self.exit_code}"


@dataclass(frozen=True)
class KpatchReference:
    """create-diff-object and the chroot it runs in."""

    chroot: Chroot
    tool: Path

    def diff(self, orig: Path, patched: Path, symtab: Path, symvers: Path, out: Path, *,
             sizes: dict[str, int], objname: str = "vmlinux") -> ReferenceOutcome:
        """One pair, with the kernel's special-section entry sizes (``sizes``: section ->
        size, as the differ's probe measures them), which kpatch-build reads from vmlinux's
        DWARF and hands over in the environment."""
        out.parent.mkdir(parents=True, exist_ok=True)
        binds = [orig.parent, patched.parent, symtab.parent, symvers.parent, out.parent,
                 self.tool.parent]
        environment = [f"{kind.env}={sizes[kind.name]}" for kind in _SIZED
                       if kind.env and kind.name in sizes]
        argv = ["env", *environment, "timeout", str(TIMEOUT), str(self.tool), str(orig),
                str(patched), objname, str(symtab), str(symvers), "livepatch_reference",
                str(out)]
        result = self.chroot.run(argv, binds=list(dict.fromkeys(binds)), check=False)
        log = result.stdout + result.stderr
        changes = _CHANGE.findall(log)
        return ReferenceOutcome(
            result.returncode,
            frozenset(name for kind, name in changes if kind == "changed"),
            frozenset(name for kind, name in changes if kind == "new"),
            log,
        )


def kpatch_reference(store: Store) -> KpatchReference:
    """trixie's create-diff-object, fetched once, with the chroot to run it in."""
    chroot = make_chroot(store, SUITE, SUITE_TREES["6.12-gcc14"].packages)
    package = package_record(index_for(store, "13"), "kpatch-build", KPATCH_BUILD_VERSION)
    key = content_key(REFERENCE_KIND, package.sha256)

    def extract(work: Path) -> None:
        extract_members(fetch_package(store, package), [TOOL], work)
        shutil.move(work / TOOL, work / "create-diff-object")
        shutil.rmtree(work / "usr")

    artifact = store.make(REFERENCE_KIND, key, {"package": package.spec}, extract)
    return KpatchReference(chroot, artifact.path / "create-diff-object")


def reference_symtab(store: Store, dbg_deb: Path, release: str) -> Path:
    """``readelf -s --wide vmlinux`` of the kernel whose -dbg package is ``dbg_deb``."""
    key = content_key(SYMTAB_KIND, release, dbg_deb.name)

    def make(work: Path) -> None:
        members = dbg_members(release)
        extract_members(dbg_deb, members, work, first_only=True)
        with open(work / "vmlinux.symtab", "w") as handle:
            subprocess.run(["readelf", "-s", "--wide", str(work / members[1])], stdout=handle,
                           check=True)
        shutil.rmtree(work / "usr")

    artifact = store.make(SYMTAB_KIND, key, {"release": release}, make)
    return artifact.path / "vmlinux.symtab"


def suite_reference_symtab(store: Store, chroot: Chroot, kernel: SuiteKernel) -> Path:
    """The symtab of a kernel from a suite's index (tests/support/chroots.py), its -dbg
    package fetched again in the suite's chroot (the kernel's files keep only System.map)."""
    name = f"linux-image-{kernel.release}-dbg"
    key = content_key(SYMTAB_KIND, kernel.release, kernel.version, chroot.suite)

    def make(work: Path) -> None:
        vmlinux = dbg_vmlinux(chroot, kernel, work,
                              _package_sha256(chroot, f"{name}={kernel.version}"))
        with open(work / "vmlinux.symtab", "w") as handle:
            subprocess.run(["readelf", "-s", "--wide", str(vmlinux)], stdout=handle,
                           check=True)
        shutil.rmtree(work / "usr")

    artifact = store.make(SYMTAB_KIND, key, {"release": kernel.release}, make)
    return artifact.path / "vmlinux.symtab"
