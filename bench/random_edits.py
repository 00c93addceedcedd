"""Random single-function edits over files built into Debian's vmlinux: the whole run.

    python bench/random_edits.py --tree SCRATCH --symbols FILE --symvers FILE --release REL
                                 [--count 120] [--save]

SCRATCH is a writable prepared tree of the release (tests/conftest.py makes such copies);
FILE the release's symbol table (vmlinux.symbols or System.map) and Module.symvers. Every
case is judged by the rules of tests/differ/random_edits.py; the figures printed are the
outcomes, the cases whose changed set goes beyond the edited function (and why), and the
time per case. --save keeps the outcomes as the expectations the tests compare with.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kpatchbuild.differ.symbols import load_module_symvers, load_symbol_table  # noqa: E402
from tests.differ.kernel_corpus import CorpusBuilder  # noqa: E402
from tests.differ.random_edits import (  # noqa: E402
    generate,
    problems,
    run_case,
    save_expectations,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", required=True, type=Path)
    parser.add_argument("--symbols", required=True, type=Path)
    parser.add_argument("--symvers", required=True, type=Path)
    parser.add_argument("--release", required=True)
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    symbols = load_symbol_table(args.symbols)
    exports = load_module_symvers(args.symvers)
    work = Path(tempfile.mkdtemp(prefix="kpb-random-"))
    builder = CorpusBuilder(args.tree, args.release, work / "objects")
    cases, found, seconds = [], [], []
    for case, corpus_case in generate(args.count, args.tree):
        start = time.perf_counter()
        run_case(case, corpus_case, builder, symbols, exports, args.release, work)
        seconds.append(time.perf_counter() - start)
        cases.append(case)
        found += problems(case)
        print(f"{case.index:3d} {case.kind:8s} {case.source}:{case.function} -> "
              f"exit {case.exit_code} changed {case.changed} new {case.new}"
              + (f" {case.reasons}" if case.reasons else "")
              + (f" [{case.refusal}]" if case.refusal else ""), flush=True)
    outcomes = collections.Counter(c.exit_code for c in cases)
    wider = [c for c in cases if c.reasons]
    print(f"\n{len(cases)} cases: written {outcomes[0]}, refused {outcomes[2]}, "
          f"no change {outcomes[3]}, not compiling {outcomes[-1]}")
    print(f"changed set beyond the edited function: {len(wider)} "
          f"({sum(len(c.reasons) for c in wider)} functions, each calling it)")
    print(f"seconds per case: median {sorted(seconds)[len(seconds) // 2]:.2f}, "
          f"total {sum(seconds):.0f}")
    for problem in found:
        print("PROBLEM", problem)
    if args.save:
        save_expectations(args.release, cases)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
