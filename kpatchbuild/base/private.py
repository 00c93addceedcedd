"""Files only their owner may read: the keys kpatchbuild signs with.

A key another user can read is no longer secret, and a key directory another user can write
to lets them plant a key of their choice; both are refused with one line saying what to
change, rather than warned about (gpg and openssl only warn, or say nothing).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from kpatchbuild.base.errors import KpbError

Error = Callable[[str], KpbError]


def data_home(name: str) -> Path:
    """``${XDG_DATA_HOME:-$HOME/.local/share}/kpatchbuild/<name>``: where kpatchbuild keeps
    its own keys, outside the cache, which is thrown away while the keys must outlive it."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(data) / "kpatchbuild" / name


def private_directory(path: Path, *, what: str, remedy: str, error: Error) -> Path:
    """``path``, made 0700 if it is not there; refused when it is not the user's own or
    others could get in. ``what`` names it in messages ("the repository key home"),
    ``remedy`` says how to use another ("point $X at a directory of your own")."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    except OSError as failure:
        raise error(f"{path}: cannot make {what}: {failure.strerror}; {remedy}") from None
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise error(f"{path}: {what} is not a directory; {remedy}")
    _check_owner_only(path, info, what=what, chmod="700", remedy=remedy, error=error)
    return path


def private_file(path: Path, *, what: str, remedy: str, error: Error) -> Path:
    """``path``, a regular file of the user's that no one else can read or write."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found; {remedy}") from None
    except OSError as failure:
        raise error(f"{path}: cannot read {what}: {failure.strerror}; {remedy}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: {what} is not a regular file; {remedy}")
    _check_owner_only(path, info, what=what, chmod="600", remedy=remedy, error=error)
    return path


def _check_owner_only(path: Path, info: os.stat_result, *, what: str, chmod: str,
                      remedy: str, error: Error) -> None:
    if info.st_uid != os.getuid():
        raise error(f"{path}: {what} is owned by uid {info.st_uid}, not you "
                    f"(uid {os.getuid()}); {remedy}")
    if info.st_mode & 0o077:
        raise error(f"{path}: {what} is open to others (mode "
                    f"{stat.S_IMODE(info.st_mode):04o}); chmod {chmod} it, or {remedy}")
