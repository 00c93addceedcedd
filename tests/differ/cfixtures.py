"""Build original/patched object pairs from small C sources with the host's gcc."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.differ import DiffResult, diff_objects
from kpatchbuild.symbols import load_symbol_table

CFLAGS = ["-O2", "-ffunction-sections", "-fdata-sections", "-fno-asynchronous-unwind-tables",
          "-fno-pic", "-mcmodel=kernel", "-c"]


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
        subprocess.run(["gcc", *CFLAGS, *extra, "-o", str(obj), str(source)], check=True)
        paths.append(obj)
    return Pair(*paths)


def diff_pair(pair: Pair, **kwargs) -> DiffResult:
    """Diff with the original object standing in for the target's symbol table."""
    table = load_symbol_table(pair.orig, "vmlinux")
    return diff_objects(pair.orig, pair.patched, symbols=table, **kwargs)


def names(functions) -> set[str]:  # noqa: ANN001
    return {f.name for f in functions}
