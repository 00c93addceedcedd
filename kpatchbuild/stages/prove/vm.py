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

Acceleration: TCG unless ``KPATCHBUILD_VM_ACCEL`` says ``kvm`` or ``auto``. With ``auto``,
KVM is used only after a probe boot under KVM (the same kernel, an initramfs that only
reboots) reaches its /init within KVM_PROBE_SECONDS; the answer is cached for the process.
On the machines this was developed on, /dev/kvm exists but a KVM boot hangs (the probe then
costs its 10 s), so the default is the emulator, which boots Debian's cloud kernel and runs
a whole proof in about 3 s.

The check runs in the guest under busybox ``sh``, with busybox's applets only (grep, cat,
test, ...): the initramfs holds nothing else.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kpatchbuild.base.errors import KpbError, VmProofError
from kpatchbuild.stages.prove import initramfs

BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"
ACCEL_ENV = "KPATCHBUILD_VM_ACCEL"
KERNEL_ARGS = "console=ttyS0 panic=-1 quiet"
MEMORY_MB = 512
# Guest-side bound on each wait for a livepatch transition or sysfs removal, in seconds.
# Transitions normally finish at once in an idle guest; the kernel retries stragglers
# every second.
GUEST_WAIT_SECONDS = 30
KVM_PROBE_SECONDS = 10.0
KVM_DEVICE = Path("/dev/kvm")

# Taint flags the proof itself sets (kernel/panic.c): O out-of-tree module (12),
# E unsigned module (13), K livepatch (15). Any other flag appearing during the proof
# (W warning, D oops, ...) is a failure.
TAINT_OUT_OF_TREE = 1 << 12
TAINT_UNSIGNED_MODULE = 1 << 13
TAINT_LIVEPATCH = 1 << 15
EXPECTED_TAINT = TAINT_OUT_OF_TREE | TAINT_UNSIGNED_MODULE | TAINT_LIVEPATCH
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTN"  # bit i -> letter, as in /proc/sys/kernel/tainted

# Console lines that mean the kernel went wrong. The expected taint messages ("loading
# out-of-tree module taints kernel", "module verification failed ... tainting kernel",
# "livepatch: ... tainting") match none of these.
PROBLEM_PATTERNS = (
    re.compile(r"Kernel panic - not syncing"),
    re.compile(r"\bBUG: "),
    re.compile(r"kernel BUG at "),
    re.compile(r"\bOops: "),
    re.compile(r"general protection fault"),
    re.compile(r"WARNING: (CPU: \d+ PID: \d+ )?at "),
    re.compile(r"Call Trace:"),
    re.compile(r"detected stalls? on CPU|self-detected stall"),
    re.compile(r"INFO: task \S+ blocked for more than"),
)

_STEP = re.compile(r"KPB-STEP (\S+) (ok|fail)(?: (.*))?$")
_BEGIN = re.compile(r"KPB-BEGIN (\S+)")
_INFO = re.compile(r"KPB-INFO (\S+) (.*)$")
_END = "KPB-END"
_PRINTK_TIME = re.compile(r"^\s*\[\s*\d+\.\d+\]\s*")
_DMESG_BEGIN = "KPB-DMESG-BEGIN"
_DMESG_END = "KPB-DMESG-END"


# --- the guest ---

@dataclass(frozen=True)
class GuestStep:
    name: str
    ok: bool
    detail: str


def module_name(module: Path) -> str:
    """The kernel's name for a module file: ``livepatch-sample.ko`` -> ``livepatch_sample``.

    For a livepatch module it is also the name of its /sys/kernel/livepatch directory.
    """
    return module.name.removesuffix(".ko").replace("-", "_")


def preload_step(module: Path) -> str:
    return f"preload:{module_name(module)}"


CHECK_STEPS = ("check-before", "check-patched", "check-after")


def expected_steps(preload: Sequence[Path] = (), *, with_check: bool = True) -> list[str]:
    """The steps a proof's guest runs, in order, each of which must report ``ok``.

    Without a check, what remains proves the module loads, completes its transition,
    disables and unloads cleanly (kernel problems and taint are judged from the console).
    """
    steps = [
        "mount",
        *(preload_step(path) for path in preload),
        "check-before",       # the check fails on the original kernel
        "insmod",
        "transition-enable",  # /sys/kernel/livepatch/<name>/transition reads 0
        "check-patched",      # the check passes
        "disable",            # 0 -> enabled
        "transition-disable",
        "sysfs-removed",      # /sys/kernel/livepatch/<name> is gone
        "rmmod",
        "check-after",        # the check fails again
    ]
    return steps if with_check else [step for step in steps if step not in CHECK_STEPS]


