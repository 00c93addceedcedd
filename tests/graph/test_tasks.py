"""How a task's failure reaches the user: one line, whatever went wrong."""

from __future__ import annotations

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
    object), each run by the pipeline method of its name."""
    assert [step.name for step in STEPS] == [s for s in STAGES if s != "diff"]
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
