"""Short commands: a failure is the caller's error, told the same way everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.base import process
from kpatchbuild.base.errors import BuildError, FetchError, RecipeError


def test_a_failure_is_the_callers_error_with_the_last_complaint() -> None:
    with pytest.raises(FetchError) as caught:
        process.run(["sh", "-c", "echo noise; echo first >&2; echo 'the reason' >&2; exit 3"],
                    error=FetchError, what="fetching the thing", hint="try again")
    assert caught.value.message == "fetching the thing failed: the reason; try again"
    assert caught.value.exit_code == FetchError.exit_code


def test_a_silent_failure_names_the_command_and_its_status() -> None:
    with pytest.raises(BuildError, match=r"^sh -c exit 7 failed: exit 7$"):
        process.run(["sh", "-c", "exit 7"])


def test_stdout_tells_when_stderr_is_empty() -> None:
    with pytest.raises(BuildError, match=r"failed: only here$"):
        process.run(["sh", "-c", "echo only here; exit 1"])


def test_a_missing_command_is_one_line_saying_to_install_it() -> None:
    with pytest.raises(RecipeError, match=r"^'no-such-tool-here' not found: install it"):
        process.run(["no-such-tool-here"], error=RecipeError)
    with pytest.raises(RecipeError, match=r"^get the tool$"):
        process.run(["no-such-tool-here"], error=RecipeError, missing="get the tool")


def test_the_caller_may_explain_and_judge() -> None:
    with pytest.raises(RecipeError, match=r"^x.patch: says no; rebase$"):
        process.run(["sh", "-c", "echo no; exit 1"], error=RecipeError, hint="rebase",
                    explain=lambda r: f"x.patch: says {r.stdout.strip()}")
    complained = process.run(["sh", "-c", "echo out; echo moan >&2; exit 1"],
                             succeeded=lambda r: bool(r.stdout))
    assert complained.stdout == "out\n"
    unchecked = process.run(["sh", "-c", "exit 1"], check=False)
    assert unchecked.returncode == 1


def test_bytes_in_bytes_out(tmp_path: Path) -> None:
    result = process.run(["cat"], input=b"\x00\xff", cwd=tmp_path)
    assert result.stdout == b"\x00\xff"


def test_piped_feeds_the_consumer(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("one\ntwo\n")
    result = process.piped(["cat", "a"], ["wc", "-l"], cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "2"
