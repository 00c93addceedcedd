"""What kpatch, running as root, accepts from the command line and the file system.

kpatch runs as root on machines where other users may write files: a name given on the
command line, a module's ``name=`` in its ``.modinfo`` and a kernel release all end up in
paths (``/var/lib/kpatch/<release>/<name>.ko``, ``/sys/kernel/livepatch/<name>``) and in
what the boot hooks run, so each is checked against the kernel's own rules before it is
used; and a file whose content decides what root runs (a module, the interpreter and the
packages of the boot unit) must be one only its trusted owners can change, down every
directory of its path.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from kpatchbuild.kpatch.errors import KpatchError

# include/linux/module.h: MODULE_NAME_LEN is 64 - sizeof(unsigned long), NUL included.
MODULE_NAME_MAX = 55
_MODULE_NAME = re.compile(rf"[a-z0-9_]{{1,{MODULE_NAME_MAX}}}")
# The kernel's release as uname(2) gives it (__NEW_UTS_LEN 64): Debian's and kbuild's
# spellings use letters, digits, '.', '+', '-', '_' and '~'; never '/', never a dot first.
RELEASE_MAX = 64
_RELEASE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9.+~_-]{{0,{RELEASE_MAX - 1}}}")
WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def is_module_name(text: str) -> bool:
    return _MODULE_NAME.fullmatch(text) is not None


def module_name(text: str, what: str) -> str:
    """``text`` if it is a livepatch module name kpatch accepts, else a one-line refusal."""
    if not is_module_name(text):
        raise KpatchError(f"{what}: {text!r} is not a module name kpatch accepts (lower-case "
                          f"letters, digits and '_', at most {MODULE_NAME_MAX} characters)")
    return text


def kernel_release(text: str, what: str) -> str:
    """``text`` if it is a kernel release that can name a directory, else a refusal."""
    if _RELEASE.fullmatch(text) is None:
        raise KpatchError(f"{what}: {text!r} is not a kernel release (letters, digits, '.', "
                          f"'+', '-', '_', '~', at most {RELEASE_MAX} characters, not "
                          "starting with a dot)")
    return text


def untrusted_reason(status: os.stat_result, trusted_owners: Iterable[int]) -> str | None:
    """Why a file with ``status`` can be changed by someone not trusted, or None."""
    if status.st_uid not in set(trusted_owners):
        return f"it is owned by uid {status.st_uid}, not root"
    if status.st_mode & WRITABLE_BY_OTHERS:
        return f"it is writable by group or others (mode {stat.S_IMODE(status.st_mode):04o})"
    return None


MAX_LINKS = 40  # as the kernel's path walk (MAXSYMLINKS)


def untrusted_path(path: Path, trusted_owners: Iterable[int]) -> str | None:
    """Why ``path``, or a directory or link on the way to it, could be changed by someone
    not trusted; None when nobody else can.

    Every component from ``/`` down is checked as a lookup by root meets it, symbolic links
    followed (the link's owner, then what it points to, from ``/`` again). A directory
    writable by others is accepted only with the sticky bit and a trusted owner (``/tmp``):
    there nobody else can rename or remove a trusted owner's entry, and the next component
    is checked in turn.
    """
    owners = frozenset(trusted_owners)
    # Not normalised (os.path.abspath would drop a ".." after a link): walked as given.
    pending = list((path if path.is_absolute() else Path.cwd() / path).parts[1:])
    current = Path("/")
    links = 0
    while True:
        try:
            status = os.lstat(current)
        except OSError as error:
            return f"{current}: {error.strerror}"
        if stat.S_ISLNK(status.st_mode):
            # A link's mode means nothing; its directory (checked) and its owner decide.
            if status.st_uid not in owners:
                return f"{current}: a symbolic link owned by uid {status.st_uid}, not root"
            links += 1
            if links > MAX_LINKS:
                return f"{current}: too many levels of symbolic links"
            # Not normalised: a ".." is walked as the kernel walks it, after the links
            # before it are followed.
            target = current.parent / os.readlink(current)
            pending = list(target.parts[1:]) + pending
            current = Path("/")
            continue
        reason = untrusted_reason(status, owners)
        open_sticky = (stat.S_ISDIR(status.st_mode) and status.st_mode & stat.S_ISVTX
                       and status.st_uid in owners and pending)
        if reason is not None and not open_sticky:
            return f"{current}: {reason}"
        if not pending:
            return None
        current = current / pending.pop(0)
