"""The include passes one by one (select functions, select table entries, check, emit), on
small objects, and `diff --debug PASS`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kpatchbuild.differ.compare import compare_objects
from kpatchbuild.differ.correlate import correlate_symbols
from kpatchbuild.differ.include import (
    Selection,
    check,
    emit,
    select_functions,
    select_table_entries,
)
from kpatchbuild.differ.index import ObjectIndex
from kpatchbuild.differ.resolve import Resolver
from kpatchbuild.differ.special import EntrySizes
from kpatchbuild.differ.symbols import load_symbol_table
from kpatchbuild.differ.trace import Trace
from kpatchbuild.elf import read_elf
from tests.differ.cfixtures import build_pair
from tests.differ.test_special import SOURCE as BUG_SOURCE

DYNDBG_CLASSES = BUG_SOURCE + """
static const char *kpb_classes[] __attribute__((used, section("__dyndbg_classes"))) = {"c"};
static struct { const char *f; long key[2]; } kpb_desc
	__attribute__((used, section("__dyndbg"), aligned(8))) = {"second"};
int uses_desc(int v) { return v + (int)(long)&kpb_desc; }
"""


SIZES = EntrySizes({}, {})


def _selection(tmp_path: Path, source: str, patched: str) -> tuple[Selection, Trace]:
    pair = build_pair(tmp_path, source, patched)
    orig, new = ObjectIndex(read_elf(pair.orig)), ObjectIndex(read_elf(pair.patched))
    correlation = correlate_symbols(orig, new)
    trace = Trace(["all"])
    resolver = Resolver(orig, "vmlinux", load_symbol_table(pair.orig), None)
    return Selection(correlation, compare_objects(correlation), resolver, trace), trace


def _kept(selection: Selection) -> dict[str, int]:
    return {piece.source.name: len(piece.ranges) for piece in selection.slices.values()}


def test_select_functions_carries_code_not_yet_entries(tmp_path: Path) -> None:
    selection, trace = _selection(tmp_path, BUG_SOURCE, BUG_SOURCE.replace("v + 2", "v + 5"))
    select_functions(selection)
    assert set(_kept(selection)) == {".text.second"}
    assert [s.name for s in selection.functions] == ["second"]
    assert "[select-functions] carry .text.second (for second)" in trace.lines


def test_select_table_entries_keeps_those_of_carried_code(tmp_path: Path) -> None:
    selection, trace = _selection(tmp_path, BUG_SOURCE, BUG_SOURCE.replace("v + 2", "v + 5"))
    select_functions(selection)
    select_table_entries(selection, SIZES)
    assert _kept(selection)["__bug_table"] == 1
    assert "[select-entries] __bug_table: 1 entries kept" in trace.lines


def test_check_refuses_what_selection_cannot_carry_safely(tmp_path: Path) -> None:
    selection, trace = _selection(tmp_path, DYNDBG_CLASSES,
                              DYNDBG_CLASSES.replace("v + (int)", "v + 3 + (int)"))
    select_functions(selection)
    select_table_entries(selection, SIZES)
    assert not selection.refusals
    check(selection)
    assert any("__dyndbg_classes" in r for r in selection.refusals)
    assert any(line.startswith("[check] refused:") for line in trace.lines)


def test_emit_writes_only_the_selection(tmp_path: Path) -> None:
    selection, trace = _selection(tmp_path, BUG_SOURCE, BUG_SOURCE.replace("v + 2", "v + 5"))
    select_functions(selection)
    select_table_entries(selection, SIZES)
    check(selection)
    out = emit(selection)
    names = {s.name for s in out.sections}
    assert {".text.second", "__bug_table"} <= names and ".text.first" not in names
    assert any(line.startswith("[emit] section __bug_table: 12 bytes") for line in trace.lines)


def test_cli_debug_prints_the_passes_asked_for(tmp_path: Path) -> None:
    pair = build_pair(tmp_path, BUG_SOURCE, BUG_SOURCE.replace("v + 2", "v + 5"))
    command = [sys.executable, "-m", "kpatchbuild", "diff", str(pair.orig), str(pair.patched),
               "-o", str(tmp_path / "out.o"), "--symbols", str(pair.orig), "--target",
               "vmlinux"]
    # Fixtures are built without -pg: the refusal of its changed function comes after
    # the trace, which is printed all the same.
    result = subprocess.run([*command, "--debug", "compare", "--debug", "select-entries"],
                            capture_output=True, text=True)
    lines = result.stderr.splitlines()
    assert "[compare] second: changed (changed code)" in lines
    assert "[select-entries] __bug_table: 1 entries kept" in lines
    assert not any(line.startswith("[select-functions]") for line in lines)
    bad = subprocess.run([*command, "--debug", "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "kpatchbuild: error: --debug: unknown pass 'nonsense'; the passes are correlate, "
        "compare, select-functions, select-entries, check, emit (or all)"]
