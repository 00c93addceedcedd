"""kbuild, spoken to from Python: make invocations, the compiler check, and ``.cmd`` files.

Knows nothing of recipes or the store: it takes a tree and arguments and runs make.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base import process
from kpatchbuild.base.commands import HOST, Runner, run_step
from kpatchbuild.base.errors import ToolchainError

# The differ correlates functions and data by section, so every object is built with one
# section per function and per data object.
KCFLAGS = "-ffunction-sections -fdata-sections"
PIN_FILE = "GNUmakefile"


def jobs() -> int:
    return int(os.environ.get("KPATCHBUILD_JOBS") or os.cpu_count() or 1)


def make_command(tree: Path, *targets: str, parallel: bool = True) -> list[str]:
    """``make`` in ``tree`` with the flags every kpatchbuild compile uses."""
    command = ["make", "-C", str(tree), f"KCFLAGS={KCFLAGS}"]
    if parallel:
        command.append(f"-j{jobs()}")
    return [*command, *targets]


def make(tree: Path, *targets: str, step: str, log: Path, runner: Runner = HOST) -> None:
    run_step(make_command(tree, *targets), step=step, log=log, runner=runner)


def pin_release(tree: Path, release: str) -> None:
    """Make the tree stand for ``release`` for every make run in it, by anyone.

    Debian builds its kernels passing KERNELRELEASE=6.1.0-56-cloud-amd64 to make, while the
    source says 6.1.192. kbuild derives the release from KERNELVERSION (and reports it with
    ``make kernelrelease``), so a GNUmakefile, which GNU make reads before the Makefile,
    pins KERNELVERSION: prepare, single-object builds and ``M=`` module builds then all agree
    with the image, and no caller can forget. VERSION/PATCHLEVEL/SUBLEVEL, which the code
    sees through LINUX_VERSION_CODE, stay untouched.

    Since 6.6 the top Makefile re-runs itself (``-f Makefile``, so without this file) unless
    MAKEFLAGS holds ``--no-print-directory``; setting it keeps the one make that reads the
    pin the one that builds.
    """
    (tree / PIN_FILE).write_text(
        f"# Written by kpatchbuild: this tree stands for the kernel release {release}.\n"
        f"override KERNELVERSION := {release}\n"
        "MAKEFLAGS += --no-print-directory\n"
        "include Makefile\n"
    )


def kernelrelease(tree: Path, runner: Runner = HOST) -> str:
    return str(process.run(runner.command(["make", "-s", "-C", str(tree), "kernelrelease"],
                                          None)).stdout).strip()


# --- the compiler ---

@dataclass(frozen=True)
class CompilerVersion:
    """``gcc (Debian 12.2.0-14+deb12u1) 12.2.0`` -> package ``12.2.0-14+deb12u1``, ``12.2.0``."""

    text: str
    package: str | None
    version: str

    def matches(self, other: CompilerVersion) -> bool:
        # The driver's name differs (gcc-12, x86_64-linux-gnu-gcc-12, gcc) for one compiler.
        return self.version == other.version and self.package == other.package


_PARENS = re.compile(r"\(([^()]*)\)")
_PACKAGE_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)?-\S+)$")
_RELEASE = re.compile(r"\b(\d+\.\d+(?:\.\d+)?)\b")


def parse_compiler_text(text: str) -> CompilerVersion:
    """Read ``gcc --version``'s first line, or CONFIG_CC_VERSION_TEXT, in any distro's shape.

    The release is the first version outside parentheses; the package version is the last
    word of a parenthesised group that looks like ``12.2.0-14+deb12u1`` (Debian) or
    ``13.2.1-4`` (Red Hat), which tells two builds of one release apart.
    """
    text = text.strip().strip('"')
    package = None
    for group in _PARENS.findall(text):
        found = _PACKAGE_VERSION.search(group.strip())
        if found:
            package = found.group(1)
    release = _RELEASE.search(_PARENS.sub(" ", text))
    return CompilerVersion(text, package, release.group(1) if release else text)


def host_compiler(cc: str = "gcc") -> CompilerVersion:
    output = process.run([cc, "--version"], error=ToolchainError, check=False,
                         missing=f"compiler '{cc}' not found; install gcc "
                         "(the README's set-up command does)").stdout
    return parse_compiler_text(output.splitlines()[0] if output else "")


# --- which objects kbuild compiles in a directory ---

# A flag no recorded command has: every object's command line differs from its record, so
# kbuild's if_changed reports all of them, the ones compiled before included.
DRY_RUN_FLAG = "-DKPATCHBUILD_DRY_RUN"
_COMPILE_ECHO = re.compile(r"echo '  CC(?: \[M\])?\s+(\S+\.o)'")


def dry_run_command(tree: Path, directory: str) -> list[str]:
    """``make -n`` of ``directory`` (and below): kbuild prints each object it would compile."""
    return ["make", "-C", str(tree), "-n", f"KCFLAGS={KCFLAGS} {DRY_RUN_FLAG}",
            f"{directory.rstrip('/')}/"]


def compiled_objects(dry_run_output: str) -> set[str]:
    """The objects a dry run of kbuild says it compiles, as paths in the tree.

    kbuild writes objects of a parent's composite lists relative to the parent's directory
    (``arch/x86/kvm/../../../virt/kvm/kvm_main.o``): normalized here.
    """
    return {os.path.normpath(found) for found in _COMPILE_ECHO.findall(dry_run_output)}


def objects_in(tree: Path, directory: str, runner: Runner = HOST) -> set[str]:
    """The objects kbuild compiles under ``directory`` with the tree's config: kbuild's own
    answer, which knows a parent's ``kvm-amd-y += svm/nested.o`` and every generated list,
    where a reading of Makefiles would not."""
    result = process.run(runner.command(dry_run_command(tree, directory), None),
                         what=f"make -n {directory}/ in {tree}")
    return compiled_objects(str(result.stdout))


# --- kbuild's records of how each object was made ---

@dataclass(frozen=True)
class ObjectRecord:
    """What ``.<name>.o.cmd`` says: the command that built the object and every input it read."""

    target: str
    command: str
    sources: tuple[str, ...]

    @property
    def shell_command(self) -> str:
        """The command as a shell runs it: the record holds it as a make variable, where
        ``$$`` is ``$`` and ``\\#`` is ``#``."""
        return self.command.replace("$$", "$").replace("\\#", "#")