_GUEST_LIBRARY = r"""#!/bin/sh
# /init of a kpatchbuild proof: each step prints KPB-BEGIN/KPB-STEP lines for the host.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
LP=/sys/kernel/livepatch/$PATCH_NAME
TICKS=$((WAIT_SECONDS * 10))

begin() { CURRENT=$1; echo "KPB-BEGIN $1"; }
# A step's detail stays on its marker line, whatever the commands it quotes printed.
oneline() { echo "$*" | tr '\n' ' '; }
ok() { echo "KPB-STEP $CURRENT ok $(oneline "$*")"; }
finish() {
    echo "KPB-INFO taint-end $(cat /proc/sys/kernel/tainted 2>/dev/null)"
    echo "KPB-DMESG-BEGIN"
    dmesg
    echo "KPB-DMESG-END"
    echo "KPB-END"
    reboot -f
    sleep 60
}
fail() { echo "KPB-STEP $CURRENT fail $(oneline "$*")"; finish; }

# run_check: the recipe's check, its output prefixed so it can't pass for kernel messages.
run_check() {
    sh /kpb/check.sh > /tmp/check.out 2>&1
    CHECK_STATUS=$?
    sed 's/^/KPB-OUT /' /tmp/check.out
    return $CHECK_STATUS
}
expect_check_fails() {
    if run_check; then fail "the check passed (exit 0) $1; it must fail"; fi
    ok "check failed as expected (exit $CHECK_STATUS)"
}
expect_check_passes() {
    run_check || fail "the check failed (exit $CHECK_STATUS) $1; it must pass"
    ok "check passed"
}
# wait_until CONDITION...: poll every 0.1 s until CONDITION holds, at most WAIT_SECONDS.
wait_until() {
    i=0
    until "$@"; do
        i=$((i + 1))
        [ $i -gt $TICKS ] && return 1
        sleep 0.1
    done
}
transition_done() { [ "$(cat $LP/transition 2>/dev/null)" = 0 ]; }
transition_done_or_gone() { [ ! -e $LP/transition ] || transition_done; }
sysfs_gone() { [ ! -e $LP ]; }
try_rmmod() { rmmod $PATCH_NAME 2>/tmp/rmmod.err; }
"""

_GUEST_STEPS = r"""
begin mount
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev \
    || fail "could not mount proc, sysfs and devtmpfs"
echo "KPB-INFO taint-boot $(cat /proc/sys/kernel/tainted)"
[ -d /sys/kernel/livepatch ] || fail "no /sys/kernel/livepatch: the kernel lacks CONFIG_LIVEPATCH"
ok "kernel $(uname -r)"

for module in /kpb/preload/*.ko; do
    [ -e "$module" ] || continue
    name=$(basename "$module" .ko | sed "s/^[0-9]*-//" | tr - _)
    begin "preload:$name"
    out=$(insmod "$module" 2>&1) || fail "insmod $module failed (exit $?) $out"
    ok "loaded"
done

if [ -e /kpb/check.sh ]; then
    begin check-before
    expect_check_fails "before the patch"
fi

begin insmod
out=$(insmod /kpb/$MODULE_FILE 2>&1) || fail "insmod $MODULE_FILE failed (exit $?) $out"
[ -d $LP ] || fail "loaded, but there is no $LP (patch name $PATCH_NAME)"
ok "enabled=$(cat $LP/enabled)"

begin transition-enable
wait_until transition_done \
    || fail "transition still $(cat $LP/transition 2>&1) after ${WAIT_SECONDS}s"
ok "transition=0"

if [ -e /kpb/check.sh ]; then
    begin check-patched
    expect_check_passes "with the patch applied"
fi

begin disable
echo 0 > $LP/enabled || fail "could not write 0 to $LP/enabled"
ok "enabled <- 0"

begin transition-disable
wait_until transition_done_or_gone \
    || fail "transition still $(cat $LP/transition 2>&1) after ${WAIT_SECONDS}s"
ok "transition done"

begin sysfs-removed
wait_until sysfs_gone || fail "$LP still there after ${WAIT_SECONDS}s"
ok "$LP removed"

begin rmmod
# The module's last reference goes just after its sysfs directory: retry briefly.
wait_until try_rmmod || fail "rmmod $PATCH_NAME: $(cat /tmp/rmmod.err)"
ok "unloaded"

if [ -e /kpb/check.sh ]; then
    begin check-after
    expect_check_fails "after the patch was removed"
fi

finish
"""


def guest_init(module_file: str, patch_name: str, *,
               wait_seconds: int = GUEST_WAIT_SECONDS) -> str:
    """The ``/init`` script of a proof; the check itself is ``/kpb/check.sh``."""
    settings = (f"PATCH_NAME={shlex.quote(patch_name)}\n"
                f"MODULE_FILE={shlex.quote(module_file)}\n"
                f"WAIT_SECONDS={int(wait_seconds)}\n")
    head, _, body = _GUEST_LIBRARY.partition("\n")
    return f"{head}\n{settings}{body}{_GUEST_STEPS}"


