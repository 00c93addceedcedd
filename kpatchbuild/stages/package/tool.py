"""The ``kpatch`` package: the user-side command, its boot unit and initramfs-tools hooks.

It carries only what the command runs (the ``kpatchbuild.kpatch`` room and the few modules
of the ground floor it imports, found by reading their imports), as private modules under
``/usr/share/kpatch``; at run time it needs Debian's ``python3`` and ``python3-pyelftools``
(the module reader). Nothing else: modules are inserted with ``finit_module(2)``, not
kmod's tools.
"""

from __future__ import annotations

import argparse
import ast
import io
from contextlib import redirect_stdout
from pathlib import Path

from kpatchbuild.kpatch import cli, install
from kpatchbuild.stages.package.deb import DebSpec, File, gzip_n

PACKAGE = "kpatch"
SOURCE = Path(cli.__file__).resolve().parents[2]  # the directory holding kpatchbuild/
LIBRARY = "/usr/share/kpatch"
COMMAND = "/usr/sbin/kpatch"
ENTRY = "kpatchbuild.kpatch"
DEPENDS = ("python3 (>= 3.11)", "python3-pyelftools (>= 0.29)")

# -I: root's kpatch reads no PYTHON* variable, user site directory or working directory.
WRAPPER = f"""#!/usr/bin/python3 -I
# kpatch: manage livepatch modules on the running kernel (see kpatch(8)).
import sys

sys.path.insert(0, "{LIBRARY}")
from kpatchbuild.kpatch.cli import main  # noqa: E402

sys.exit(main())
"""

# debhelper's dh_installsystemd snippets, in short: enable the unit on the first
# configure (it runs only where /sys/kernel/livepatch exists and does nothing without
# installed patches), but never again once the admin disabled it: deb-systemd-helper's
# was-enabled is true on a first installation and afterwards tells what the admin chose.
POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] \\
        || [ "$1" = abort-remove ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper unmask kpatch.service >/dev/null || true
        if deb-systemd-helper --quiet was-enabled kpatch.service; then
            deb-systemd-helper enable kpatch.service >/dev/null || true
        else
            deb-systemd-helper update-state kpatch.service >/dev/null || true
        fi
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
fi
exit 0
"""

POSTRM = """#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = purge ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper purge kpatch.service >/dev/null || true
fi
exit 0
"""

DESCRIPTION = """\
kpatch loads, replaces and unloads kernel livepatch modules on the running system and
checks each against the running kernel first (release, build id, livepatch support). It
waits for the livepatch transition and rolls it back if it does not finish in time.

Patches installed under /var/lib/kpatch/<release>/ (by kpatch install or by kpatch-patch
packages) are loaded at every boot of their kernel by kpatch.service, and, where
initramfs-tools is used, from the initramfs right after the root filesystem is mounted."""


def command_modules() -> list[str]:
    """The command's modules as paths under SOURCE: its room and what it imports of ours,
    with the package ``__init__`` files on the way."""
    pending = [f"{ENTRY}.cli", f"{ENTRY}.__main__"]
    found: set[str] = set()
    while pending:
        name = pending.pop()
        if name in found:
            continue
        path = _module_path(name)
        if path is None:
            continue
        found.add(name)
        parts = name.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]
        pending += _imports_of_ours(path)
    return sorted(str(_module_path(name).relative_to(SOURCE))  # type: ignore[union-attr]
                  for name in found)


def _module_path(name: str) -> Path | None:
    base = SOURCE.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports_of_ours(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return [name for name in names if name.split(".")[0] == "kpatchbuild"]


def manual_page(version: str) -> str:
    """kpatch(8), from the command's own parser: its subcommands and their summaries."""
    parser = cli.build_parser()
    with redirect_stdout(io.StringIO()) as usage:
        parser.print_usage()
    commands = [f".TP\n.B {choice.dest}\n{_roff(choice.help or '')}\n"
                for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                for choice in action._choices_actions]
    return (f'.TH KPATCH 8 "" "kpatch {version}" "System Administration"\n'
            ".SH NAME\nkpatch \\- manage kernel livepatch modules on the running system\n"
            f".SH SYNOPSIS\n{_roff(usage.getvalue().removeprefix('usage: ').strip())}\n"
            f".SH DESCRIPTION\n{_roff(DESCRIPTION)}\n"
            ".SH COMMANDS\n" + "".join(commands) +
            f".SH SECURE BOOT\n{_roff(cli.SECURE_BOOT)}\n"
            ".SH FILES\n.TP\n.I /var/lib/kpatch/<release>/\ninstalled patch modules, "
            "loaded at boot by kpatch.service\n"
            ".TP\n.I /usr/share/kpatch/certs/<package>.der\nthe certificate of the key a "
            "patch package's modules are signed with, to enrol with mokutil\n"
            ".SH SEE ALSO\n.BR kpatch COMMAND \" \\-\\-help\"\n")


def _roff(text: str) -> str:
    lines = " ".join(text.split()).replace("\\", "\\\\").replace("-", "\\-")
    return lines if not lines.startswith((".", "'")) else f"\\&{lines}"


# Where a release's systemd units go: Debian 12's lintian wants them in /lib, Debian 13's
# (merged /usr, DEP 17) refuses /lib as an aliased location.
UNIT_DIRECTORIES = {"bookworm": "/lib/systemd/system", "trixie": "/usr/lib/systemd/system"}


def unit_path(codename: str) -> str:
    """The kpatch unit's path in the package for Debian release ``codename``."""
    return f"{UNIT_DIRECTORIES.get(codename, UNIT_DIRECTORIES['trixie'])}/kpatch.service"


def spec(version: str, codename: str = "bookworm") -> DebSpec:
    """The kpatch package for Debian release ``codename``."""
    files: dict[str, File] = {
        f"{LIBRARY}/{relative}": File((SOURCE / relative).read_bytes())
        for relative in command_modules()}
    files[COMMAND] = File(WRAPPER.encode(), 0o755)
    files[unit_path(codename)] = File(install.unit_text(COMMAND).encode())
    files[install.PACKAGED_INITRAMFS_HOOK] = File(install.INITRAMFS_HOOK_TEXT.encode(), 0o755)
    files[install.PACKAGED_INITRAMFS_SCRIPT] = File(install.INITRAMFS_SCRIPT_TEXT.encode(),
                                                    0o755)
    files["/usr/share/man/man8/kpatch.8.gz"] = File(gzip_n(manual_page(version).encode()))
    return DebSpec(
        package=PACKAGE, version=version, architecture="all",
        summary="manage kernel livepatch modules on the running system",
        description=DESCRIPTION, section="admin", depends=DEPENDS, files=files,
        scripts={"postinst": POSTINST, "postrm": POSTRM},
        # The initramfs gains the hook's insmod and script at its next rebuild: now.
        triggers=("activate-noawait update-initramfs",),
        changes=(f"kpatch command {version}.",))
