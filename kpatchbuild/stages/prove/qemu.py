"""The qemu command that boots a kernel with an initramfs, and one run of it."""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base.errors import KpbError

QEMU = "qemu-system-x86_64"
KERNEL_ARGS = "console=ttyS0 panic=-1 quiet"
MEMORY_MB = 512


@dataclass(frozen=True)
class GuestRun:
    """One qemu run: how it ended and where its console is."""

    console_log: Path
    elapsed: float
    timed_out: bool
    returncode: int | None
    accel: str


def qemu_command(kernel: Path, initrd: Path, *, accel: str,
                 extra_args: str = "", qemu_args: Sequence[str] = (),
                 memory_mb: int = MEMORY_MB, network: bool = False) -> list[str]:
    """``extra_args`` go on the kernel's command line, ``qemu_args`` to qemu (devices).

    No network card unless ``network`` (qemu's user-mode network, NAT only): qemu would
    otherwise give the guest one, and the code under test a way out to the host's network.
    """
    append = f"{KERNEL_ARGS} {extra_args}".strip()
    nic = ["-nic", "user,model=virtio-net-pci"] if network else ["-nic", "none"]
    command = [QEMU, "-accel", accel, "-m", str(memory_mb), "-smp", "1",
               "-nographic", "-no-reboot", *nic,
               "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
               *qemu_args]
    # No "-cpu host" under KVM: on these machines qemu 7.2 then aborts setting an MSR.
    return command


def run_guest(kernel: Path, initrd: Path, console_log: Path, *, accel: str,
              timeout: float, extra_args: str = "", qemu_args: Sequence[str] = (),
              memory_mb: int = MEMORY_MB, network: bool = False) -> GuestRun:
    """Boot ``kernel`` with ``initrd`` and wait, at most ``timeout`` s, for qemu to exit.

    The serial console (and qemu's own messages) go to ``console_log``.
    """
    command = qemu_command(kernel, initrd, accel=accel, extra_args=extra_args,
                           qemu_args=qemu_args, memory_mb=memory_mb, network=network)
    console_log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with console_log.open("wb") as log:
        log.write(f"# {shlex.join(command)}\n".encode())
        log.flush()
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT)
        except FileNotFoundError:
            raise KpbError(f"{QEMU} not found: install qemu-system-x86 (./run setup)") from None
        try:
            returncode: int | None = process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            returncode, timed_out = None, True
    return GuestRun(console_log, time.monotonic() - start, timed_out, returncode, accel)
