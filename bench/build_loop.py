"""The developer's loop on the default recipe, timed: prints seconds for each step.

    .venv/bin/python bench/build_loop.py [--skip-empty-cache] [--kernel TARGET]

(a) first patched build to the .ko, original stage cached; (b) after a one-line edit of the
patch inside the function; (c) nothing changed; (d) the edit reverted; (e) from an empty
cache to the first module, with Debian's packages already downloaded (their download is
timed apart). Each step runs ``doit module:<recipe>/<target>``: the build, not the VM proof.
Needs the default recipe built once on that target (``./run build kernel=TARGET``); on a
Debian 13 target from a Debian 12 host every compile runs in its build root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from kpatchbuild.base.store import default_root  # noqa: E402

TARGET = "debian12-6.1-cloud-amd64"


def timed_doit(task: str, env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"),
                             task], env=env, cwd=PROJECT, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"bench: doit {task} failed:\n{result.stdout}{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-empty-cache", action="store_true", help="skip step (e)")
    parser.add_argument("--kernel", default=TARGET,
                        help=f"the default recipe's target to time (default {TARGET})")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kpb-bench-"))
    recipe = f"bench-{uuid.uuid4().hex[:8]}"
    recipes = scratch / "recipes"
    shutil.copytree(PROJECT / "recipes/cmdline", recipes / recipe)
    patch = recipes / recipe / "cmdline.patch"
    # A marker of its own, so the first build really compiles instead of hitting the cache.
    marker = f"kpatch={recipe}"
    base_patch = patch.read_text().replace("kpatch=1", marker)
    patch.write_text(base_patch)
    env = {**os.environ, "KPATCHBUILD_RECIPES": str(recipes),
           "KPATCHBUILD_DOIT_DB": str(scratch / "db")}
    task = f"module:{recipe}/{args.kernel}"
    figures = {}
    try:
        figures["(a) first patched build to .ko, original stage cached"] = timed_doit(task, env)
        patch.write_text(base_patch.replace(marker, marker + "-edited"))
        figures["(b) one-line edit inside the function"] = timed_doit(task, env)
        figures["(c) nothing changed"] = timed_doit(task, env)
        patch.write_text(base_patch)
        figures["(d) edit reverted"] = timed_doit(task, env)
        if not args.skip_empty_cache:
            figures.update(empty_cache(scratch, recipes, recipe, args.kernel, task))
    finally:
        shutil.rmtree(default_root() / "work" / recipe, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    for name, seconds in figures.items():
        print(f"{name:58s} {seconds:7.2f} s")


def empty_cache(scratch: Path, recipes: Path, recipe: str, kernel: str,
                task: str) -> dict[str, float]:
    """(e): a new cache; Debian's .debs are fetched apart (timed) so the figure is the work."""
    cache = scratch / "cache"
    env = {**os.environ, "KPATCHBUILD_RECIPES": str(recipes), "KPATCHBUILD_CACHE": str(cache),
           "KPATCHBUILD_DOIT_DB": str(scratch / "db-empty")}
    download = timed_doit(f"fetch:{recipe}/{kernel}", env)
    shutil.rmtree(cache / "debian-kernel")
    shutil.rmtree(cache / "debian-source")
    shutil.rmtree(cache / "source")
    (cache / "work").exists() and shutil.rmtree(cache / "work")
    for leftover in scratch.glob("db-empty*"):
        leftover.unlink()
    return {
        "(e) downloads of Debian's packages (apart)": download,
        "(e) empty cache to first module, packages at hand": timed_doit(task, env),
    }


if __name__ == "__main__":
    main()
