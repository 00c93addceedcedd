"""Time `doit test` on this machine: the matrix of the example recipes, cold and warm, with
doit's -n 1 and -n 2, and each cell's build and proof seconds.

    python bench/matrix.py [--kernel PATTERN] [--recipe NAME] [--jobs 1 2] [--cache DIR]

Cold is a run on a cache that holds only Debian's downloaded packages (taken, hardlinked,
from the project's cache: the figure is about our work, not the mirror's speed) and no
stage, module or proof; warm is the same command again, with nothing changed (what a CI job
with a restored cache does). Each -n value gets a cache of its own. The figures come from
the runs' own reports (cache/reports/test.json); a run's doit output goes to a log beside
it. ``--kernel`` takes doit test's patterns (default: the cloud kernels, whose packages
are the small ones: 'debian12-*-cloud-amd64,tiny-6.1').
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from kpatchbuild.base.store import default_root  # noqa: E402

PACKAGE_KINDS = ("fetch-deb", "apt")
# A Debian kernel's header index is made once per kernel (11 minutes for the 6.1 cloud
# config, README): --seed-header-index keeps that one-time cost out of a cold run.
HEADER_INDEX_KIND = "patched-header-index"


def seed_packages(cache: Path, kinds: tuple[str, ...] = PACKAGE_KINDS) -> None:
    """The project cache's downloaded packages (and ``kinds``), hardlinked into ``cache``."""
    for kind in kinds:
        source = default_root() / kind
        if source.is_dir():
            subprocess.run(["cp", "-al", str(source), str(cache / kind)], check=True)


def run(cache: Path, jobs: int, selection: list[str], label: str) -> dict:
    env = {**os.environ, "KPATCHBUILD_CACHE": str(cache),
           "KPATCHBUILD_DOIT_DB": str(cache / "doit-deps.json")}
    log = cache / f"bench-{label}.log"
    started = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"),
                               "-d", str(PROJECT), "-n", str(jobs), "test", *selection],
                              env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    report = json.loads((cache / "reports" / "test.json").read_text())
    return {"seconds": seconds, "exit": done.returncode, "report": report, "log": log}


def print_run(label: str, result: dict) -> None:
    report = result["report"]
    print(f"{label}: {result['seconds']:.0f} s wall, exit {result['exit']}: "
          f"{report['summary']} (log {result['log']})")
    for cell in report["cells"]:
        proof = "cached" if cell["proof_seconds"] is None else f"{cell['proof_seconds']:.1f}"
        print(f"    {cell['cell']:<50} {cell['status']:<15} build {cell['build_seconds']:7.1f} s"
              f"  proof {proof:>6}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="debian12-*-cloud-amd64,tiny-6.1")
    parser.add_argument("--recipe")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache", type=Path, help="where the caches go (default: a temp dir)")
    parser.add_argument("--seed-header-index", action="store_true",
                        help="cold runs start with the project cache's header indexes too")
    args = parser.parse_args()
    selection = [f"kernel={args.kernel}"] + ([f"recipe={args.recipe}"] if args.recipe else [])
    base = args.cache or Path(tempfile.mkdtemp(prefix="kpb-bench-matrix-"))
    for jobs in args.jobs:
        cache = base / f"n{jobs}"
        cache.mkdir(parents=True, exist_ok=True)
        seed_packages(cache, PACKAGE_KINDS + ((HEADER_INDEX_KIND,)
                                              if args.seed_header_index else ()))
        print_run(f"-n {jobs} cold", run(cache, jobs, selection, "cold"))
        print_run(f"-n {jobs} warm", run(cache, jobs, selection, "warm"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
