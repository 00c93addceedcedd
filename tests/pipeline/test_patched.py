"""The patched stage: touched files -> objects, compiled before and after, cached by content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kpatchbuild.errors import RecipeError
from kpatchbuild.original import OriginalStage
from kpatchbuild.patched import Workspace, objects_to_rebuild
from kpatchbuild.store import Store, default_root
from tests.conftest import PROJECT, RecipeStage, run_doit


def prepared_stage(tmp_path: Path) -> tuple[OriginalStage, Workspace]:
    store = Store(tmp_path / "cache")
    stage = OriginalStage("prepared", "k", tmp_path / "stage", "6.1.0-1-test")
    workspace = Workspace(store, stage)
    (workspace.tree / "fs/proc").mkdir(parents=True)
    (workspace.tree / "fs/proc/Makefile").write_text("proc-y := cmdline.o base.o\n")
    return stage, workspace


@pytest.mark.parametrize(("changed", "message"), [
    (["Documentation/x.rst"], "touch only files kbuild does not build"),
    (["arch/x86/boot/main.c"], "arch/x86/boot/main.c is code that cannot be live-patched"),
    (["arch/x86/entry/entry_64.S"], "is assembly or a linker script"),
    (["fs/proc/Makefile"], "changes the build itself"),
    (["include/linux/fs.h"], "include/linux/fs.h is a header; which objects include it is "
                             "only known from a full build"),
    (["fs/proc/unlisted.c"], "kbuild does not build fs/proc/unlisted.c"),
])
def test_what_cannot_be_patched_on_a_debian_kernel(tmp_path: Path, changed: list[str],
                                                   message: str) -> None:
    stage, workspace = prepared_stage(tmp_path)
    with pytest.raises(RecipeError, match=message):
        objects_to_rebuild(stage, workspace, changed, "r.yaml")


def test_a_c_file_means_its_object(tmp_path: Path) -> None:
    stage, workspace = prepared_stage(tmp_path)
    assert objects_to_rebuild(stage, workspace, ["fs/proc/cmdline.c", "Documentation/a.rst"],
                              "r") == ["fs/proc/cmdline.o"]


@pytest.mark.kernel
def test_default_recipe_diffs_cmdline(default_recipe_stage: RecipeStage) -> None:
    objects = json.loads((default_recipe_stage.work / "objects.json").read_text())["objects"]
    assert [(o["object"], o["target"], o["identical"]) for o in objects] == [
        ("fs/proc/cmdline.o", "vmlinux", False)]
    (diff,) = json.loads((default_recipe_stage.work / "diffs.json").read_text())["diffs"]
    report = json.loads(Path(diff["report"]).read_text())
    assert [f["name"] for f in report["changed_functions"]] == ["cmdline_proc_show"]
    assert report["new_functions"] == []
    assert Path(diff["output"]).is_file()


@pytest.mark.kernel
def test_patch_edits_recompile_only_the_patched_side_and_reverts_hit_the_cache(
        default_recipe_stage: RecipeStage, tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    shutil.copytree(PROJECT / "recipes/cmdline", recipes / "t-edit")
    env = {"KPATCHBUILD_RECIPES": str(recipes), "KPATCHBUILD_DOIT_DB": str(tmp_path / "db")}
    work = default_root() / "work/t-edit/debian-6.1-cloud-amd64"
    patch = recipes / "t-edit/cmdline.patch"
    try:
        def build() -> dict[str, str]:
            result = run_doit("build", env=env)
            assert result.returncode == 0, result.stdout + result.stderr
            (pair,) = json.loads((work / "objects.json").read_text())["objects"]
            return pair

        first = build()
        original_text = patch.read_text()
        patch.write_text(original_text.replace("kpatch=1", "kpatch=2"))
        edited = build()
        assert edited["original"] == first["original"]
        assert edited["patched"] != first["patched"]
        patch.write_text(original_text)
        reverted = build()
        assert reverted["patched"] == first["patched"]
    finally:
        shutil.rmtree(default_root() / "work/t-edit", ignore_errors=True)


@pytest.mark.kernel
def test_default_recipe_module_is_proven_in_debians_kernel(
        default_recipe_stage: RecipeStage) -> None:
    module = json.loads((default_recipe_stage.work / "module.json").read_text())
    assert Path(module["module"]).name == "livepatch_cmdline.ko"
    assert module["release"] == default_recipe_stage.fetch["kernel"]["release"]
    proof = json.loads((default_recipe_stage.work / "proof.json").read_text())
    assert proof["steps"] == ["mount", "check-before", "insmod", "transition-enable",
                              "check-patched", "disable", "transition-disable",
                              "sysfs-removed", "rmmod", "check-after"]
    console = Path(proof["console_log"]).read_text(errors="replace")
    assert "KPB-STEP check-patched ok" in console
    assert "livepatch: 'livepatch_cmdline': patching complete" in console


def test_workspace_puts_back_what_an_earlier_compile_edited(tmp_path: Path) -> None:
    stage, workspace = prepared_stage(tmp_path)
    (stage.tree / "fs/proc").mkdir(parents=True)
    (stage.tree / "fs/proc/cmdline.c").write_bytes(b"original cmdline\n")
    (stage.tree / "fs/proc/version.c").write_bytes(b"original version\n")
    for name in ("cmdline.c", "version.c"):
        shutil.copy(stage.tree / "fs/proc" / name, workspace.tree / "fs/proc" / name)
    # Recipe A edits version.c (and, say, its run was killed before restoring it)...
    workspace.set_contents({"fs/proc/version.c": b"patched by A\n", "fs/proc/new.c": b"A\n"})
    # ...recipe B touches only cmdline.c: its objects must see the original version.c.
    workspace.set_contents({"fs/proc/cmdline.c": b"patched by B\n"})
    assert (workspace.tree / "fs/proc/version.c").read_bytes() == b"original version\n"
    assert not (workspace.tree / "fs/proc/new.c").exists()
    assert (workspace.tree / "fs/proc/cmdline.c").read_bytes() == b"patched by B\n"


def test_workspace_is_a_whole_copy_before_anything_touches_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    stage = OriginalStage("built", "k2", tmp_path / "stage", "6.1.0-1-test")
    (stage.tree / "kernel").mkdir(parents=True)
    (stage.tree / "Makefile").write_text("all:\n")
    workspace = Workspace(store, stage)
    with workspace.locked():
        workspace.set_contents({"kernel/probe.c": b"int x;\n"})
    assert (workspace.tree / "Makefile").read_text() == "all:\n"
    assert (workspace.tree / "kernel/probe.c").read_bytes() == b"int x;\n"
    assert (stage.tree / "kernel").exists() and not (stage.tree / "kernel/probe.c").exists()
