"""The kpatch command's failures and their exit codes.

Each refusal is one line naming what it is about and what to do; the code tells a script
(a package's post-install hook, the boot unit) what kind of failure it was without parsing
the line. argparse's own usage errors exit with 2.
"""

from __future__ import annotations

from kpatchbuild.base.errors import KpbError

EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "bad input: no such file or patch, not a livepatch module, nothing to do",
    2: "usage error (unknown subcommand or option)",
    3: "not running as root",
    4: "the running kernel has no livepatch support (/sys/kernel/livepatch)",
    5: "the module was built for another kernel",
    6: "a livepatch transition did not finish in time (the message says if it was rolled back)",
    7: "the kernel refused an operation (module load or removal, a sysfs write)",
    8: "the kernel does not trust the module's signature (Secure Boot lockdown or "
       "module.sig_enforce): enrol its signer's certificate; the system is as it was",
}


class KpatchError(KpbError):
    """Bad input: a missing file or patch, a module that is not a livepatch module."""

    exit_code = 1


class NotRootError(KpatchError):
    exit_code = 3


class NoLivepatchError(KpatchError):
    exit_code = 4


class WrongKernelError(KpatchError):
    exit_code = 5


class TransitionTimeoutError(KpatchError):
    exit_code = 6


class KernelRefusedError(KpatchError):
    exit_code = 7


class UntrustedSignatureError(KernelRefusedError):
    """The kernel refused the module for its signature: nothing changed, and a later load
    (or the boot) succeeds once the signer's certificate is enrolled."""

    exit_code = 8


def exit_codes_text() -> str:
    """The exit codes as the ``--help`` epilog and the README list them."""
    return "exit codes:\n" + "\n".join(f"  {code}  {meaning}"
                                       for code, meaning in EXIT_CODES.items())
