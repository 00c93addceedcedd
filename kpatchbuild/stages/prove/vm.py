"""Proof in a VM: boot the target's original kernel under qemu and exercise a livepatch.

Besides the proof, :func:`run_guest_script` boots a kernel with any files and a shell
script and returns the console, and :func:`guest_python` lays the host's Python out for such
a guest (the kpatch command's integration test runs the real command that way).

Knows nothing of recipes, doit or the store: it takes paths (a kernel image, the livepatch
module, modules to load first) and a check command, and returns a :class:`ProofResult` or
raises :class:`VmProofError`.

The guest is a busybox-static initramfs whose generated ``/init`` runs the proof's steps
and prints one marker line per step on the serial console::

    KPB-BEGIN <step>
    KPB-STEP <step> ok|fail <detail>

then dumps ``dmesg`` between ``KPB-DMESG-BEGIN``/``KPB-DMESG-END`` and reboots (qemu runs
with ``-no-reboot``, so that ends it). The host keeps the whole console in a log file and
decides from it alone: every expected step must be there and ``ok``, the guest must reach
its end, and neither the console nor dmesg may show a panic, oops, BUG, WARNING, call trace
or RCU stall, nor the kernel gain taint flags other than the ones loading an out-of-tree,
unsigned livepatch module sets.

The pieces, by name: ``guest.py`` (the initramfs's contents and the proof's steps, whose
shell scripts are files in ``guest/``), ``qemu.py`` (the qemu command and one run),
``accel.py`` (TCG, or KVM after a probe boot), ``console.py`` (reading the console) and,
here, the proof and its result.

The check runs in the guest under busybox ``sh``, with busybox's applets only (grep, cat,
test, ...): the initramfs holds nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base.errors import KpbError, VmProofError
from kpatchbuild.stages.prove import initramfs
from kpatchbuild.stages.prove.accel import choose_accel
from kpatchbuild.stages.prove.console import GuestStep, first_failure, parse_console
from kpatchbuild.stages.prove.guest import (
    BUSYBOX,
    SCRIPT_INIT,
    base_entries,
    build_proof_initramfs,
    expected_steps,
    module_name,
    refused_step,
)
from kpatchbuild.stages.prove.qemu import run_guest

__all__ = ["ProofResult", "ScriptRun", "expected_steps", "module_name", "prove_livepatch",
           "refused_step", "run_guest_script"]


@dataclass(frozen=True)
class ProofResult:
    """A successful proof: every step's report, the qemu run time and the console log."""

    patch_name: str
    steps: tuple[GuestStep, ...]
    elapsed: float
    accel: str
    console_log: Path
    dmesg: tuple[str, ...]


def prove_livepatch(kernel: Path, module: Path, check: str | None, *, workdir: Path,
                    patch_name: str | None = None, preload: Sequence[Path] = (),
                    refused: Sequence[tuple[str, Path]] = (), kernel_args: str = "",
                    timeout: float = 120.0, accel: str | None = None,
                    network: bool = False) -> ProofResult:
    """Prove ``module`` live-patches ``kernel``: boot it under qemu and run the steps.

    ``check`` is a shell command (run by busybox sh in the guest) that must fail before the
    patch, pass while it is applied and fail again once it is disabled and unloaded; None
    proves what can be proven without one (load, transition, disable, unload, no kernel
    problem). ``patch_name`` is the /sys/kernel/livepatch name, by default the module's name
    (``-`` -> ``_``). ``preload`` modules are loaded first, in order (for a patch to a
    module). ``refused`` (label, file) are copies of the module the kernel must refuse,
    each tried before the module itself (booted with ``kernel_args`` such as
    ``module.sig_enforce=1``); each refusal's words are its step's detail. ``workdir``
    receives the initramfs and ``console.log``. ``accel`` overrides :func:`choose_accel`.
    The guest has no network card unless ``network``.

    Raises :class:`VmProofError` naming the failed step and the console log.
    """
    if not kernel.is_file():
        raise KpbError(f"kernel image not found: {kernel}")
    workdir.mkdir(parents=True, exist_ok=True)
    name = patch_name or module_name(module)
    initrd = build_proof_initramfs(workdir / "initramfs.cpio.gz", module, check,
                                   patch_name=name, preload=preload, refused=refused)
    accel = accel or choose_accel(kernel, workdir)
    console_log = workdir / "console.log"
    run = run_guest(kernel, initrd, console_log, accel=accel, timeout=timeout, network=network,
                    extra_args=kernel_args)
    report = parse_console(console_log.read_text(errors="replace"))

    def failed(step: str, detail: str) -> VmProofError:
        return VmProofError(f"VM proof of {name}: {step}: {detail} (console log: {console_log})",
                            step=step, console_log=console_log)

    if run.timed_out:
        where = report.last_begun or "boot"
        detail = f"timed out after {timeout:g} s during step {where}"
        if report.problems:
            detail += f" (kernel problem: {report.problems[0]})"
        raise failed(where, detail)
    expected = expected_steps(preload, with_check=check is not None,
                              refused=[label for label, _ in refused])
    if failure := first_failure(report, expected):
        raise failed(*failure)
    return ProofResult(name, report.steps, run.elapsed, accel, console_log, report.dmesg)


# --- a script in the guest ---

_SCRIPT_END = re.compile(r"KPB-SCRIPT-END (\d+)")


@dataclass(frozen=True)
class ScriptRun:
    """A guest script's run: its whole console, and how it ended."""

    console: str
    console_log: Path
    elapsed: float
    timed_out: bool
    exit_status: int | None  # the script's, None if the guest never got to its end
    accel: str

    @property
    def problems(self) -> tuple[str, ...]:
        """Kernel problems (panic, oops, WARNING...) the console shows."""
        return parse_console(self.console).problems


def run_guest_script(kernel: Path, script: str, *, workdir: Path,
                     files: Sequence[initramfs.Entry] = (), timeout: float = 120.0,
                     accel: str | None = None, qemu_args: Sequence[str] = (),
                     busybox: Path = BUSYBOX) -> ScriptRun:
    """Boot ``kernel`` with a busybox initramfs holding ``files`` and run ``script`` in it.

    The script runs under busybox ``sh`` as ``/kpb/script.sh`` once /proc, /sys and /dev are
    mounted; ``files`` are added to the initramfs (missing parent directories are made).
    ``workdir`` receives the initramfs and ``console.log``, which is kept for the caller to
    name in its messages. What the script prints is on the console: give it markers to parse.
    ``qemu_args`` add devices (a shared directory, a disk).
    """
    if not kernel.is_file():
        raise KpbError(f"kernel image not found: {kernel}")
    if not busybox.is_file():
        raise KpbError(f"{busybox} not found: install busybox-static (./run setup)")
    workdir.mkdir(parents=True, exist_ok=True)
    entries = base_entries(SCRIPT_INIT, busybox)
    entries.append(initramfs.regular_file("kpb/script.sh", script.encode(), 0o755))
    initrd = initramfs.write_initramfs(workdir / "initramfs.cpio.gz",
                                       initramfs.with_parents([*entries, *files]))
    accel = accel or choose_accel(kernel, workdir)
    console_log = workdir / "console.log"
    run = run_guest(kernel, initrd, console_log, accel=accel, timeout=timeout,
                    qemu_args=qemu_args)
    console = console_log.read_text(errors="replace")
    ended = _SCRIPT_END.search(console)
    return ScriptRun(console, console_log, run.elapsed, run.timed_out,
                     int(ended[1]) if ended else None, accel)