_PROBE_INIT = """#!/bin/sh
/bin/busybox echo KPB-PROBE-OK
/bin/busybox reboot -f
"""


def _base_entries(init_script: str, busybox: Path) -> list[initramfs.Entry]:
    return [
        *(initramfs.directory(name) for name in
          ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "kpb")),
        # The kernel opens /dev/console for init's stdio before anything is mounted.
        initramfs.char_device("dev/console", 5, 1),
        initramfs.regular_file("bin/busybox", busybox.read_bytes(), 0o755),
        initramfs.symlink("bin/sh", "busybox"),
        initramfs.regular_file("init", init_script.encode(), 0o755),
    ]


def build_proof_initramfs(dest: Path, module: Path, check: str | None, *,
                          patch_name: str | None = None, preload: Sequence[Path] = (),
                          busybox: Path = BUSYBOX,
                          wait_seconds: int = GUEST_WAIT_SECONDS) -> Path:
    """Write the initramfs of a proof of ``module`` to ``dest`` and return ``dest``.

    It holds busybox, the generated ``/init``, the check (if any) as ``/kpb/check.sh``, the
    module as
    ``/kpb/<file name>`` and the ``preload`` modules as ``/kpb/preload/NN-<file name>``
    (loaded in the given order).
    """
    if not busybox.is_file():
        raise KpbError(f"{busybox} not found: install busybox-static (./run setup)")
    for path in (module, *preload):
        if not path.is_file():
            raise KpbError(f"module not found: {path}")
    name = patch_name or module_name(module)
    entries = _base_entries(guest_init(module.name, name, wait_seconds=wait_seconds), busybox)
    if check is not None:
        entries.append(initramfs.regular_file("kpb/check.sh", f"{check}\n".encode(), 0o755))
    entries.append(initramfs.regular_file(f"kpb/{module.name}", module.read_bytes()))
    entries.append(initramfs.directory("kpb/preload"))
    for index, path in enumerate(preload):
        entries.append(initramfs.regular_file(f"kpb/preload/{index:02d}-{path.name}",
                                              path.read_bytes()))
    return initramfs.write_initramfs(dest, entries)


# --- reading the console ---

@dataclass(frozen=True)
class ConsoleReport:
    """What a guest's console says: step markers, kernel problems, taint, whether it ended."""

    steps: tuple[GuestStep, ...]
    last_begun: str | None
    ended: bool
    problems: tuple[str, ...]
    info: dict[str, str] = field(default_factory=dict)
    dmesg: tuple[str, ...] = ()
    qemu_messages: tuple[str, ...] = ()  # qemu's own errors and warnings

    def step(self, name: str) -> GuestStep | None:
        return next((step for step in self.steps if step.name == name), None)

    def new_taint(self) -> int:
        """Taint flags set after boot that the proof does not explain (0 if unknown)."""
        try:
            boot = int(self.info.get("taint-boot", ""))
            end = int(self.info.get("taint-end", ""))
        except ValueError:
            return 0
        return end & ~boot & ~EXPECTED_TAINT


def taint_letters(flags: int) -> str:
    return "".join(letter for bit, letter in enumerate(TAINT_LETTERS) if flags & (1 << bit))


def parse_console(text: str) -> ConsoleReport:
    """Read a guest's console output (serial line endings and all)."""
    steps: list[GuestStep] = []
    problems: list[str] = []
    info: dict[str, str] = {}
    dmesg: list[str] = []
    qemu_messages: list[str] = []
    last_begun = None
    ended = in_dmesg = False
    for raw in text.splitlines():
        line = raw.replace("\r", "").rstrip()
        # Kernel messages can land in the middle of a line of the script's output, so
        # markers are searched for, not matched at the start.
        if match := _STEP.search(line):
            steps.append(GuestStep(match[1], match[2] == "ok", (match[3] or "").strip()))
            continue
        if match := _BEGIN.search(line):
            last_begun = match[1]
            continue
        if match := _INFO.search(line):
            info[match[1]] = match[2].strip()
            continue
        if _DMESG_BEGIN in line:
            in_dmesg = True
            continue
        if _DMESG_END in line:
            in_dmesg = False
            continue
        if line.strip() == _END:
            ended = True
            continue
        if "KPB-OUT " in line:
            continue  # the check's own output: whatever it says is not the kernel's
        if line.startswith(f"{QEMU}:"):
            qemu_messages.append(line)
        if in_dmesg:
            dmesg.append(line)
        if any(pattern.search(line) for pattern in PROBLEM_PATTERNS):
            problems.append(_PRINTK_TIME.sub("", line).strip())
    return ConsoleReport(tuple(steps), last_begun, ended, tuple(problems), info, tuple(dmesg),
                         tuple(qemu_messages))


