"""The differ applied to a target's objects: symbol files read once per content."""

from __future__ import annotations

from pathlib import Path

from kpatchbuild.base.store import file_hash
from kpatchbuild.stages.diff.objdiff import _target_tables, differ_sources


def _tables(system_map: Path, symvers: Path):  # noqa: ANN202
    return _target_tables(str(system_map), file_hash(system_map), str(symvers),
                          file_hash(symvers), "vmlinux")


def test_symbol_files_are_read_once_per_content(tmp_path: Path) -> None:
    system_map = tmp_path / "System.map"
    symvers = tmp_path / "Module.symvers"
    system_map.write_text("ffffffff81000000 T _stext\nffffffff81000100 t cmdline_proc_show\n")
    symvers.write_text("0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n")
    table, exports = _tables(system_map, symvers)
    assert "cmdline_proc_show" in table and "printk" in exports
    assert _tables(system_map, symvers)[0] is table  # the next object of the patch
    system_map.write_text("ffffffff81000000 T _stext\nffffffff81000200 t version_proc_show\n")
    changed, _ = _tables(system_map, symvers)
    assert changed is not table and "version_proc_show" in changed


def test_the_differ_version_covers_the_include_passes() -> None:
    # A changed pass must re-diff cached objects: every module of the differ counts.
    names = {path.relative_to(path.parents[1]).as_posix() for path in differ_sources()}
    assert {"include/emit.py", "include/references.py", "differ/compare.py",
            "elf/model.py"} <= names
