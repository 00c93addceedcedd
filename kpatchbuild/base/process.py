"""Short external commands: run to completion, output captured, a failure as the caller's error.

Each caller knows what a failure means for its user (a recipe to fix, a package to fetch
again, a tool to install), so it names the error class and the remedy; how a failure is
told (the command's last line of complaint, or its exit status when it said nothing) and
how a missing command is told are the same everywhere. Long steps whose output belongs in
a log, with progress, are :func:`kpatchbuild.base.commands.run_step`'s.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kpatchbuild.base.errors import BuildError, KpbError

Argv = Sequence[str | os.PathLike[str]]
# Text, or bytes when the input was bytes.
Completed = subprocess.CompletedProcess[Any]
Verdict = Callable[[Completed], bool]


def exited_zero(result: Completed) -> bool:
    return result.returncode == 0


def last_complaint(result: Completed) -> str:
    """The last line the command wrote on stderr (else stdout), or its exit status."""
    for stream in (result.stderr, result.stdout):
        text = stream.decode(errors="replace") if isinstance(stream, bytes) else stream or ""
        lines = [line for line in text.strip().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return f"exit {result.returncode}"


def run(
    argv: Argv,
    *,
    error: Callable[[str], KpbError] = BuildError,
    what: str | None = None,
    hint: str = "",
    check: bool = True,
    succeeded: Verdict = exited_zero,
    explain: Callable[[Completed], str] | None = None,
    missing: str | None = None,
    cwd: Path | None = None,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Completed:
    """Run ``argv``; raise ``error`` when it fails (unless ``check`` is off).

    The message is ``"<what> failed: <last complaint>; <hint>"`` (``what`` is the command
    line by default), or ``explain(result)`` in place of the first part when the caller
    reads the output for a better reason. ``succeeded`` judges commands whose exit status
    does not say (lz4 complains at the kernel's trailing size word yet decompresses it
    all). A command that is not installed raises ``error(missing)``. Output is text unless
    ``input`` is bytes. ``env`` adds to (or overrides) this process's environment. A
    command still running after ``timeout`` seconds is killed and told as a failure.
    """
    command = [os.fspath(a) for a in argv]
    binary = isinstance(input, bytes)
    try:
        result = subprocess.run(command, cwd=cwd, input=input, capture_output=True,
                                text=not binary, timeout=timeout,
                                env={**os.environ, **env} if env is not None else None)
    except FileNotFoundError:
        raise error(missing or f"'{command[0]}' not found: install it (the README's set-up "
                    "command does)") from None
    except subprocess.TimeoutExpired:
        told = f"{what or ' '.join(command)} did not finish in {timeout:g} s and was stopped"
        raise error(f"{told}; {hint}" if hint else told) from None
    if check and not succeeded(result):
        told = explain(result) if explain else \
            f"{what or ' '.join(command)} failed: {last_complaint(result)}"
        raise error(f"{told}; {hint}" if hint else told)
    return result


def piped(producer: Argv, consumer: Argv, *, cwd: Path | None = None) -> Completed:
    """``producer | consumer``; the consumer's result (the producer's stderr is dropped).

    The producer may be cut off when the consumer stops reading (tar --occurrence): its
    status says nothing, so the caller judges by what the consumer made.
    """
    feeder = subprocess.Popen([os.fspath(a) for a in producer], cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert feeder.stdout is not None
    try:
        return subprocess.run([os.fspath(a) for a in consumer], cwd=cwd, stdin=feeder.stdout,
                              capture_output=True, text=True)
    finally:
        feeder.stdout.close()
        feeder.wait()
