"""The full matrix: ``doit test`` of every example recipe on every kernel it names, plus one
recipe whose check cannot pass, so that the run shows a failed cell named with its console
log (and exits non-zero, as CI would see it).

    python bench/full_matrix.py [-n JOBS] [doit test arguments...]

The recipes are those of ``recipes/`` (linked, so their cells share the project cache with
``doit build``) and ``broken-check``, a copy of the default recipe on Debian's 6.1 cloud
kernel whose check looks for a marker the patch never writes. The run's table is printed
last, as ``doit test`` prints it; the reports are in ``cache/reports/``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

BROKEN = """description: the default patch with a check that cannot pass (a deliberate failure)
module: livepatch_broken_check
targets:
  - debian: {series: "6.1", flavour: cloud-amd64}
patches:
  - cmdline.patch
check: grep -q kpatch=never /proc/cmdline
"""


def recipes_with_a_failing_one(where: Path) -> Path:
    for recipe in sorted((PROJECT / "recipes").iterdir()):
        if (recipe / "recipe.yaml").is_file():
            (where / recipe.name).symlink_to(recipe)
    broken = where / "broken-check"
    broken.mkdir()
    (broken / "cmdline.patch").write_bytes((PROJECT / "recipes/cmdline/cmdline.patch")
                                           .read_bytes())
    (broken / "recipe.yaml").write_text(BROKEN)
    return where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--jobs", type=int, default=2, help="doit -n (default 2)")
    args, rest = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="kpb-full-matrix-") as temp:
        env = {**os.environ, "KPATCHBUILD_RECIPES": str(recipes_with_a_failing_one(Path(temp)))}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"),
                               "-d", str(PROJECT), "-n", str(args.jobs), "test", *rest],
                              env=env)
    print(f"full matrix: {time.monotonic() - started:.0f} s wall, doit exit {done.returncode}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
