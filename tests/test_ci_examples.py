"""The example CI workflow's own steps, run here: listing the cells and merging reports."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from kpatchbuild.report.results import CellResult, MatrixReport, read_report

PROJECT = Path(__file__).resolve().parents[1]
WORKFLOW = PROJECT / "ci-examples" / "github-actions.yml"


def step(job: str, step_id: str) -> str:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    (found,) = [s for s in jobs[job]["steps"] if s.get("id") == step_id]
    return str(found["run"])


def run_step(script: str, cwd: Path, output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd,
                          capture_output=True, text=True,
                          env={**os.environ, "GITHUB_OUTPUT": str(output)})


def test_the_cells_step_gives_a_matrix_of_runnable_tasks(tmp_path: Path) -> None:
    result = run_step(step("cells", "cells"), PROJECT, tmp_path / "output")
    assert result.returncode == 0, result.stderr
    name, _, value = (tmp_path / "output").read_text().strip().partition("=")
    assert name == "cells"
    cells = json.loads(value)
    listed = subprocess.run([str(PROJECT / ".venv/bin/python"), "-m", "doit", "list"],
                            cwd=PROJECT, capture_output=True, text=True).stdout.split()
    assert {c["task"] for c in cells} <= set(listed)
    default = next(c for c in cells if c["cell"] == "cmdline/debian12-6.1-cloud-amd64")
    assert default["release"].startswith("6.1.0-") and default["release"].endswith("-cloud-amd64")
    assert len(default["recipe_hash"]) == 16
    assert {c["release"] for c in cells if c["recipe"] == "cmdline-tiny"} == {"tiny-6.1"}


def test_the_merge_step_merges_the_downloaded_reports(tmp_path: Path) -> None:
    reports = tmp_path / "downloaded" / "reports"
    one = CellResult("cmdline", "debian12-6.1-cloud-amd64", "passed", release="6.1.0-57")
    two = CellResult("cmdline", "debian12-6.12-cloud-amd64", "failed", reason="boom",
                     step="prove")
    MatrixReport((one,), 5.0).write(reports / "cmdline-debian12-6.1-cloud-amd64.json")
    MatrixReport((two,), 7.0).write(reports / "cmdline-debian12-6.12-cloud-amd64.json")
    (tmp_path / ".venv").symlink_to(PROJECT / ".venv")
    result = run_step(step("merge", "merge"), tmp_path, tmp_path / "output")
    assert result.returncode == 1  # a cell failed: the merge job fails the workflow
    assert result.stdout.splitlines()[-1] == "1 passed, 1 failed"
    assert read_report(tmp_path / "merged/test.json").cells == (one, two)
    assert (tmp_path / "merged/junit.xml").is_file()
