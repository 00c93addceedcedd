"""The default patch on Debian's 6.12 kernel, through the whole pipeline, proven under qemu.

6.12 is built with IBT, so objtool does not run on objects compiled for vmlinux: the diff
output has no ORC of its own, and the livepatch module gets it from objtool run at the
module's link. Both halves are checked, since a patch function without ORC would make every
stack through it unreliable and stall later transitions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpatchbuild.elf import read_elf
from kpatchbuild.elf.model import STT_SECTION
from tests.conftest import SERIES_6_12_KERNEL, build_recipe_stage

pytestmark = pytest.mark.kernel


def _code_sections_described_by(obj_path: Path, table: str) -> set[str]:
    """Names of the code sections the entries of ``table`` point into."""
    obj = read_elf(obj_path)
    section = obj.section_by_name(table)
    if section is None:
        return set()
    return {r.symbol.section.name for r in section.relocations
            if r.symbol.type == STT_SECTION and r.symbol.section is not None}


def test_cmdline_recipe_is_built_and_proven_on_6_12() -> None:
    stage = build_recipe_stage("cmdline", SERIES_6_12_KERNEL)
    release = stage.fetch["kernel"]["release"]
    assert release.startswith("6.12.") and stage.original["release"] == release

    (diff,) = json.loads((stage.work / "diff.json").read_text())["diffs"]
    report = json.loads(Path(diff["report"]).read_text())
    assert diff["object"] == "fs/proc/cmdline.o"
    assert [f["name"] for f in report["changed_functions"]] == ["cmdline_proc_show"]
    assert report["new_functions"] == []
    output = Path(diff["output"])
    assert _code_sections_described_by(output, "__patchable_function_entries") == {
        ".text.cmdline_proc_show"}
    assert read_elf(output).section_by_name(".orc_unwind_ip") is None

    module = stage.work / "livepatch_cmdline.ko"
    assert ".text.cmdline_proc_show" in _code_sections_described_by(module, ".orc_unwind_ip")

    proof = json.loads((stage.work / "prove.json").read_text())
    assert proof["steps"][-1] == "check-after"
    assert {"insmod", "check-patched", "rmmod"} <= set(proof["steps"])
