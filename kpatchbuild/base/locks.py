"""Locks between processes (and threads) that share one cache: flock on a file.

flock belongs to the open file, so two threads of one process that each open the file
exclude each other as two processes do, and the kernel drops a lock whose holder died.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from kpatchbuild.base.commands import say


def _acquire(path: Path, waiting: str | None) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")  # noqa: SIM115 - held past this function
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if waiting:
            say(waiting)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


@contextmanager
def exclusive(path: Path, *, waiting: str | None = None) -> Iterator[None]:
    """Hold the lock file ``path`` for the block; say ``waiting`` when another holds it."""
    handle = _acquire(path, waiting)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


_HELD: dict[Path, IO[str]] = {}


def hold_for_process(path: Path, *, waiting: str | None = None) -> None:
    """Hold ``path`` until this process ends (once: a second call is a no-op)."""
    if path not in _HELD:
        _HELD[path] = _acquire(path, waiting)
