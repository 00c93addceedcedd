"""TCG or KVM: KVM only when asked, and under ``auto`` only after a probe boot succeeds.

On the machines this was developed on, /dev/kvm exists but a KVM boot hangs (the probe then
costs its 10 s), so the default is the emulator, which boots Debian's cloud kernel and runs
a whole proof in about 3 s.
"""

from __future__ import annotations

import os
from pathlib import Path

from kpatchbuild.base.errors import KpbError
from kpatchbuild.stages.prove import initramfs
from kpatchbuild.stages.prove.guest import BUSYBOX, PROBE_INIT, base_entries
from kpatchbuild.stages.prove.qemu import run_guest

ACCEL_ENV = "KPATCHBUILD_VM_ACCEL"
KVM_PROBE_SECONDS = 10.0
KVM_DEVICE = Path("/dev/kvm")

_kvm_probe_results: dict[Path, bool] = {}


def probe_kvm(kernel: Path, workdir: Path, *, timeout: float = KVM_PROBE_SECONDS) -> bool:
    """Whether ``kernel`` boots to its initramfs under KVM within ``timeout`` seconds.

    A boot, not just opening /dev/kvm: on these machines /dev/kvm opens but a KVM boot hung.
    Cached per kernel for the life of the process.
    """
    kernel = kernel.resolve()
    if kernel in _kvm_probe_results:
        return _kvm_probe_results[kernel]
    usable = False
    if os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        workdir.mkdir(parents=True, exist_ok=True)
        initrd = initramfs.write_initramfs(workdir / "kvm-probe.cpio.gz",
                                           base_entries(PROBE_INIT, BUSYBOX))
        run = run_guest(kernel, initrd, workdir / "kvm-probe.log", accel="kvm", timeout=timeout)
        usable = (not run.timed_out
                  and "KPB-PROBE-OK" in run.console_log.read_text(errors="replace"))
    _kvm_probe_results[kernel] = usable
    return usable


def choose_accel(kernel: Path, workdir: Path) -> str:
    """``tcg`` or ``kvm``, from KPATCHBUILD_VM_ACCEL: ``tcg`` (default), ``kvm``, ``auto``."""
    wanted = os.environ.get(ACCEL_ENV, "tcg").strip().lower() or "tcg"
    if wanted in ("tcg", "kvm"):
        return wanted
    if wanted == "auto":
        return "kvm" if probe_kvm(kernel, workdir) else "tcg"
    raise KpbError(f"{ACCEL_ENV}={wanted!r}: expected tcg, kvm or auto")
