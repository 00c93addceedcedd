"""Entering a debootstrapped Debian root to run one command there.

A command enters the root through ``unshare --mount``: in that private mount namespace the
root is seen through an overlay (its upper layer a tmpfs, so nothing a command does changes
the root), /proc, /dev, a tmpfs /tmp and the host directories the command works in are
mounted at the same paths inside, and ``chroot`` runs it there with a clean environment.
Those mounts live only as long as the namespace: they vanish with the command, even when it
is killed with SIGKILL, and none is ever left inside the root. Build roots (a target's exact
compiler) and the apt root (Debian's indexes read on a host without apt) are entered so.
Entering needs root. ``debootstrap`` makes such a root, the one way all of them are made.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from kpatchbuild.base.commands import run_step

# Runs inside `unshare --mount`. The root is seen through an overlay whose upper layer is a
# tmpfs of the namespace: whatever a command writes or creates there (the mount points of
# its binds included) is gone with it, so a published root stays as it was made, and two
# commands at once never see each other's changes. Then it mounts what the command needs
# and runs it chrooted in its working directory with a clean environment.
# Arguments: ROOT CWD NETWORK [HOST_DIR...] -- COMMAND...
ENTER = r"""
set -e
root=$1 cwd=$2 network=$3; shift 3
layer=$root/tmp
mount -t tmpfs tmpfs "$layer"
mkdir "$layer/upper" "$layer/work" "$layer/merged"
mount -t overlay overlay -o "lowerdir=$root,upperdir=$layer/upper,workdir=$layer/work" \
    "$layer/merged"
new=$layer/merged
mount -t proc proc "$new/proc"
mount --rbind /dev "$new/dev"
mount -t tmpfs tmpfs "$new/tmp"
if [ "$network" = 1 ]; then mount --bind /etc/resolv.conf "$new/etc/resolv.conf"; fi
while [ "$1" != -- ]; do
    mkdir -p "$new$1"; mount --rbind "$1" "$new$1"; shift
done
shift
exec chroot "$new" /usr/bin/env -i -C "$cwd" PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
"""


def entering_command(root: Path, argv: Sequence[str | os.PathLike[str]], *,
                     cwd: Path | None, binds: Iterable[Path] = (),
                     network: bool = False) -> list[str]:
    """What the host runs to run ``argv`` in ``root``, in ``cwd``, with ``binds`` (host
    directories) at the same paths inside."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", ENTER,
            "kpb-root", str(root), str(cwd or "/"), "1" if network else "0",
            *(str(b) for b in outermost(binds)), "--", *(os.fspath(a) for a in argv)]


def outermost(paths: Iterable[Path]) -> list[Path]:
    """The resolved ``paths`` without those inside another one (one bind covers them)."""
    resolved = sorted({Path(p).resolve() for p in paths}, key=lambda p: (len(p.parts), p))
    kept: list[Path] = []
    for path in resolved:
        if not any(path.is_relative_to(parent) for parent in kept):
            kept.append(path)
    return sorted(kept)


def debootstrap(root: Path, suite: str, mirror: str, *, log: Path,
                include: Sequence[str] = (), keyring: Path | None = None,
                components: str | None = None) -> int:
    """A ``--variant=minbase`` Debian ``suite`` from ``mirror`` made at ``root`` (output in
    ``log``); its exit status, for the caller to name its own failure."""
    options = ["--variant=minbase"]
    if include:
        options.append(f"--include={','.join(include)}")
    if keyring is not None:
        options.append(f"--keyring={keyring}")
    if components is not None:
        options.append(f"--components={components}")
    # In a namespace of its own: the /proc and /sys debootstrap mounts in the new root go
    # away with it, also when it is killed.
    return run_step(["unshare", "--mount", "--propagation", "private", "--", "debootstrap",
                     *options, suite, root, mirror],
                    step=f"debootstrap {suite}", log=log, check=False)
