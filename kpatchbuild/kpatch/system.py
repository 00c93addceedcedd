"""The running system as kpatch sees it: files under a root, two module syscalls, a clock.

Everything kpatch reads or writes goes through :class:`System`: ``/sys/kernel/livepatch``,
``/proc/modules``, ``/proc/<pid>/patch_state``, ``/sys/kernel/notes``, ``/var/lib/kpatch``
and the boot hooks are all paths under ``System.root`` (``/``, or ``$KPATCH_ROOT``), and
inserting or removing a module goes through its ``loader``. Unit tests give it a fake tree
and a fake loader that plays the kernel's part; the real command gives it ``/`` and
:class:`SyscallLoader`. A root other than ``/`` never gets the real loader: its sysfs and
/proc are not the running kernel's, so no check made there may decide what the kernel
loads (``$KPATCH_ROOT`` serves images and inspection: install, uninstall, list, info).
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kpatchbuild.base.notes import build_id_in_notes
from kpatchbuild.kpatch.errors import KpatchError
from kpatchbuild.kpatch.trust import kernel_release

ROOT_ENV = "KPATCH_ROOT"

# x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
SYS_DELETE_MODULE = 176
SYS_FINIT_MODULE = 313


class ModuleLoader(Protocol):
    """Inserts and removes kernel modules; failures raise OSError with the kernel's errno.

    A module is inserted from the open descriptor it was read and checked through, never
    opened again by path (``path`` is for messages)."""

    def insert(self, descriptor: int, path: Path) -> None: ...

    def remove(self, name: str) -> None: ...


class SyscallLoader:
    """The real thing: ``finit_module(2)`` and ``delete_module(2)`` through libc's syscall().

    Python has no binding for either, and calling them directly keeps kpatch free of kmod's
    tools (and of their search paths: the module is the file named, nothing else).
    """

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long

    def insert(self, descriptor: int, path: Path) -> None:
        self._call(SYS_FINIT_MODULE, ctypes.c_int(descriptor), ctypes.c_char_p(b""),
                   ctypes.c_int(0))

    def remove(self, name: str) -> None:
        # O_NONBLOCK: fail with EWOULDBLOCK/EBUSY at once rather than wait for users to go.
        self._call(SYS_DELETE_MODULE, ctypes.c_char_p(name.encode()),
                   ctypes.c_uint(os.O_NONBLOCK))

    def _call(self, number: int, *args: object) -> None:
        if self._libc.syscall(ctypes.c_long(number), *args) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))


class NoLoader:
    """The loader of a root that is not the running system's: every call is refused."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _refuse(self) -> None:
        raise KpatchError(f"{ROOT_ENV}={self.root} is set: its /sys and /proc are not the "
                          "running kernel's, so kpatch inserts and removes no module under "
                          f"it; unset {ROOT_ENV} to act on this system")

    def insert(self, descriptor: int, path: Path) -> None:
        self._refuse()

    def remove(self, name: str) -> None:
        self._refuse()


@dataclass(frozen=True)
class LoadedModule:
    """One line of /proc/modules, newest first there."""

    name: str
    refcount: int
    taint: str  # the flags in parentheses, e.g. "OEK"; K marks a livepatch module

    @property
    def is_livepatch(self) -> bool:
        return "K" in self.taint


@dataclass
class System:
    """The machine kpatch acts on. Paths given to :meth:`path` are absolute system paths."""

    root: Path = Path("/")
    loader: ModuleLoader = field(default_factory=SyscallLoader)
    euid: Callable[[], int] = os.geteuid
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    # Who may own the files root acts on (modules, the boot unit's interpreter): root.
    trusted_owners: frozenset[int] = frozenset({0})

    @classmethod
    def from_environment(cls) -> System:
        """``/`` with the real syscalls, or ``$KPATCH_ROOT`` (an image or a tree to inspect)
        with a loader that refuses."""
        root = Path(os.environ.get(ROOT_ENV) or "/")
        if root.resolve() == Path("/"):
            return cls()
        return cls(root=root, loader=NoLoader(root))

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    @property
    def livepatch_dir(self) -> Path:
        return self.path("/sys/kernel/livepatch")

    def patch_dir(self, name: str) -> Path:
        return self.livepatch_dir / name

    def is_root(self) -> bool:
        return self.euid() == 0

    def release(self) -> str:
        """The running kernel's release (``uname -r``), as /proc tells it."""
        path = self.path("/proc/sys/kernel/osrelease")
        try:
            release = path.read_text().strip()
        except OSError:
            if self.root != Path("/"):
                raise KpatchError(f"{path}: cannot read the kernel release under "
                                  f"{ROOT_ENV}={self.root}") from None
            release = os.uname().release  # /proc not mounted: the system call still knows
        # It names directories (/var/lib/kpatch/<release>).
        return kernel_release(release, str(path))

    def build_id(self) -> str | None:
        """The running kernel's GNU build id from ``/sys/kernel/notes``, if it has one."""
        try:
            notes = self.path("/sys/kernel/notes").read_bytes()
        except OSError:
            return None
        return build_id_in_notes(notes)

    def loaded_modules(self) -> list[LoadedModule]:
        """Every loaded module, newest first (the order of /proc/modules)."""
        try:
            text = self.path("/proc/modules").read_text()
        except FileNotFoundError:
            return []  # a kernel without module support lists none
        modules = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            taint = fields[-1][1:-1] if fields[-1].startswith("(") else ""
            modules.append(LoadedModule(fields[0], int(fields[2]), taint))
        return modules

    def loaded_module(self, name: str) -> LoadedModule | None:
        return next((m for m in self.loaded_modules() if m.name == name), None)

    def patch_names(self) -> list[str]:
        """The patches /sys/kernel/livepatch lists (loaded modules that registered one)."""
        if not self.livepatch_dir.is_dir():
            return []
        return sorted(p.name for p in self.livepatch_dir.iterdir() if p.is_dir())

    def read_attribute(self, path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except OSError:
            return None

    def write_attribute(self, path: Path, value: str) -> None:
        """Write a sysfs attribute as ``echo value > path`` would (one write, no truncation
        tricks: sysfs takes the value from the single write call)."""
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def task_states(self) -> list[tuple[int, str, int]]:
        """(pid, comm, patch_state) of every task; patch_state is -1 outside a transition."""
        tasks = []
        proc = self.path("/proc")
        for entry in proc.iterdir() if proc.is_dir() else ():
            if not entry.name.isdigit():
                continue
            state = self.read_attribute(entry / "patch_state")
            if state is None or not state.lstrip("-").isdigit():
                continue  # gone meanwhile, or a kernel without livepatch
            comm = self.read_attribute(entry / "comm") or "?"
            tasks.append((int(entry.name), comm, int(state)))
        return sorted(tasks)


def errno_name(error: OSError) -> str:
    """``EBUSY (Device or resource busy)``: the kernel's word, for a one-line message."""
    code = error.errno or 0
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"