def first_failure(report: ConsoleReport, expected: Sequence[str]) -> tuple[str, str] | None:
    """The first reason the proof failed, as (step, detail), or None if it succeeded."""
    for name in expected:
        step = report.step(name)
        if step is None:
            where = report.last_begun or "boot"
            if report.problems:
                return where, f"kernel problem: {report.problems[0]}"
            if report.last_begun is None and report.qemu_messages:
                return "boot", f"qemu: {report.qemu_messages[-1]}"
            return name, f"step never reported (the guest got as far as {where})"
        if not step.ok:
            detail = step.detail or "failed"
            if report.problems:
                detail += f"; kernel problem: {report.problems[0]}"
            return name, detail
    if report.problems:
        return "dmesg", f"kernel problem: {report.problems[0]}"
    if taint := report.new_taint():
        return "taint", (f"the kernel gained taint {taint_letters(taint)} ({taint}) "
                         "during the proof")
    if not report.ended:
        return "end", "the guest did not reach its end (no dmesg dump)"
    return None


# --- qemu ---

@dataclass(frozen=True)
class GuestRun:
    """One qemu run: how it ended and where its console is."""

    console_log: Path
    elapsed: float
    timed_out: bool
    returncode: int | None
    accel: str


def qemu_command(kernel: Path, initrd: Path, *, accel: str,
                 extra_args: str = "", qemu_args: Sequence[str] = ()) -> list[str]:
    """``extra_args`` go on the kernel's command line, ``qemu_args`` to qemu (devices)."""
    append = f"{KERNEL_ARGS} {extra_args}".strip()
    command = [QEMU, "-accel", accel, "-m", str(MEMORY_MB), "-smp", "1",
               "-nographic", "-no-reboot",
               "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
               *qemu_args]
    # No "-cpu host" under KVM: on these machines qemu 7.2 then aborts setting an MSR.
    return command


def run_guest(kernel: Path, initrd: Path, console_log: Path, *, accel: str,
              timeout: float, extra_args: str = "", qemu_args: Sequence[str] = ()) -> GuestRun:
    """Boot ``kernel`` with ``initrd`` and wait, at most ``timeout`` s, for qemu to exit.

    The serial console (and qemu's own messages) go to ``console_log``.
    """
    command = qemu_command(kernel, initrd, accel=accel, extra_args=extra_args,
                           qemu_args=qemu_args)
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
                                           _base_entries(_PROBE_INIT, BUSYBOX))
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


# --- the proof ---

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
                    timeout: float = 120.0, accel: str | None = None) -> ProofResult:
    """Prove ``module`` live-patches ``kernel``: boot it under qemu and run the steps.

    ``check`` is a shell command (run by busybox sh in the guest) that must fail before the
    patch, pass while it is applied and fail again once it is disabled and unloaded; None
    proves what can be proven without one (load, transition, disable, unload, no kernel
    problem). ``patch_name`` is the /sys/kernel/livepatch name, by default the module's name
    (``-`` -> ``_``). ``preload`` modules are loaded first, in order (for a patch to a
    module). ``workdir`` receives the initramfs and ``console.log``. ``accel`` overrides
    :func:`choose_accel`.

    Raises :class:`VmProofError` naming the failed step and the console log.
    """
    if not kernel.is_file():
        raise KpbError(f"kernel image not found: {kernel}")
    workdir.mkdir(parents=True, exist_ok=True)
    name = patch_name or module_name(module)
    initrd = build_proof_initramfs(workdir / "initramfs.cpio.gz", module, check,
                                   patch_name=name, preload=preload)
    accel = accel or choose_accel(kernel, workdir)
    console_log = workdir / "console.log"
    run = run_guest(kernel, initrd, console_log, accel=accel, timeout=timeout)
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
    if failure := first_failure(report, expected_steps(preload, with_check=check is not None)):
        raise failed(*failure)
    return ProofResult(name, report.steps, run.elapsed, accel, console_log, report.dmesg)


# --- a script in the guest ---

_SCRIPT_INIT = r"""#!/bin/sh
# /init of a guest script run: mount the kernel's file systems, run /kpb/script.sh, report.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev \
    || echo "KPB-SCRIPT-MOUNT-FAILED"
echo "KPB-SCRIPT-BEGIN"
sh /kpb/script.sh
echo "KPB-SCRIPT-END $?"
reboot -f
sleep 60
"""
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
    entries = _base_entries(_SCRIPT_INIT, busybox)
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
