"""One exception family for everything a user can get wrong or the system can refuse.

Errors are raised where they are found, carrying what they are about and an exit code,
and printed once, as one line, at the edge (the command line or doit's reporter). What a
whole step is about (the module it links, the kernel image it reads, its log) is said once,
by the step, with :func:`about`, not handed down to every function that might fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class KpbError(Exception):
    """A failure to report as one line; ``exit_code`` is what the process exits with."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0])

    def name_subject(self, subject: str, log: Path | None = None) -> None:
        """Say what the failure is about in front, and the log to read at the end."""
        message = self.message
        if subject and not message.startswith(f"{subject}:"):
            message = f"{subject}: {message}"
        if log is not None and str(log) not in message:
            message = f"{message}; log: {log}"
        self.args = (message, *self.args[1:])


@contextmanager
def about(subject: str, *, log: Path | None = None) -> Iterator[None]:
    """Every KpbError raised inside names ``subject`` first (and ``log`` last), once."""
    try:
        yield
    except KpbError as error:
        error.name_subject(subject, log)
        raise


class RecipeError(KpbError):
    """The recipe (or a file it names) is wrong: the user must edit it."""

    exit_code = 2


class FetchError(KpbError):
    """A package or source could not be had, or did not match what was asked for."""

    exit_code = 3


class BuildError(KpbError):
    """A configure, prepare or compile step failed; the message names its log."""

    exit_code = 4


class ToolchainError(KpbError):
    """The host's compiler or tools cannot produce objects that match the target kernel."""

    exit_code = 5


class VmProofError(KpbError):
    """The livepatch could not be proven in the VM; the message names the step and log."""

    exit_code = 6

    def __init__(self, message: str, *, step: str, console_log: Path) -> None:
        super().__init__(message)
        self.step = step
        self.console_log = console_log
