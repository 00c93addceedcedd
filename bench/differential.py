"""The differ against kpatch's create-diff-object on random edits of a kernel's files.

    python bench/differential.py --generation {6.1,6.12,6.12-gcc14} [--count 300]
                                 [--seed N] [--json OUT]

The generation's kernel is prepared as the test suite prepares it (Debian 12's 6.1 and 6.12
through the pipeline's fetch and config steps, Debian 13's 6.12 in its chroot with gcc 14;
KPB_SCRATCH_TREE, KPB_SCRATCH_TREE_6_12 and KPB_SCRATCH_TREE_6_12_GCC14 name prepared
copies to reuse), its -dbg package's vmlinux gives kpatch its `readelf -s --wide` table, and
kpatch (trixie's kpatch-build 0.9.10) runs in the trixie chroot. Prints each pair, then the
agreement and every disagreement with its classification (tests/differ/differential.py);
--json keeps them all.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kpatchbuild.base.store import Store  # noqa: E402
from tests.differ.differential import (  # noqa: E402
    GENERATIONS,
    SEED,
    generate,
    prepare_generation,
    run_pair,
)
from tests.support.kpatch_reference import kpatch_reference  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generation", required=True, choices=sorted(GENERATIONS))
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    store = Store()
    reference = kpatch_reference(store)
    work = Path(tempfile.mkdtemp(prefix="kpb-differential-"))
    builder, kernel = prepare_generation(args.generation, work, work / "objects", store)
    results, seconds = [], []
    for comparison, case in generate(args.count, builder.tree, args.seed):
        start = time.perf_counter()
        run_pair(comparison, case, builder, kernel, reference, work)
        seconds.append(time.perf_counter() - start)
        results.append(comparison)
        if not comparison.compiled:
            print(f"{comparison.index:3d} {comparison.kind:13s} {comparison.source}:"
                  f"{comparison.function}: does not compile", flush=True)
            continue
        assert comparison.ours is not None and comparison.kpatch is not None
        verdict = "agree" if comparison.agree else f"DISAGREE ({comparison.classification})"
        print(f"{comparison.index:3d} {comparison.kind:13s} {comparison.source}:"
              f"{comparison.function}: ours {comparison.ours.exit_code} kpatch "
              f"{comparison.kpatch.exit_code}: {verdict}", flush=True)
        for line in comparison.details:
            print(f"      {line}", flush=True)
    compiled = [c for c in results if c.compiled]
    agreed = [c for c in compiled if c.agree]
    classes = collections.Counter(c.classification.split(":")[0] for c in compiled
                                  if not c.agree)
    label = GENERATIONS[args.generation]
    share = 100 * len(agreed) / len(compiled) if compiled else 0.0
    print(f"\n{label}: {len(compiled)} pairs compiled ({len(results) - len(compiled)} edits "
          f"did not), {len(agreed)} agree ({share:.1f}%); disagreements: "
          + (", ".join(f"{n} {k}" for k, n in sorted(classes.items())) or "none"))
    outcomes = collections.Counter((c.ours.exit_code, c.kpatch.exit_code) for c in compiled
                                   if c.ours and c.kpatch)
    print("outcomes (ours, kpatch): " + ", ".join(f"{k}: {n}" for k, n in
                                                  sorted(outcomes.items())))
    print(f"seconds per pair: median {sorted(seconds)[len(seconds) // 2]:.2f}, "
          f"total {sum(seconds):.0f}")
    if args.json:
        args.json.write_text(json.dumps({"label": label, "release": kernel.release,
                                         "seed": args.seed,
                                         "pairs": [asdict(c) for c in results]},
                                        indent=1, default=sorted) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
