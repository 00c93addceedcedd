"""A fake kernel for the kpatch unit tests: a sysfs/proc tree that behaves like livepatch's.

It plays the kernel's part behind :class:`kpatchbuild.kpatch.system.System`: inserting a
livepatch module registers its patch (``/sys/kernel/livepatch/<name>`` with ``enabled`` 1,
``transition`` 1, one directory per object and ``<function>,<sympos>``), and transitions
finish as the fake clock advances (each ``sleep`` of the command is one tick), unless the
test makes a task stuck: that task stays in the state it was in when the transition began,
so a reversed transition can finish. Writing ``enabled``, ``force`` and ``signal`` follows
the kernel's own rules (kernel/livepatch/core.c): writing the current value of ``enabled``
is EINVAL, writing it during a transition reverses the transition, re-enabling a disabled
patch is EINVAL, ``force`` outside a transition is EINVAL. An atomic-replace patch retires
the other patches when its transition ends; a disabled or retired patch's directory
disappears and its module stays loaded until removed, which is refused (EBUSY) while its
patch is registered.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

from kpatchbuild.kpatch.modfile import parse_module
from kpatchbuild.kpatch.system import System

RELEASE = "6.1.0-56-cloud-amd64"
BUILD_ID = "3b43fad5034874490492495d552c0af6a5fab235"
TASKS = {1: "init", 100: "bash", 200: "sleeper"}
STUCK_PID = 200


def notes_with_build_id(build_id: str) -> bytes:
    """/sys/kernel/notes as the kernel shows it: a Xen note, then the GNU build id."""
    xen = struct.pack("<III", 4, 4, 6) + b"Xen\0" + b"\0" * 4
    desc = bytes.fromhex(build_id)
    return xen + struct.pack("<III", 4, len(desc), 3) + b"GNU\0" + desc


@dataclass
class FakePatch:
    name: str
    replace: bool
    enabled: bool = True


@dataclass
class Transition:
    name: str
    target: int  # 1: patching, 0: unpatching
    origin: int  # the state every task was in when it started; a stuck task stays there

    @property
    def blocked_by_stuck_task(self) -> bool:
        return self.target != self.origin


@dataclass
class FakeKernel:
    root: Path
    release: str = RELEASE
    build_id: str | None = BUILD_ID
    livepatch: bool = True
    has_signal_file: bool = False
    stuck: bool = False  # a task never switches unless forced (or signalled, see below)
    signal_unsticks: bool = True
    refuse_insert: int | None = None  # errno finit_module fails with
    verifies_signatures: bool = False  # a loaded module is not tainted E (signature checked)
    register_patch: bool = True  # False: an insert that registers no patch
    modules: list[str] = field(default_factory=list)  # newest first, as /proc/modules
    livepatch_modules: set[str] = field(default_factory=set)
    patches: dict[str, FakePatch] = field(default_factory=dict)
    transition: Transition | None = None
    now: float = 0.0
    signals: int = 0
    forced: list[str] = field(default_factory=list)
    inserted: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path("proc/sys/kernel").mkdir(parents=True)
        self.path("proc/sys/kernel/osrelease").write_text(self.release + "\n")
        self.path("sys/kernel").mkdir(parents=True)
        if self.build_id:
            self.path("sys/kernel/notes").write_bytes(notes_with_build_id(self.build_id))
        if self.livepatch:
            self.path("sys/kernel/livepatch").mkdir()
        for pid, comm in TASKS.items():
            self.path(f"proc/{pid}").mkdir()
            self.path(f"proc/{pid}/comm").write_text(comm + "\n")
        self._write_tasks()
        self._write_modules()

    def path(self, relative: str) -> Path:
        return self.root / relative

    def system(self, *, euid: int = 0) -> System:
        kernel = self

        class FakeSystem(System):
            def write_attribute(self, path: Path, value: str) -> None:
                kernel.write(path, value)

        # The files a test makes belong to whoever runs it: trusted like root's.
        return FakeSystem(root=self.root, loader=self, euid=lambda: euid,
                          sleep=self.sleep, monotonic=lambda: self.now,
                          trusted_owners=frozenset({0, os.geteuid()}))

    # --- the loader ---

    def insert(self, descriptor: int, module: Path) -> None:
        if self.refuse_insert is not None:
            raise OSError(self.refuse_insert, "refused")
        # As the kernel does: the bytes come from the descriptor, whatever the path is now.
        info = parse_module(module, os.pread(descriptor, 1 << 24, 0))
        if info.name in self.modules:
            raise OSError(errno.EEXIST, "File exists")
        self.inserted.append(module)
        self.modules.insert(0, info.name)
        if info.livepatch:
            self.livepatch_modules.add(info.name)
        if info.livepatch and self.register_patch:
            if self.transition is not None:
                self.modules.remove(info.name)
                raise OSError(errno.EBUSY, "another transition is in progress")
            patch_dir = self.path(f"sys/kernel/livepatch/{info.name}")
            patch_dir.mkdir()
            (patch_dir / "force").write_text("")
            if self.has_signal_file:
                (patch_dir / "signal").write_text("")
            for function in info.functions:
                obj = patch_dir / function.object
                obj.mkdir(exist_ok=True)
                (obj / "patched").write_text("1\n")
                (obj / function.sysfs_name()).mkdir()
            self.patches[info.name] = FakePatch(info.name, bool(info.replace))
            self.transition = Transition(info.name, 1, origin=0)
            self._write_patch(info.name)
        self._write_tasks()
        self._write_modules()

    def remove(self, name: str) -> None:
        if name not in self.modules:
            raise OSError(errno.ENOENT, "No such file or directory")
        if name in self.patches or name in self.forced:
            raise OSError(errno.EBUSY, "Device or resource busy")
        self.modules.remove(name)
        self._write_modules()

    # --- sysfs writes ---

    def write(self, path: Path, value: str) -> None:
        relative = path.relative_to(self.path("sys/kernel/livepatch"))
        name, attribute = relative.parts
        patch = self.patches.get(name)
        if patch is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        flag = value.strip() in ("1", "y", "Y")
        in_transition = self.transition is not None and self.transition.name == name
        if attribute == "enabled":
            if patch.enabled == flag:
                raise OSError(errno.EINVAL, "Invalid argument")
            if in_transition:
                patch.enabled = flag
                self.transition = Transition(name, int(flag), self.transition.origin)  # reversed
            elif not flag:
                if self.transition is not None:
                    raise OSError(errno.EBUSY, "Device or resource busy")
                patch.enabled = False
                self.transition = Transition(name, 0, origin=1)
            else:
                raise OSError(errno.EINVAL, "Invalid argument")
        elif attribute == "force":
            if not in_transition:
                raise OSError(errno.EINVAL, "Invalid argument")
            self.forced.append(name)
            self._finish_transition()
        elif attribute == "signal" and self.has_signal_file:
            self.signals += 1
            if self.signal_unsticks:
                self.stuck = False
        else:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        self._write_patch(name)
        self._write_tasks()

    # --- time ---

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.transition is not None and not (self.stuck and
                                                self.transition.blocked_by_stuck_task):
            self._finish_transition()

    def _finish_transition(self) -> None:
        transition = self.transition
        assert transition is not None
        self.transition = None
        patch = self.patches[transition.name]
        if transition.target == 0:
            self._retire(transition.name)
        elif patch.replace:
            for other in [n for n in self.patches if n != transition.name]:
                self._retire(other)
        if transition.name in self.patches:
            self._write_patch(transition.name)
        self._write_tasks()

    def _retire(self, name: str) -> None:
        del self.patches[name]
        shutil.rmtree(self.path(f"sys/kernel/livepatch/{name}"))

    # --- files ---

    def _write_patch(self, name: str) -> None:
        patch_dir = self.path(f"sys/kernel/livepatch/{name}")
        patch = self.patches[name]
        in_transition = self.transition is not None and self.transition.name == name
        (patch_dir / "enabled").write_text(f"{int(patch.enabled)}\n")
        (patch_dir / "transition").write_text(f"{int(in_transition)}\n")

    def _write_tasks(self) -> None:
        for pid in TASKS:
            if self.transition is None:
                state = -1
            elif self.stuck and pid == STUCK_PID:
                state = self.transition.origin
            else:
                state = self.transition.target
            self.path(f"proc/{pid}/patch_state").write_text(f"{state}\n")

    def _write_modules(self) -> None:
        lines = []
        for name in self.modules:
            flags = "O" + ("" if self.verifies_signatures else "E")
            taint = f" ({flags}K)" if name in self.livepatch_modules else f" ({flags})"
            lines.append(f"{name} 16384 0 - Live 0x0000000000000000{taint}")
        self.path("proc/modules").write_text("".join(f"{line}\n" for line in lines))
