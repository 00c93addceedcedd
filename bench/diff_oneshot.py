"""One-shot `python -m kpatchbuild diff` from process start to exit, as a build runs it per
changed object: the median over several runs, and how much of it is start-up.

    python bench/diff_oneshot.py --pair ORIG.o PATCHED.o [--pair ...] --symbols FILE
                                 [--symvers FILE] [--runs 15]

FILE is the target's symbol table (the compact vmlinux.symbols, or System.map). Prints, per
pair, the median, lowest and highest wall time of the whole command, and once the median of
a process that only imports what the command imports (the floor start-up sets).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True)
        seconds.append(time.perf_counter() - start)
        if result.returncode not in (0, 2, 3):
            sys.exit(f"{' '.join(command)} failed: {result.stderr.decode()[-500:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", nargs=2, action="append", required=True, type=Path,
                        metavar=("ORIG.o", "PATCHED.o"))
    parser.add_argument("--symbols", required=True, type=Path)
    parser.add_argument("--symvers", type=Path)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="kpb-oneshot-")) / "out.o"
    imports = timed([sys.executable, "-c", "import kpatchbuild.differ.cli"], args.runs)
    print(f"start-up (imports only): median {statistics.median(imports) * 1000:.0f} ms")
    for orig, patched in args.pair:
        command = [sys.executable, "-m", "kpatchbuild", "diff", str(orig), str(patched),
                   "-o", str(out), "--symbols", str(args.symbols), "--target", "vmlinux"]
        if args.symvers:
            command += ["--symvers", str(args.symvers)]
        seconds = timed(command, args.runs)
        size = (orig.stat().st_size + patched.stat().st_size) // 2 // 1024
        print(f"{patched.name} ({size} KiB): median {statistics.median(seconds) * 1000:.0f} ms"
              f", lowest {min(seconds) * 1000:.0f} ms, highest {max(seconds) * 1000:.0f} ms"
              f" ({args.runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
