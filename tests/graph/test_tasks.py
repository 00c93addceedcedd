"""How a task's failure reaches the user: one line, whatever went wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.base.errors import BuildError
from kpatchbuild.base.store import CACHE_ENV
from kpatchbuild.graph.tasks import _reporting_errors


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