_CMD_LINE = re.compile(r"^(?:savedcmd|cmd)_(\S+) := (.*)$", re.MULTILINE)
_SOURCE_LINE = re.compile(r"^source_\S+ := (\S+)$", re.MULTILINE)
_DEPS_BLOCK = re.compile(r"^deps_\S+ := \\\n(.*?)(?:\n\n|\Z)", re.MULTILINE | re.DOTALL)


def read_cmd_file(path: Path) -> ObjectRecord:
    text = path.read_text(errors="replace")
    command = _CMD_LINE.search(text)
    if not command:
        raise ValueError(f"{path}: no cmd_ line")
    inputs: list[str] = []
    source = _SOURCE_LINE.search(text)
    if source:
        inputs.append(source.group(1))
    deps = _DEPS_BLOCK.search(text)
    if deps:
        for line in deps.group(1).splitlines():
            item = line.strip().rstrip("\\").strip()
            if item and not item.startswith("$(wildcard"):
                inputs.append(item)
    return ObjectRecord(command.group(1), command.group(2), tuple(dict.fromkeys(inputs)))


def object_records(tree: Path) -> dict[str, ObjectRecord]:
    """Every compiled object's record in a built tree, by the object's path in the tree."""
    records = {}
    for directory, subdirs, files in os.walk(tree):
        subdirs[:] = [d for d in subdirs if d not in (".git", "tools", "Documentation")]
        for name in files:
            if name.startswith(".") and name.endswith(".o.cmd"):
                record = read_cmd_file(Path(directory, name))
                records[record.target] = record
    return records


# The tools Kconfig asks about while configuring (their versions become config options).
CONFIG_TOOLS = ("gcc", "ld", "as", "pahole", "rustc", "bindgen")


def toolchain_fingerprint() -> dict[str, int | None]:
    """Which of CONFIG_TOOLS are installed, and when each changed: cheap enough to check on
    every run, so a configuration is made again when a tool is installed or upgraded."""
    found: dict[str, int | None] = {}
    for tool in CONFIG_TOOLS:
        path = shutil.which(tool)
        found[tool] = Path(path).resolve().stat().st_mtime_ns if path else None
    return found


# --- which config option builds an object ---

_ASSIGNMENT = re.compile(r"^\s*([\w.-]*(?:\$\([^)]*\))?[\w.-]*)\s*[:+]?=\s*(.*)$", re.M)
_OPTION = re.compile(r"CONFIG_\w+")


def unbuilt_reason(tree: Path, obj: str, config: str) -> str | None:
    """Why kbuild does not build ``obj`` with ``config`` (the .config text), or None.

    Reads the object's Makefile line (``obj-$(CONFIG_FOO) += foo.o``, or a composite's
    ``bar-$(CONFIG_FOO) += foo.o`` and then bar.o's own line) and each parent directory's
    (``obj-$(CONFIG_FOO) += dir/``): the first option none of whose lines is enabled is the
    reason, e.g. "CONFIG_FOO is not set". Objects whose Makefiles say nothing decisive (no
    Makefile, generated lists) are taken to be built: the compile then says more.
    """
    enabled = set(re.findall(r"^(CONFIG_\w+)=[ym]$", config, re.M))
    path = Path(obj)
    reason = _unset_guard(tree / path.parent, f"{path.stem}.o", enabled, depth=0)
    if reason:
        return reason
    directory = path.parent
    while directory.parent != directory and str(directory) not in ("", "."):
        reason = _unset_guard(tree / directory.parent, f"{directory.name}/", enabled, depth=0)
        if reason:
            return reason
        directory = directory.parent
    return None


def _unset_guard(directory: Path, target: str, enabled: set[str], depth: int) -> str | None:
    text = ""
    for name in ("Kbuild", "Makefile"):
        if (directory / name).is_file():
            text = (directory / name).read_text(errors="replace").replace("\\\n", " ")
            break
    guards: list[set[str]] = []
    for variable, value in _ASSIGNMENT.findall(text):
        if target not in value.split():
            continue
        options = set(_OPTION.findall(variable))
        composite = re.match(r"^([\w.-]+?)-(?:\$\(|y$|objs$|m$)", variable)
        if composite and composite.group(1) not in ("obj", "lib", "subdir", "core", "libs"):
            # A part of bar.o (bar-y, bar-objs, bar-$(CONFIG_X)): bar.o's own line decides too.
            if depth < 3:
                inner = _unset_guard(directory, composite.group(1) + ".o", enabled, depth + 1)
                if inner:
                    options.add(inner.split()[0])
        guards.append(options)
    if not guards or any(not options or options <= enabled for options in guards):
        return None
    unset = sorted(set().union(*guards) - enabled)
    return f"{unset[0]} is not set" if unset else None
