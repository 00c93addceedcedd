"""How a task's failure reaches the user: one line, whatever went wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kpatchbuild.base.errors import BuildError
from kpatchbuild.base.store import CACHE_ENV
from kpatchbuild.graph.pipeline import TargetPipeline
from kpatchbuild.graph.tasks import STEPS, _reporting_errors, _runs_again_when
from tests.test_layering import STAGES


def test_a_known_failure_is_its_own_line() -> None:
    def step() -> None:
        raise BuildError("make fs/proc/x.o failed; log: /tmp/x.log")

    assert _reporting_errors(step)().message == "make fs/proc/x.o failed; log: /tmp/x.log"


def test_a_bug_is_one_line_with_its_traceback_kept(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))

    def collect_diffs() -> None:
        raise FileNotFoundError("fs/proc/.array.o.cmd")

    failure = _reporting_errors(collect_diffs)()
    log = tmp_path / "logs" / "internal-error.log"
    assert failure.message == ("internal error, a bug in kpatchbuild: FileNotFoundError: "
                               f"fs/proc/.array.o.cmd; traceback: {log}")
    assert "in collect_diffs" in log.read_text()


def test_a_step_that_runs_again_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    moved_on = _runs_again_when(lambda: "Debian moved on: 6.1.0-58 (6.1.193-1)", "fetch:r/t")
    assert moved_on() is False
    assert "fetch:r/t: runs again: Debian moved on: 6.1.0-58 (6.1.193-1)" in capsys.readouterr().err
    assert _runs_again_when(lambda: None, "fetch:r/t")() is True
    assert capsys.readouterr().err == ""


def test_every_step_is_a_stage_and_its_pipeline_method() -> None:
    """The table's rows are the stages in flow order (diff's tasks are made later, per
    object; package's per recipe, not per target), each run by the pipeline method of its
    name."""
    # The build root is made on demand by the config step (shared by every target that
    # needs it), not a task of its own.
    assert [step.name for step in STEPS] == [s for s in STAGES
                                             if s not in ("buildroot", "diff", "package")]
    for step in STEPS:
        assert callable(getattr(TargetPipeline, step.name))


def test_a_task_has_one_config_changed(tmp_path: Path) -> None:
    """doit keeps one saved config value per task: two config_changed checks would each
    compare against the other's value, and the task would run on every build."""
    from doit.tools import config_changed

    from kpatchbuild.base.store import Store
    from kpatchbuild.graph.tasks import generate_tasks, pipelines

    tasks = [t for t in generate_tasks(pipelines(Store(tmp_path / "cache"), "cmdline"))
             if t.get("uptodate")]
    assert tasks
    for task in tasks:
        assert sum(isinstance(u, config_changed) for u in task["uptodate"]) == 1, task["basename"]


def test_force_proves_again_and_a_not_applicable_cell_ends_at_its_patches(
        tmp_path: Path) -> None:
    from kpatchbuild.base.store import Store
    from kpatchbuild.graph.tasks import generate_tasks, pipelines

    items = pipelines(Store(tmp_path / "cache"), "cmdline")
    assert [i.target.name for i in items] == ["debian12-6.1-cloud-amd64", "debian12-6.1-amd64",
                                              "debian12-6.12-cloud-amd64", "debian12-6.12-amd64",
                                              "debian13-6.12-cloud-amd64", "debian13-6.12-amd64"]
    normal = {t["basename"] + ":" + str(t.get("name")): t for t in generate_tasks(items)}
    forced = {t["basename"] + ":" + str(t.get("name")): t
              for t in generate_tasks(items, force_proof=True)}
    label = "cmdline/debian12-6.1-cloud-amd64"
    assert False not in normal[f"prove:{label}"]["uptodate"]
    assert False in forced[f"prove:{label}"]["uptodate"]
    assert False not in forced[f"module:{label}"]["uptodate"]
    assert normal[f"test:{label}:None"]["task_dep"] == [f"prove:{label}"]

    not_applicable = replace(items[0], target=replace(items[0].target, not_applicable="why"))
    names = {t["basename"] + ":" + str(t.get("name")) for t in generate_tasks([not_applicable])}
    assert f"patches:{label}" in names and f"patched:{label}" not in names
    assert f"prove:{label}" not in names


def test_a_recipes_package_waits_for_the_proof_of_each_selected_cell(tmp_path: Path) -> None:
    from kpatchbuild.base.store import Store
    from kpatchbuild.graph import matrix
    from kpatchbuild.graph.tasks import generate_tasks, pipelines

    store = Store(tmp_path / "cache")
    items = matrix.select(pipelines(store, "cmdline"), "debian12-6.1-*")
    tasks = {t["basename"] + ":" + str(t.get("name")): t for t in generate_tasks(items)}
    recipe = tasks["package:bookworm/cmdline"]
    assert {str(i.prove_record) for i in items} <= set(recipe["file_dep"])
    assert not any("6.12" in path for path in recipe["file_dep"])
    assert recipe["targets"] == [str(tmp_path / "cache/package/bookworm/records/cmdline.json")]
    repository = tasks["package:bookworm/repository"]
    assert set(repository["file_dep"]) == {
        str(tmp_path / "cache/package/bookworm/records/cmdline.json"),
        str(tmp_path / "cache/package/bookworm/records/kpatch.json")}
    assert not any(name.startswith("package:trixie/") for name in tasks)
    # A recipe refused as it expects has no module, so no package.
    refused = pipelines(store, "refused-data-layout")
    names = {t["basename"] + ":" + str(t.get("name")) for t in generate_tasks(refused)}
    assert "package:bookworm/refused-data-layout" not in names
    assert "package:bookworm/kpatch" in names


