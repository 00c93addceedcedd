"""Statics the patch carries fresh copies of, never pairs with the original's (kpatch's
"special statics"): lockdep keys, once-flags, ratelimit states, compiler-made data."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.differ.index import is_fresh_static
from kpatchbuild.elf.model import STB_LOCAL, STT_FUNC, STT_OBJECT, Section, Symbol
from tests.differ.cfixtures import build_pair, diff_pair, names

SOURCE = """
int total;
int first(int v) { static int __key; __key += v; return __key; }
int second(int v) { static int __key; __key -= v; return __key + total; }
"""


@pytest.mark.parametrize(("name", "section", "fresh"), [
    ("__key.12", ".bss.__key.12", True),
    ("ep_alloc.__key.3", ".bss.ep_alloc.__key.3", True),  # clang's spelling
    ("__already_done.4", ".data.once", True),
    ("flag.2", ".data.once", True),
    ("_rs.21", ".data._rs.21", True),
    ("CSWTCH.90", ".rodata.CSWTCH.90", True),
    (".L__unnamed_1", ".data..L__unnamed_1", True),
    ("my_key.3", ".bss.my_key.3", False),
    ("__keyboard.1", ".bss.__keyboard.1", False),
    ("calls.4", ".data.calls.4", False),
])
def test_which_statics_are_fresh(name: str, section: str, fresh: bool) -> None:
    symbol = Symbol(name, 0, 4, STB_LOCAL, STT_OBJECT,
                    section=Section(section, 1, 3, b"\0" * 4))
    assert is_fresh_static(symbol) is fresh
    function = Symbol("__key", 0, 4, STB_LOCAL, STT_FUNC,
                      section=Section(".text.__key", 1, 6, b"\0" * 4))
    assert not is_fresh_static(function)


def test_a_renumbered_key_leaves_its_users_unchanged(tmp_path: Path) -> None:
    patched = SOURCE.replace("int total;", "int total;\nint zeroth(void) { static int __key; "
                                           "return ++__key; }")
    result = diff_pair(build_pair(tmp_path, SOURCE, patched))
    assert result.changed_functions == []
    assert names(result.new_functions) == {"zeroth"}


def test_a_changed_user_carries_a_fresh_key(tmp_path: Path) -> None:
    patched = SOURCE.replace("__key -= v;", "__key -= 2 * v;")
    result = diff_pair(build_pair(tmp_path, SOURCE, patched))
    assert names(result.changed_functions) == {"second"}
    assert result.output is not None
    defined = {s.name for s in result.output.symbols if s.section is not None}
    assert any(name.startswith("__key.") for name in defined)
    assert not any(r.target_name.startswith("__key") for r in result.resolutions)
