"""The example recipes, each built and proven in its kernel under qemu by `doit build`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpatchbuild.stages.prove.vm import expected_steps
from tests.conftest import CI_KERNEL, TINY_KERNEL, RecipeStage, build_recipe_stage

pytestmark = pytest.mark.kernel

# The built-kernel recipes' one target; the others are proven here on Debian's 6.1 cloud
# kernel (the rest of their matrices: `doit test`, and the README's table of a full run).
BUILT = {"cmdline-tiny", "header-change"}


def build_example(recipe: str) -> RecipeStage:
    return build_recipe_stage(recipe, TINY_KERNEL if recipe in BUILT else CI_KERNEL)


EXAMPLES = {
    # recipe: {object: (changed functions, new functions)}
    "cmdline": {"fs/proc/cmdline.o": (["cmdline_proc_show"], [])},
    "cmdline-tiny": {"fs/proc/cmdline.o": (["cmdline_proc_show"], [])},
    "new-function": {"fs/proc/cmdline.o": (["cmdline_proc_show"], ["kpatch_show_marker"])},
    "two-patches": {"fs/proc/cmdline.o": (["cmdline_proc_show"], []),
                    "fs/proc/version.o": (["version_proc_show"], [])},
    "callbacks": {"fs/proc/cmdline.o": (["cmdline_proc_show"], [])},
    "shadow-variable": {"fs/proc/cmdline.o": (["cmdline_proc_show"], [])},
    "header-change": {"fs/proc/version.o": (["version_proc_show"], [])},
    "header-change-debian": {"fs/proc/version.o": (["version_proc_show"], [])},
    "module-binfmt": {"fs/binfmt_misc.o": (["bm_status_read"], [])},
    "no-check": {"fs/readdir.o": (["filldir64"], [])},
    "shared-global": {"fs/proc/cmdline.o": ([], ["kpb_shared_marker"]),
                      "fs/proc/version.o": (["version_proc_show"], [])},
    "task-comm-kpatch": {"fs/exec.o": (["__set_task_comm"], []),
                         "fs/proc/version.o": ([], ["kpatch_post_unpatch_comm",
                                                    "kpatch_pre_patch_comm"])},
}


@pytest.mark.parametrize("recipe", sorted(EXAMPLES))
def test_example_is_built_and_proven(recipe: str) -> None:
    stage = build_example(recipe)
    diffs = json.loads((stage.work / "diff.json").read_text())["diffs"]
    found = {}
    for diff in diffs:
        report = json.loads(Path(diff["report"]).read_text())
        if report["status"] == "no-change":  # rebuilt, other bytes (debug info), same code
            assert diff["output"] is None and not report["changed_functions"]
            continue
        found[diff["object"]] = ([f["name"] for f in report["changed_functions"]],
                                 [f["name"] for f in report["new_functions"]])
    assert found == EXAMPLES[recipe]
    proof = json.loads((stage.work / "prove.json").read_text())
    if recipe == "no-check":  # proven without a behavioural check, and recorded so
        assert proof["steps"] == expected_steps(with_check=False) and not proof["checked"]
    else:
        assert proof["steps"][-1] == "check-after" and proof["checked"]
        assert "check-patched" in proof["steps"]
    assert Path(proof["module"]).is_file()


def test_kpatch_style_patch_keeps_its_tracepoint_and_registers_its_callbacks() -> None:
    """src.orig/ src/ headers and kpatch-macros.h callbacks in an object with no changed
    function; the tracepoint's unexported key a livepatch relocation of the jump table
    (proven above: the check needs the callback)."""
    stage = build_example("task-comm-kpatch")
    diffs = {d["object"]: d for d in json.loads((stage.work / "diff.json").read_text())["diffs"]}
    callbacks = json.loads(Path(diffs["fs/proc/version.o"]["report"]).read_text())
    assert callbacks["callbacks"] == {"pre_patch": "kpatch_pre_patch_comm",
                                      "post_unpatch": "kpatch_post_unpatch_comm"}
    assert not callbacks["changed_functions"]
    report = json.loads(Path(diffs["fs/exec.o"]["report"]).read_text())
    assert "__jump_table" in {s["name"] for s in report["sections"]}
    assert ".klp.sym.vmlinux.__tracepoint_task_rename,0" in {s["name"] for s in
                                                             report["symbols"]}
    module = Path(json.loads((stage.work / "module.json").read_text())["module"])
    from tests.stages.module.elfcheck import section_headers
    assert ".klp.rela.vmlinux__jump_table" in {h.name for h in section_headers(module)}


def test_new_global_of_one_object_binds_inside_the_patch() -> None:
    stage = build_example("shared-global")
    diffs = {d["object"]: d for d in json.loads((stage.work / "diff.json").read_text())["diffs"]}
    report = json.loads(Path(diffs["fs/proc/version.o"]["report"]).read_text())
    how = {s["target_name"]: s for s in report["symbols"]}
    assert how["kpb_shared_marker"]["resolution"] == "provided"
    carried = json.loads(Path(diffs["fs/proc/cmdline.o"]["report"]).read_text())
    assert {"kpb_shared_marker", "kpb_shared_reads"} <= {
        s["name"] for s in carried["symbols"] if s["resolution"] == "included"}


def test_module_patch_targets_the_module_and_loads_it_first() -> None:
    stage = build_example("module-binfmt")
    (diff,) = json.loads((stage.work / "diff.json").read_text())["diffs"]
    assert diff["target"] == "binfmt_misc"
    report = json.loads(Path(diff["report"]).read_text())
    assert report["target"] == "binfmt_misc"
    steps = json.loads((stage.work / "prove.json").read_text())["steps"]
    assert steps.index("preload:binfmt_misc") < steps.index("insmod")


def test_expected_refusal_names_the_data_and_the_remedy() -> None:
    stage = build_example("refused-data-layout")
    refusal = json.loads((stage.work / "diff.json").read_text())["refused"]
    assert refusal.startswith("drivers/char/mem.o: cannot live-patch: data devlist "
                              "(section .rodata.devlist) changed (size 384 -> 480)")
    assert "use a shadow variable" in refusal
    assert not (stage.work / "module").exists()


@pytest.mark.parametrize("recipe", ["header-change", "header-change-debian"])
def test_header_change_rebuilds_every_includer_and_keeps_only_changed_code(recipe: str) -> None:
    """From the built kernel's records, or from the Debian tree's header index.

    Debian's objects carry debug info, whose line table moves with the header's new lines:
    their rebuilds differ in bytes, and the differ finds no change in their code.
    """
    stage = build_example(recipe)
    objects = json.loads((stage.work / "patched.json").read_text())["objects"]
    diffs = json.loads((stage.work / "diff.json").read_text())["diffs"]
    same_code = {o["object"] for o in objects if o["identical"]} | {
        d["object"] for d in diffs
        if json.loads(Path(d["report"]).read_text())["status"] == "no-change"}
    rebuilt = {o["object"] for o in objects}
    assert rebuilt - same_code == {"fs/proc/version.o"}
    # Includers of fs/proc/internal.h whose code the new inline does not touch.
    assert {"fs/proc/generic.o", "fs/proc/inode.o", "fs/proc_namespace.o"} <= same_code
    # fs/proc/cmdline.c does not include it: not rebuilt.
    assert "fs/proc/cmdline.o" not in rebuilt