def test_a_recipe_spanning_debian_12_and_13_has_a_package_in_each_releases_repository(
        tmp_path: Path) -> None:
    from kpatchbuild.base.store import Store
    from kpatchbuild.graph.tasks import generate_tasks, pipelines

    store = Store(tmp_path / "cache")
    items = pipelines(store, "cmdline")
    tasks = {t["basename"] + ":" + str(t.get("name")): t for t in generate_tasks(items)}
    for codename, release, other in (("bookworm", "debian12-", "debian13-"),
                                     ("trixie", "debian13-", "debian12-")):
        recipe = tasks[f"package:{codename}/cmdline"]
        proofs = [path for path in recipe["file_dep"] if path.endswith("prove.json")]
        assert proofs and all(f"/{release}" in path for path in proofs)
        assert not any(f"/{other}" in path for path in recipe["file_dep"])
        assert recipe["targets"] == [
            str(tmp_path / f"cache/package/{codename}/records/cmdline.json")]
        assert f"package:{codename}/kpatch" in tasks
        index = tasks[f"package:{codename}/repository"]
        assert all(f"/package/{codename}/" in path for path in index["targets"])


def test_doit_test_goes_on_past_failed_cells_and_reports_them(tmp_path: Path) -> None:
    """Two cells that fail at fetch (their trees were configured in place): the run names
    each, writes the reports, and exits non-zero; `doit list` shows the cells; a cell, and
    kernel patterns, select."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("Makefile", "Kconfig", ".config"):
        (tree / name).write_text("")
    recipe = tmp_path / "recipes" / "fix"
    recipe.mkdir(parents=True)
    (recipe / "fix.patch").write_text("--- a/x.c\n+++ b/x.c\n")
    built = f"    source: {{tree: {tree}}}\n    config: {{base: tinyconfig}}\n"
    (recipe / "recipe.yaml").write_text(
        f"targets:\n  - name: one\n{built}  - name: two\n{built}patches: [fix.patch]\n")
    env = {**os.environ, "KPATCHBUILD_RECIPES": str(tmp_path / "recipes"),
           "KPATCHBUILD_CACHE": str(tmp_path / "cache"),
           "KPATCHBUILD_DOIT_DB": str(tmp_path / "db")}
    project = Path(__file__).resolve().parents[2]

    def doit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "doit", "-f", str(project / "dodo.py"),
                               "-d", str(project), *args], capture_output=True, text=True,
                              env=env)

    listed = doit("list").stdout
    assert "test:fix/one" in listed and "test:fix/two" in listed
    result = doit("test", f"junit={tmp_path / 'out.xml'}")
    assert result.returncode != 0
    lines = result.stdout.splitlines()
    assert lines[-1] == "0 passed, 2 failed"
    errors = [line for line in lines if line.startswith("kpatchbuild: error: fetch:fix/")]
    assert len(errors) == 2 and all("configured or built in place" in e for e in errors)
    assert any(line.startswith("FAILED fix/one at fetch: ") for line in lines)
    assert "Traceback" not in result.stdout + result.stderr
    report = json.loads((tmp_path / "cache/reports/test.json").read_text())
    assert [(c["cell"], c["status"], c["step"]) for c in report["cells"]] == [
        ("fix/one", "failed", "fetch"), ("fix/two", "failed", "fetch")]
    assert (tmp_path / "out.xml").read_bytes() == \
        (tmp_path / "cache/reports/junit.xml").read_bytes()
    one = doit("test:fix/two")
    assert one.stdout.splitlines()[-1] == "0 passed, 1 failed"
    assert doit("test", "kernel=tw*,on?").stdout.splitlines()[-1] == "0 passed, 2 failed"
    assert doit("test", "kernel=nothing*").stderr.startswith(
        "kpatchbuild: error: kernel=nothing*: no target matches (targets: one, two)")


def test_a_second_doit_run_on_one_database_waits_for_the_first(tmp_path: Path) -> None:
    """doit rewrites its whole database when a run ends: two runs at once would lose one's
    records, so a run holds the database's lock, and another says it waits, then goes on."""
    import fcntl
    import time

    project = Path(__file__).resolve().parents[2]
    env = {**os.environ, "KPATCHBUILD_CACHE": str(tmp_path / "cache"),
           "KPATCHBUILD_DOIT_DB": str(tmp_path / "db.json")}
    with open(tmp_path / "db.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        second = subprocess.Popen([sys.executable, "-m", "doit", "-f", str(project / "dodo.py"),
                                   "-d", str(project), "list"], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(3)  # enough to load the tasks (about 0.5 s) and reach the lock
        assert second.poll() is None, "the second run did not wait for the lock"
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert f"kpatchbuild: waiting for another doit run on {tmp_path} to finish" in err
    assert "test:cmdline/debian12-6.1-cloud-amd64" in out
