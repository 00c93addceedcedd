"""The patch author's marks (kmod/kpatch-macros.h): callbacks, ignored functions and sections.

The fixtures write the marks the way the macros expand: a pointer in `.kpatchbuild.<kind>`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.differ import CannotPatch
from tests.differ.cfixtures import build_pair, diff_pair, names

BASE = r"""
int counter;
int real(int v) { return v + 1; }
int noisy(int v) { return v * 3; }
"""


_serial = iter(range(10**6))


def mark(kind: str, target: str, type_: str = "void *") -> str:
    return (f"static {type_} __kpb_{kind}_{next(_serial)} "
            f"__attribute__((used, section(\".kpatchbuild.{kind}\"))) = {target};\n")


def test_callback_only_object_is_a_patch(tmp_path: Path) -> None:
    patched = BASE + ("static int setup(void *obj) { counter = 7; return 0; }\n"
                      + mark("pre_patch", "setup"))
    result = diff_pair(build_pair(tmp_path, BASE, patched))
    assert result.callbacks == {"pre_patch": "setup"}
    assert names(result.changed_functions) == set()
    assert names(result.new_functions) == {"setup"}
    assert result.output is not None
    assert not any(s.name.startswith(".kpatchbuild") for s in result.output.sections)
    assert "setup" in {s.name for s in result.output.symbols}
    assert "unit.o: pre_patch callback: setup" in result.decision_lines()


def test_callback_beside_a_changed_function(tmp_path: Path) -> None:
    patched = BASE.replace("v + 1", "v + 2") + (
        "static void teardown(void *obj) { counter = 0; }\n" + mark("post_unpatch", "teardown"))
    result = diff_pair(build_pair(tmp_path, BASE, patched))
    assert names(result.changed_functions) == {"real"}
    assert result.callbacks == {"post_unpatch": "teardown"}


def test_ignored_function_is_not_carried(tmp_path: Path) -> None:
    patched = (BASE.replace("v + 1", "v + 2").replace("v * 3", "v * 4")
               + mark("ignore_function", "noisy"))
    result = diff_pair(build_pair(tmp_path, BASE, patched))
    assert names(result.changed_functions) == {"real"}


def test_ignored_section_is_not_carried(tmp_path: Path) -> None:
    patched = (BASE.replace("v + 1", "v + 2").replace("v * 3", "v * 4")
               + mark("ignore_section", '".text.noisy"', "const char *"))
    result = diff_pair(build_pair(tmp_path, BASE, patched))
    assert names(result.changed_functions) == {"real"}


def test_only_ignored_changes_are_no_change(tmp_path: Path) -> None:
    patched = BASE.replace("v * 3", "v * 4") + mark("ignore_function", "noisy")
    result = diff_pair(build_pair(tmp_path, BASE, patched))
    assert result.output is None


def test_two_callbacks_of_one_kind_refused(tmp_path: Path) -> None:
    patched = BASE + ("static int one(void *obj) { return 0; }\n"
                      "static int two(void *obj) { return 1; }\n"
                      + mark("pre_patch", "one") + mark("pre_patch", "two"))
    with pytest.raises(CannotPatch) as caught:
        diff_pair(build_pair(tmp_path, BASE, patched))
    assert "two pre_patch callbacks in one object (one and two)" in caught.value.message


def test_unknown_mark_refused(tmp_path: Path) -> None:
    patched = BASE.replace("v + 1", "v + 2") + mark("force_unsafe", "noisy")
    with pytest.raises(CannotPatch) as caught:
        diff_pair(build_pair(tmp_path, BASE, patched))
    assert "section .kpatchbuild.force_unsafe: a mark kpatchbuild does not know" in (
        caught.value.message)


# The shapes kpatch's own kpatch-macros.h gives its marks: a {fn, objname} pair per
# callback, and global pointers for ignored and forced functions.
KPATCH_CALLBACK = """
struct kpatch_post_patch_callback { void (*fn)(void *obj); char *objname; };
static struct kpatch_post_patch_callback kpatch_post_patch_data
	__attribute__((used, section(".kpatch.callbacks.post_patch"))) = { .fn = {fn} };
"""


def test_kpatchs_own_mark_sections_are_read(tmp_path: Path) -> None:
    patched = (BASE.replace("v + 1", "v + 2").replace("v * 3", "v * 4")
               + "static void announce(void *obj) { counter = 9; }\n"
               + KPATCH_CALLBACK.replace("{fn}", "announce")
               + 'void *__kpatch_ignore_func_noisy __attribute__((section('
                 '".kpatch.ignore.functions"))) = noisy;\n'
               + 'void *__kpatch_force_func_real __attribute__((section(".kpatch.force")))'
                 ' = real;\n')
    result = diff_pair(build_pair(tmp_path, BASE, patched))
    assert result.callbacks == {"post_patch": "announce"}
    assert names(result.changed_functions) == {"real"}  # noisy's change is ignored
    assert result.output is not None
    out_sections = {s.name for s in result.output.sections}
    assert not any(name.startswith(".kpatch.") for name in out_sections)
    out_symbols = {s.name for s in result.output.symbols}
    assert "__kpatch_ignore_func_noisy" not in out_symbols
    assert "__kpatch_force_func_real" not in out_symbols
    assert any("real is marked KPATCH_FORCE_UNSAFE" in note for note in result.notes)
