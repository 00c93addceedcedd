"""Time the differ on the kernel corpus: seconds per object and per MB of input.

    python bench/diff_corpus.py --tree SCRATCH_TREE [--system-map F] [--symvers F]

SCRATCH_TREE is a writable copy of a prepared Debian 6.1 tree (its sources are edited and
restored). Besides the corpus cases, a few large objects are diffed against a rebuild with
a trailing comment, which exercises the full compare path, to show how time grows with size.
The symbol table is loaded once and timed on its own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kpatchbuild.differ import CannotPatch, diff_objects  # noqa: E402
from kpatchbuild.elf import read_elf  # noqa: E402
from kpatchbuild.symbols import load_module_symvers, load_symbol_table  # noqa: E402
from tests.differ.kernel_corpus import CASES, Case, CorpusBuilder  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", required=True, type=Path)
    parser.add_argument("--release", default="6.1.0-56-cloud-amd64")
    parser.add_argument("--system-map", type=Path, default=Path("/tmp/kpb-tree/System.map"))
    parser.add_argument("--symvers", type=Path, default=Path("/tmp/kpb-tree/Module.symvers"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    table = load_symbol_table(args.system_map)
    exports = load_module_symvers(args.symvers)
    print(f"symbol table + Module.symvers: {time.perf_counter() - start:.3f} s (once)")

    work = Path(tempfile.mkdtemp(prefix="kpb-bench-"))
    builder = CorpusBuilder(args.tree, args.release, work)
    pairs = [(case.name, builder.build(case)) for case in CASES]
    for source in LARGE_SOURCES:
        case = Case(f"large:{source}", source, lambda t: t + "\n/* bench */\n", 3)
        pairs.append((case.name, builder.build(case)))

    print(f"{'object':40} {'input MB':>9} {'seconds':>9} {'s/MB':>7}")
    times = []
    for name, pair in pairs:
        megabytes = (pair.orig.stat().st_size + pair.patched.stat().st_size) / 1e6
        seconds = _timed_diff(pair.orig, pair.patched, table, exports, args.repeat)
        times.append(seconds)
        print(f"{name:40} {megabytes:9.2f} {seconds:9.3f} {seconds / megabytes:7.3f}")
    print(f"median {statistics.median(times):.3f} s per object, max {max(times):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
