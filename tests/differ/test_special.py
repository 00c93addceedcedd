"""Special-section entries follow their code; entry sizes come from the environment first."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.differ import CannotPatch
from kpatchbuild.differ.special import ENTRY_TABLES, EntrySizes
from kpatchbuild.elf.model import Section
from tests.differ.cfixtures import build_pair, diff_pair, names

# Two functions, each with one hand-made 12-byte bug entry (address, file, line, flags).
SOURCE = r"""
#define BUG_HERE(line) asm volatile("1: ud2\n.pushsection __bug_table,\"aw\"\n" \
	".long 1b - .\n.long 0\n.word " #line ", 0\n.popsection")
int first(int v) { if (v == 3) BUG_HERE(10); return v + 1; }
int second(int v) { if (v == 4) BUG_HERE(20); return v + 2; }
"""


def test_entries_follow_included_functions(tmp_path: Path) -> None:
    pair = build_pair(tmp_path, SOURCE, SOURCE.replace("v + 2", "v + 5"))
    result = diff_pair(pair)
    assert [f.name for f in result.changed_functions] == ["second"]
    table = next(s for s in result.output.sections if s.name == "__bug_table")
    assert len(table.data) == 12
    assert int.from_bytes(table.data[8:10], "little") == 20  # second's entry, not first's
    (anchor,) = table.relocations
    assert anchor.offset == 0 and anchor.symbol.section.name == ".text.second"


def test_a_size_that_does_not_fit_gives_way_to_the_relocations(tmp_path: Path) -> None:
    """BUG_STRUCT_SIZE=7 does not divide the 24-byte table; its relocations, one at the
    start of every 12 bytes, show the entry size."""
    pair = build_pair(tmp_path, SOURCE, SOURCE.replace("v + 2", "v + 5"))
    result = diff_pair(pair, environ={"BUG_STRUCT_SIZE": "7"})
    table = next(s for s in result.output.sections if s.name == "__bug_table")
    assert len(table.data) == 12 and int.from_bytes(table.data[8:10], "little") == 20
    assert any("__bug_table: entries of 12 bytes, as its relocations show" in n
               for n in result.notes)


def test_unreadable_environment_size_is_refused(tmp_path: Path) -> None:
    pair = build_pair(tmp_path, SOURCE, SOURCE.replace("v + 2", "v + 5"))
    with pytest.raises(CannotPatch) as caught:
        diff_pair(pair, environ={"BUG_STRUCT_SIZE": "twelve"})
    assert "BUG_STRUCT_SIZE='twelve' is not a number" in caught.value.message


def test_stride_inferred_without_any_size_given(tmp_path: Path) -> None:
    """Objects of another kernel: no size measured, the default wrong (14-byte entries, as
    .altinstructions has since 6.3, where the default is 12)."""
    alt = SOURCE.replace("__bug_table", ".altinstructions").replace(
        r'#line ", 0\n.popsection', r'#line ", 0, 0\n.popsection')
    pair = build_pair(tmp_path, alt, alt.replace("v + 2", "v + 5"))
    result = diff_pair(pair, entry_sizes={})
    table = next(s for s in result.output.sections if s.name == ".altinstructions")
    assert len(table.data) == 14 and int.from_bytes(table.data[8:10], "little") == 20


def test_table_without_a_consistent_stride_is_refused(tmp_path: Path) -> None:
    broken = SOURCE.replace(r'".long 1b - .\n.long 0\n', r'".long 0\n.long 1b - .\n')
    pair = build_pair(tmp_path, broken, broken.replace("v + 2", "v + 5"))
    with pytest.raises(CannotPatch) as caught:
        diff_pair(pair, environ={"BUG_STRUCT_SIZE": "7"})
    assert "__bug_table" in caught.value.message and "relocations show no other" in (
        caught.value.message) and "BUG_STRUCT_SIZE" in caught.value.message


def test_size_precedence() -> None:
    kind = ENTRY_TABLES["__jump_table"]
    section = Section("__jump_table", entsize=24)
    assert EntrySizes({}, {}).size_of(kind, section) == (24, "sh_entsize")
    assert EntrySizes({"__jump_table": 32}, {}).size_of(kind, section) == (32, "measured")
    env = {"JUMP_STRUCT_SIZE": "16"}
    assert EntrySizes({"__jump_table": 32}, env).size_of(kind, section) == (16, "$JUMP_STRUCT_SIZE")
    assert EntrySizes({}, {}).size_of(kind, Section("__jump_table")) == (16, "default")


# Paravirt sites as 5.x kernels emit them: aligned at their start, fields only (pointer,
# type, length), so the last entry lacks the 16-byte struct's tail padding: 16 + 10 bytes.
PARA_SOURCE = r"""
#define PARA_HERE(type) asm volatile("1: nop\n2:\n.pushsection .parainstructions,\"a\"\n" \
	".balign 8\n.quad 1b\n.byte " #type "\n.byte 2b-1b\n.popsection")
