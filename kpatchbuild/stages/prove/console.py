"""Reading a guest's console: step markers, kernel problems, taint, whether it ended.

The guest prints ``KPB-BEGIN <step>`` and ``KPB-STEP <step> ok|fail <detail>`` per step,
``KPB-INFO`` lines (taint at boot and at the end), its ``dmesg`` between
``KPB-DMESG-BEGIN``/``KPB-DMESG-END``, and ``KPB-END``. The host decides from this text
alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from kpatchbuild.stages.prove.qemu import QEMU

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


@dataclass(frozen=True)
class GuestStep:
    name: str
    ok: bool
    detail: str


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
