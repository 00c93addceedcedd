"""`doit test` for real: two recipes over Debian's 6.1 and 6.12 cloud kernels.

One recipe passes on both; the other has a cell whose check cannot pass (it must fail, be
named, and keep its console log) and a cell marked not-applicable whose patch does not
apply there. The cells' original stages are the suite's own (the default recipe's 6.1 and
6.12 cells), so the run costs module links and four boots.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xmlschema

from kpatchbuild.base.store import default_root
from tests.conftest import PROJECT, SERIES_6_12_KERNEL, RecipeStage, run_doit

pytestmark = pytest.mark.kernel

# The default recipe's cloud cells: Debian 12's 6.1 and 6.12, and Debian 13's 6.12 (compiled
# in its build root).
CLOUD = ["debian12-6.1-cloud-amd64", SERIES_6_12_KERNEL, "debian13-6.12-cloud-amd64"]
BROKEN = """description: a check that cannot pass, and a cell the patch does not apply to
module: livepatch_matrix_broken
targets:
  - debian: {series: "6.1", flavour: cloud-amd64}
  - debian: {release: 12, series: "6.12", flavour: cloud-amd64}
    patches: [written-for-6.1.patch]
    expect: not-applicable
    reason: the patch is written for 6.1's fs/proc/cmdline.c
patches: [cmdline.patch]
check: grep -q kpatch=never /proc/cmdline
"""


@pytest.fixture(scope="module")
def matrix_run(default_recipe_stage: RecipeStage, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("matrix")
    recipes = root / "recipes"
    shutil.copytree(PROJECT / "recipes/cmdline", recipes / "t-matrix-cmdline")
    recipe = recipes / "t-matrix-cmdline/recipe.yaml"
    recipe.write_text(recipe.read_text().replace("[cloud-amd64, amd64]", "cloud-amd64"))
    broken = recipes / "t-matrix-broken"
    broken.mkdir()
    shutil.copyfile(PROJECT / "recipes/cmdline/cmdline.patch", broken / "cmdline.patch")
    shutil.copyfile(PROJECT / "recipes/shadow-variable/cmdline-reads.patch",
                    broken / "written-for-6.1.patch")
    (broken / "recipe.yaml").write_text(BROKEN)
    env = {"KPATCHBUILD_RECIPES": str(recipes), "KPATCHBUILD_DOIT_DB": str(root / "db")}
    try:
        first = run_doit("test", f"junit={root / 'junit.xml'}", env=env)
        # Each run writes its own report; the later single-cell runs would replace this one.
        shutil.copyfile(default_root() / "reports/test.json", root / "first.json")
        again = run_doit("test", env=env)
        reports = [run_doit(f"test:t-matrix-cmdline/{kernel}", f"json={root / kernel}.json",
                            env=env) for kernel in CLOUD]
        yield root, env, first, again, reports
    finally:
        for name in ("t-matrix-cmdline", "t-matrix-broken"):
            shutil.rmtree(default_root() / "work" / name, ignore_errors=True)


def test_the_run_names_the_failed_cell_and_counts_the_rest(matrix_run) -> None:
    root, _env, first, _again, _reports = matrix_run
    assert first.returncode != 0
    lines = first.stdout.splitlines()
    assert lines[-1] == "3 passed, 1 failed, 1 not applicable", first.stdout[-3000:]
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("t-matrix-")}
    for kernel in CLOUD:
        row = rows[f"t-matrix-cmdline/{kernel}"]
        assert row[2] == "passed" and row[3] == "cmdline_proc_show"
        assert row[1].startswith("6.1.0-" if "6.1-" in kernel else "6.12.")
    assert rows["t-matrix-broken/debian12-6.1-cloud-amd64"][2:4] == ["FAILED", "(prove)"]
    assert rows[f"t-matrix-broken/{SERIES_6_12_KERNEL}"][2:4] == ["not", "applicable"]
    kept = default_root() / "reports/console/t-matrix-broken--debian12-6.1-cloud-amd64.log"
    (failed,) = [line for line in lines if line.startswith("FAILED t-matrix-broken/")]
    assert "check-patched" in failed and failed.endswith(f"console log: {kept}")
    assert "KPB-STEP check-patched fail" in kept.read_text(errors="replace")


def test_the_reports_are_what_ci_reads(matrix_run, junit_schema: Path) -> None:
    root, _env, _first, _again, _reports = matrix_run
    report = json.loads((root / "first.json").read_text())
    assert {c["cell"]: c["status"] for c in report["cells"]} == {
        "t-matrix-broken/debian12-6.1-cloud-amd64": "failed",
        f"t-matrix-broken/{SERIES_6_12_KERNEL}": "not-applicable",
        **{f"t-matrix-cmdline/{kernel}": "passed" for kernel in CLOUD}}
    assert report["summary"] == "3 passed, 1 failed, 1 not applicable"
    assert (root / "junit.xml").is_file()
    xmlschema.XMLSchema(str(junit_schema)).validate(str(root / "junit.xml"))
    assert "<failure" in (root / "junit.xml").read_text()


def test_a_second_run_does_not_prove_again_what_passed(matrix_run) -> None:
    _root, _env, _first, again, _reports = matrix_run
    rows = {line.split()[0]: line.split() for line in again.stdout.splitlines()
            if line.startswith("t-matrix-")}
    for kernel in CLOUD:
        assert rows[f"t-matrix-cmdline/{kernel}"][-1] == "cached"
    assert rows["t-matrix-broken/debian12-6.1-cloud-amd64"][2] == "FAILED"
    assert ".  prove:t-matrix-cmdline" not in again.stdout


def test_one_cell_per_run_and_the_reports_merged(matrix_run) -> None:
    root, _env, _first, _again, reports = matrix_run
    for result in reports:
        assert result.returncode == 0, result.stdout[-2000:]
        assert result.stdout.splitlines()[-1] == "1 passed, 0 failed"
    merged = subprocess.run([sys.executable, "-m", "kpatchbuild", "merge-reports",
                             *(str(root / f"{kernel}.json") for kernel in CLOUD),
                             "-o", str(root / "merged")], capture_output=True, text=True,
                            cwd=PROJECT)
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.splitlines()[-1] == "3 passed, 0 failed"