int first(int v) { PARA_HERE(3); return v + 1; }
int second(int v) { PARA_HERE(4); return v + 2; }
"""


def _para_table(result) -> Section:  # noqa: ANN001
    return next(s for s in result.output.sections if s.name == ".parainstructions")


def test_short_last_paravirt_entry_is_kept_whole(tmp_path: Path) -> None:
    pair = build_pair(tmp_path, PARA_SOURCE, PARA_SOURCE.replace("v + 2", "v + 5"))
    result = diff_pair(pair, entry_sizes={".parainstructions": 16})
    assert [f.name for f in result.changed_functions] == ["second"]
    table = _para_table(result)
    assert len(table.data) == 10 and table.data[8] == 4  # second's entry, as emitted
    (anchor,) = table.relocations
    assert anchor.offset == 0 and anchor.symbol.section.name == ".text.second"


def test_paravirt_entry_before_the_short_one_keeps_its_padding(tmp_path: Path) -> None:
    pair = build_pair(tmp_path, PARA_SOURCE, PARA_SOURCE.replace("v + 1", "v + 5"))
    result = diff_pair(pair, entry_sizes={".parainstructions": 16})
    assert [f.name for f in result.changed_functions] == ["first"]
    table = _para_table(result)
    assert len(table.data) == 16 and table.data[8] == 3


def test_wrong_measured_size_corrected_by_the_relocations(tmp_path: Path) -> None:
    """24 does not fit 26 bytes (even padded); the relocations show 16-byte entries."""
    pair = build_pair(tmp_path, PARA_SOURCE, PARA_SOURCE.replace("v + 2", "v + 5"))
    result = diff_pair(pair, entry_sizes={".parainstructions": 24})
    table = _para_table(result)
    assert len(table.data) == 10 and table.data[8] == 4


AUX_STUB = (
    "int {name}(int v)\n{{\n"
    "\tasm goto(\"jmp 6f\\n\"\n"
    "\t\t \".pushsection .altinstr_aux,\\\"ax\\\"\\n\"\n"
    "\t\t \"6: testb ${bit}, kpb_flags(%%rip)\\n\"\n"
    "\t\t \" jnz %l[yes]\\n\"\n"
    "\t\t \" jmp %l[no]\\n\"\n"
    "\t\t \".popsection\\n\" : : : : yes, no);\n"
    "yes:\n\treturn v + {bit};\nno:\n\treturn v;\n}}\n"
)
AUX_SOURCE = "unsigned char kpb_flags;\n" + AUX_STUB.format(name="late", bit=4)


def test_code_moved_in_altinstr_aux_leaves_its_users_unchanged(tmp_path: Path) -> None:
    # A stub added before `late`'s moves it within .altinstr_aux: late is the same.
    patched = AUX_SOURCE.replace("unsigned char kpb_flags;\n", "unsigned char kpb_flags;\n"
                                 + AUX_STUB.format(name="early", bit=2))
    result = diff_pair(build_pair(tmp_path, AUX_SOURCE, patched))
    assert names(result.changed_functions) == set()
    assert names(result.new_functions) == {"early"}
    # A changed stub is a changed function.
    (tmp_path / "b").mkdir()
    changed = diff_pair(build_pair(tmp_path / "b", AUX_SOURCE, AUX_SOURCE.replace(
        "testb $4", "testb $8")))
    assert names(changed.changed_functions) == {"late"}
