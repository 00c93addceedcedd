"""Running long external commands: full output to a log file, a progress line to the user.

A kernel build prints tens of thousands of lines (and, with one section per function,
thousands of linker warnings); none of that belongs in the terminal, all of it belongs in
the log. The user sees which step runs, for how long, and how far it got; on failure, the
last lines and the log's path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from kpatchbuild.base.errors import BuildError

PROGRESS_INTERVAL = float(os.environ.get("KPATCHBUILD_PROGRESS_SECONDS", "15"))
_COMPILE_LINE = re.compile(rb"^\s+(CC|AS|LD|AR|HOSTCC|CC \[M\])\s")


def say(message: str) -> None:
    """A progress line: to stderr, which doit passes through and pytest can capture."""
    print(message, file=sys.stderr, flush=True)


def format_elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Runner(Protocol):
    """Where a target's build commands run: on the host, or inside a build root that holds
    the exact compiler of the target's kernel. ``command`` turns a command and its working
    directory into what the host starts; the paths stay the same either way."""

    @property
    def name(self) -> str: ...

    def command(self, argv: Sequence[str | os.PathLike[str]], cwd: Path | None) -> list[str]: ...


class HostRunner:
    """Commands run as they are, on the host."""

    name = "the host"

    def command(self, argv: Sequence[str | os.PathLike[str]], cwd: Path | None) -> list[str]:
        return [os.fspath(a) for a in argv]


HOST = HostRunner()


def run_step(
    argv: Sequence[str | os.PathLike[str]],
    *,
    step: str,
    log: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    failure_hint: str = "",
    check: bool = True,
    runner: Runner = HOST,
) -> int:
    """Run ``argv`` appending all output to ``log``; raise BuildError naming the log on failure.

    With ``check=False`` a non-zero exit is the caller's to judge (``make -k`` passes whose
    failures are expected): it is returned, and nothing is printed.

    Every PROGRESS_INTERVAL seconds a line tells the step, elapsed time and, for builds, how
    many compile/link lines kbuild printed so far. ``runner`` says where it runs (a build
    root does not see ``env``: kbuild's settings go on make's command line).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tail: deque[bytes] = deque(maxlen=15)
    counted = 0
    with open(log, "ab") as sink:
        where = "" if runner is HOST else f" [in {runner.name}]"
        sink.write(f"\n$ (cd {cwd or os.getcwd()} && {' '.join(map(str, argv))}){where}\n"
                   .encode())
        sink.flush()
        try:
            process = subprocess.Popen(
                runner.command(argv, cwd), cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
        except FileNotFoundError:
            raise BuildError(f"{step}: command '{argv[0]}' not found; install it "
                             "(the README's set-up command does)") from None
        if input_text is not None:
            assert process.stdin is not None
            process.stdin.write(input_text.encode())
            process.stdin.close()
        stop = threading.Event()
        state = {"count": 0}

        def report_progress() -> None:
            while not stop.wait(PROGRESS_INTERVAL):
                elapsed = format_elapsed(time.monotonic() - started)
                done = f", {state['count']} objects" if state["count"] else ""
                say(f"  .. {step}: {elapsed}{done}")

        reporter = threading.Thread(target=report_progress, daemon=True)
        reporter.start()
        assert process.stdout is not None
        try:
            for line in process.stdout:
                sink.write(line)
                tail.append(line)
                if _COMPILE_LINE.match(line):
                    counted += 1
                    state["count"] = counted
            returncode = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            stop.set()
            reporter.join()
        sink.write(f"[exit {returncode} after {format_elapsed(time.monotonic() - started)}]\n"
                   .encode())
    if returncode != 0 and check:
        last = b"".join(tail).decode(errors="replace").rstrip()
        say(f"--- last lines of {log} ---\n{last}\n---")
        hint = f"; {failure_hint}" if failure_hint else ""
        raise BuildError(f"{step} failed (exit {returncode}); full log: {log}{hint}")
    return returncode
