"""Time the differ on the kernel corpus, per kernel tree: seconds per object and per MB.

    python bench/diff_corpus.py --tree LABEL=SCRATCH... [--symbol-files LABEL=DIR...] [--repeat N]

A tree is named by its label, as the corpus tests name it: a series ("5.10", "6.1", "6.12")
or a series built by another compiler ("6.12-gcc14", "6.12-gcc13", "5.10-gcc9"). Each
SCRATCH tree is a writable copy of a prepared tree of that label (its sources are edited
and restored; tests/conftest.py makes such copies), holding the target's System.map and
Module.symvers (or name their folder with --symbol-files LABEL=DIR: for the trees of other
Debian releases, their files in the store's ``chroot-kernel`` artifact). Trees of other
Debian releases (tests/chroots.py SUITE_TREES: 5.10 with gcc 10 or 9, 6.12 with gcc 14 or
13) are compiled in their release's chroot, taken from the store (made there if missing).
The release is the tree's own (include/config/kernel.release). Besides the corpus cases, a
few large objects are diffed against a rebuild with a trailing comment, which exercises the
full compare path, to show how time grows with size. Symbol tables are loaded once and
timed on their own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kpatchbuild.base.store import Store  # noqa: E402
from kpatchbuild.differ import CannotPatch, diff_objects  # noqa: E402
from kpatchbuild.differ.symbols import load_module_symvers, load_symbol_table  # noqa: E402
from kpatchbuild.elf import read_elf  # noqa: E402
from tests.differ.kernel_corpus import CASES, Case, CorpusBuilder  # noqa: E402
from tests.support.chroots import SUITE_TREES, make_chroot  # noqa: E402

LARGE_SOURCES = [
    "fs/proc/base.c",
    "kernel/fork.c",
    "mm/memory.c",
    "net/ipv4/tcp.c",
    "kernel/sched/core.c",
]


def _timed_diff(orig: Path, patched: Path, table, exports, repeat: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            diff_objects(read_elf(orig), read_elf(patched), symbols=table, exports=exports)
        except CannotPatch:
            pass
        best = min(best, time.perf_counter() - start)
    return best


def _series_path(text: str) -> tuple[str, Path]:
    name, separator, path = text.partition("=")
    if not separator or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=PATH, e.g. 6.12=/tmp/tree")
    return name, Path(path)


def _builder(label: str, tree: Path, release: str) -> CorpusBuilder:
    workdir = Path(tempfile.mkdtemp(prefix=f"kpb-bench-{label}-"))
    spec = SUITE_TREES.get(label)
    if spec is None:
        return CorpusBuilder(tree, release, workdir)
    chroot = make_chroot(Store(), spec.suite, spec.packages)
    return CorpusBuilder(tree, release, workdir, spec.compiler, chroot)


def bench_series(label: str, tree: Path, files: Path, repeat: int) -> list[tuple[float, float]]:
    """Diff the corpus of one tree; print a line per object; return (seconds, MB) each."""
    series = SUITE_TREES[label].series if label in SUITE_TREES else label.split("-")[0]
    release = (tree / "include/config/kernel.release").read_text().strip()
    start = time.perf_counter()
    symbols = files / "vmlinux.symbols"  # the compact table, where the store has one
    if not symbols.is_file():
        symbols = files / "System.map"
    table = load_symbol_table(symbols)
    exports = load_module_symvers(files / "Module.symvers")
    print(f"\n== {label} ({release}): {symbols.name} + Module.symvers "
          f"{time.perf_counter() - start:.3f} s (once)")

    builder = _builder(label, tree, release)
    pairs = [(case.name, builder.build(case.for_series(series, label))) for case in CASES]
    for source in LARGE_SOURCES:
        case = Case(f"large:{source}", source, lambda t: t + "\n/* bench */\n", 3)
        pairs.append((case.name, builder.build(case)))

    print(f"{'object':40} {'input MB':>9} {'seconds':>9} {'s/MB':>7}")
    figures = []
    for name, pair in pairs:
        megabytes = (pair.orig.stat().st_size + pair.patched.stat().st_size) / 1e6
        seconds = _timed_diff(pair.orig, pair.patched, table, exports, repeat)
        figures.append((seconds, megabytes))
        print(f"{name:40} {megabytes:9.2f} {seconds:9.3f} {seconds / megabytes:7.3f}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", required=True, action="append", type=_series_path,
                        metavar="LABEL=PATH", help="a scratch tree of one label (repeatable)")
    parser.add_argument("--symbol-files", action="append", type=_series_path, default=[],
                        metavar="LABEL=DIR",
                        help="where that tree's System.map and Module.symvers are "
                             "(default: the tree itself)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    symbol_files = dict(args.symbol_files)

    summary = []
    for label, tree in args.tree:
        figures = bench_series(label, tree, symbol_files.get(label, tree), args.repeat)
        times = [seconds for seconds, _ in figures]
        per_mb = [seconds / megabytes for seconds, megabytes in figures]
        summary.append(f"{label}: median {statistics.median(times):.3f} s per object, "
                       f"max {max(times):.3f} s, median {statistics.median(per_mb):.3f} s/MB "
                       f"({len(figures)} objects)")
    print()
    for line in summary:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
