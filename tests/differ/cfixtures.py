"""Build original/patched object pairs from small C sources with the host's gcc.

The differ must understand what each supported compiler emits, so the C fixture tests run
once per compiler in COMPILERS: gcc-12 (Debian 12's own, which builds Debian's kernels) and
gcc-11 (installed by ./run). Any further gcc-N found on PATH is exercised as well. A required
compiler that is missing fails the tests rather than skipping them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.differ import DiffResult, diff_objects
from kpatchbuild.differ.symbols import load_symbol_table
from kpatchbuild.elf import read_elf

CFLAGS = ["-O2", "-ffunction-sections", "-fdata-sections", "-fno-asynchronous-unwind-tables",
          "-fno-pic", "-mcmodel=kernel", "-c"]


REQUIRED_COMPILERS = ("gcc-12", "gcc-11")
# The compiler build_pair uses; test_c_fixtures sets it per parametrised run.
compiler = "gcc"


def available_compilers() -> list[str]:
    """REQUIRED_COMPILERS, then any other `gcc-N` on PATH, oldest last."""
    found = set()
    for directory in {Path(shutil.which("gcc") or "/usr/bin/gcc").parent, Path("/usr/bin")}:
        found.update(p.name for p in directory.glob("gcc-*") if re.fullmatch(r"gcc-\d+", p.name))
    extra = sorted(found - set(REQUIRED_COMPILERS), key=lambda n: -int(n[4:]))
    return [*REQUIRED_COMPILERS, *extra]


@dataclass
class Pair:
    orig: Path
    patched: Path


def build_pair(
    tmp_path: Path, original: str, patched: str, name: str = "unit", extra: tuple[str, ...] = ()
) -> Pair:
    paths = []
    for tag, text in (("orig", original), ("patched", patched)):
        folder = tmp_path / tag
        folder.mkdir(exist_ok=True)
        source = folder / f"{name}.c"
        source.write_text(text)
        obj = folder / f"{name}.o"
        subprocess.run([compiler, *CFLAGS, *extra, "-o", str(obj), str(source)], check=True)
        paths.append(obj)
    return Pair(*paths)


def built_for_ftrace(path: Path) -> bool:
    """Was the fixture compiled with -pg -mfentry (does anything call __fentry__)?"""
    return any(s.name == "__fentry__" for s in read_elf(path).symbols)


def diff_pair(pair: Pair, **kwargs) -> DiffResult:
    """Diff with the original object standing in for the target's symbol table.

    Fixtures are not kernel code: built without -pg, their functions have no ftrace call
    to check, and the check applies only to those built with it."""
    table = load_symbol_table(pair.orig, "vmlinux")
    kwargs.setdefault("require_fentry", built_for_ftrace(pair.orig))
    return diff_objects(pair.orig, pair.patched, symbols=table, **kwargs)


def names(functions) -> set[str]:  # noqa: ANN001
    return {f.name for f in functions}
