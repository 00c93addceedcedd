"""Jump labels and static calls whose key the patch cannot carry, decided by kernel version.

Since Linux 5.8 the loader applies vmlinux's livepatch relocations before it reads the
module's `__jump_table`, so an unexported vmlinux key is kept through one. A key resolved too
late (a module's, or vmlinux's before 5.8): a tracepoint's or pr_debug()'s entry is dropped
(the site stays disabled, as kpatch leaves it), any other refused naming the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.differ import CannotPatch, diff_objects
from kpatchbuild.differ.symbols import load_symbol_table
from kpatchbuild.elf.model import R_X86_64_PC64
from tests.differ.cfixtures import build_pair

# One static branch, as arch_static_branch() emits it: a 5-byte nop, and a jump entry of
# (code, target, key) with the key relative to the entry's third field.
SOURCE = r"""
extern char KEY[];
int site(int v)
{
    asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n"
    ".pushsection __jump_table, \"aw\"\n.balign 8\n"
    ".long 1b - .\n.long %l[yes] - .\n.quad KEY + 8 - .\n.popsection"
    :  : : : yes);
    return v + 1;
yes:
    return v + 2;
}
"""


def _pair(tmp_path: Path, key: str):  # noqa: ANN202
    source = SOURCE.replace("KEY", key)
    return build_pair(tmp_path, source, source.replace("v + 1", "v + 3"))


def _table(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "kallsyms"
    path.write_text("ffffffff81000000 T _stext\nffffffff81000100 T site\n"
                    + "".join(line + "\n" for line in lines))
    return path


def _diff(tmp_path: Path, key: str, *, target: str = "vmlinux",
          version: tuple[int, int] | None, lines: list[str]):  # noqa: ANN202
    pair = _pair(tmp_path, key)
    objname = "vmlinux" if target == "vmlinux" else target
    table = load_symbol_table(_table(tmp_path, lines), objname)
    return diff_objects(pair.orig, pair.patched, target=target, symbols=table, exports={},
                        kernel_version=version, require_fentry=False)


def test_vmlinux_key_kept_through_a_livepatch_relocation_since_5_8(tmp_path: Path) -> None:
    result = _diff(tmp_path, "__tracepoint_kpb_event", version=(6, 1),
                   lines=["ffffffff82000000 D __tracepoint_kpb_event"])
    assert [f.name for f in result.changed_functions] == ["site"]
    table = next(s for s in result.output.sections if s.name == "__jump_table")
    assert len(table.data) == 16
    key = next(r for r in table.relocations if r.type == R_X86_64_PC64)
    assert key.symbol.name == ".klp.sym.vmlinux.__tracepoint_kpb_event,0"
    assert key.offset == 8


@pytest.mark.parametrize("version", [(5, 4), None])
def test_vmlinux_tracepoint_entry_dropped_before_5_8(tmp_path: Path,
                                                     version: tuple[int, int] | None) -> None:
    # As kpatch does there: the site stays as compiled, a disabled tracepoint.
    result = _diff(tmp_path, "__tracepoint_kpb_event", version=version,
                   lines=["ffffffff82000000 D __tracepoint_kpb_event"])
    assert [f.name for f in result.changed_functions] == ["site"]
    assert not any(s.name == "__jump_table" for s in result.output.sections)
    (note,) = result.notes
    assert note.startswith("tracepoint kpb_event in site+0x") and "before 5.8" in note


@pytest.mark.parametrize("version", [(5, 4), None])
def test_vmlinux_static_key_refused_before_5_8(tmp_path: Path,
                                              version: tuple[int, int] | None) -> None:
    with pytest.raises(CannotPatch) as caught:
        _diff(tmp_path, "kpb_feature_key", version=version,
              lines=["ffffffff82000000 D kpb_feature_key"])
    message = caught.value.message
    assert "__jump_table entry in site+0x" in message
    assert "static key kpb_feature_key of vmlinux" in message and "before 5.8" in message


def test_module_tracepoint_entry_is_dropped_with_a_note(tmp_path: Path) -> None:
    result = _diff(tmp_path, "__tracepoint_kpb_event", target="kpb_mod", version=(6, 1),
                   lines=["ffffffffa0000000 d __tracepoint_kpb_event\t[kpb_mod]",
                          "ffffffffa0001000 t site\t[kpb_mod]"])
    assert [f.name for f in result.changed_functions] == ["site"]
    assert not any(s.name == "__jump_table" for s in result.output.sections)
    (note,) = result.notes
    assert note.startswith("tracepoint kpb_event in site+0x") and "inert" in note


def test_module_static_key_refused_naming_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(CannotPatch) as caught:
        _diff(tmp_path, "kpb_feature_key", target="kpb_mod", version=(6, 1),
              lines=["ffffffffa0000000 d kpb_feature_key\t[kpb_mod]",
                     "ffffffffa0001000 t site\t[kpb_mod]"])
    message = caught.value.message
    assert "static key kpb_feature_key of kpb_mod" in message
    assert "static_key_enabled()" in message and "site+0x" in message
