"""What a step is about is said once, at the step, for every error raised inside."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.base.errors import BuildError, KpbError, RecipeError, about


def test_about_names_the_subject_first_and_the_log_last() -> None:
    with pytest.raises(RecipeError) as caught, about("r.yaml", log=Path("/l/x.log")):
        raise RecipeError("fs/a.c is a header")
    assert caught.value.message == "r.yaml: fs/a.c is a header; log: /l/x.log"
    assert caught.value.exit_code == RecipeError.exit_code


def test_about_says_each_thing_once() -> None:
    with pytest.raises(BuildError) as caught, about("outer"), about("inner", log=Path("/x.log")):
        raise BuildError("make failed; full log: /x.log")
    assert caught.value.message == "outer: inner: make failed; full log: /x.log"
    with pytest.raises(BuildError) as again, about("m"), about("m"):
        raise BuildError("broken")
    assert again.value.message == "m: broken"


def test_about_leaves_other_exceptions_alone() -> None:
    with pytest.raises(ValueError, match="^plain$"), about("m"):
        raise ValueError("plain")
    assert issubclass(RecipeError, KpbError)
