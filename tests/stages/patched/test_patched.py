"""The patched stage: touched files -> objects, compiled before and after, cached by content."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from kpatchbuild.base.errors import BuildError, RecipeError
from kpatchbuild.base.store import Store, default_root
from kpatchbuild.stages.fetch.source import link_tree, no_write_through
from kpatchbuild.stages.original.original import STORE_KIND, OriginalStage
from kpatchbuild.stages.patched.patched import Workspace, objects_to_rebuild
from tests.conftest import CI_KERNEL, PROJECT, RecipeStage, run_doit


class KbuildWorkspace(Workspace):
    """A workspace whose kbuild (asked by a dry run on a real tree) compiles ``objects``."""

    objects: set[str] = set()
    asked: list[str]

    def built_objects(self, directory: str) -> set[str]:
        self.asked.append(directory)
        return {o for o in self.objects if o.startswith(f"{directory}/")}


def prepared_stage(tmp_path: Path, objects: frozenset[str] = frozenset(
        {"fs/proc/cmdline.o", "fs/proc/base.o"})) -> tuple[OriginalStage, Workspace]:
    store = Store(tmp_path / "cache")
    stage = OriginalStage("prepared", "k", tmp_path / "stage", "6.1.0-1-test")
    workspace = KbuildWorkspace(store, stage)
    workspace.objects, workspace.asked = set(objects), []
    (workspace.tree / "fs/proc").mkdir(parents=True)
    (workspace.tree / "fs/proc/Makefile").write_text("proc-y := cmdline.o base.o\n")
    return stage, workspace


@pytest.mark.parametrize(("changed", "message"), [
    (["Documentation/x.rst"], "touch only files kbuild does not build"),
    (["arch/x86/boot/main.c"], "arch/x86/boot/main.c is code that cannot be live-patched"),
    (["arch/x86/entry/entry_64.S"], "is assembly or a linker script"),
    (["fs/proc/Makefile"], "changes the build itself"),
    (["include/linux/fs.h"], "include/linux/fs.h is a header, and which objects include it "
                             "is known only from a full build or a header index"),
    (["fs/proc/unlisted.c"], "kbuild does not build fs/proc/unlisted.c"),
])
def test_what_cannot_be_patched_on_a_debian_kernel(tmp_path: Path, changed: list[str],
                                                   message: str) -> None:
    stage, workspace = prepared_stage(tmp_path)
    with pytest.raises(RecipeError, match=message):
        objects_to_rebuild(stage, workspace, changed)


def test_a_c_file_means_its_object(tmp_path: Path) -> None:
    stage, workspace = prepared_stage(tmp_path)
    assert objects_to_rebuild(stage, workspace, ["fs/proc/cmdline.c", "Documentation/a.rst"]) \
        == {"fs/proc/cmdline.o": ["fs/proc/cmdline.c"]}


def test_an_object_listed_by_a_parent_directory_is_its_own(tmp_path: Path) -> None:
    stage, workspace = prepared_stage(tmp_path, frozenset({"arch/x86/kvm/svm/nested.o"}))
    (workspace.tree / "arch/x86/kvm/svm").mkdir(parents=True)
    (workspace.tree / "arch/x86/kvm/Makefile").write_text(
        "kvm-amd-y += svm/svm.o svm/nested.o\n")
    assert objects_to_rebuild(stage, workspace, ["arch/x86/kvm/svm/nested.c"]) == {
        "arch/x86/kvm/svm/nested.o": ["arch/x86/kvm/svm/nested.c"]}
    assert workspace.asked == ["arch/x86/kvm"]  # svm/ has no Makefile: kvm/'s lists it


def test_an_included_c_file_belongs_to_the_objects_including_it(tmp_path: Path) -> None:
    stage, workspace = prepared_stage(tmp_path, frozenset(
        {"kernel/sched/build_policy.o", "kernel/sched/core.o", "kernel/fork.o"}))
    sched = workspace.tree / "kernel/sched"
    sched.mkdir(parents=True)
    (sched / "Makefile").write_text("obj-y += core.o build_policy.o\n")
    (sched / "build_policy.c").write_text('#include "sched.h"\n#include "idle.c"\n'
                                          '# include "rt.c"\n')
    (sched / "core.c").write_text('#include "rt.h"\n/* rt.c is not included */\n')
    (sched / "idle.c").write_text('#include "idle_helpers.c"\n')
    (sched / "rt.c").write_text("int rt;\n")
    (sched / "idle_helpers.c").write_text("int idle;\n")
    assert objects_to_rebuild(stage, workspace, ["kernel/sched/rt.c",
                                                 "kernel/sched/idle_helpers.c"]) == {
        "kernel/sched/build_policy.o": ["kernel/sched/rt.c", "kernel/sched/idle_helpers.c"]}
    (sched / "orphan.c").write_text("int orphan;\n")
    with pytest.raises(RecipeError, match="kbuild does not build kernel/sched/orphan.c in this "
                                          "kernel's config, and no object it builds there "
                                          "includes it"):
        objects_to_rebuild(stage, workspace, ["kernel/sched/orphan.c"])
    assert workspace.asked[-2:] == ["kernel/sched", "kernel"]


def test_object_the_config_leaves_out_is_refused_naming_the_option(tmp_path: Path) -> None:
    stage, workspace = prepared_stage(tmp_path, frozenset(
        {"fs/bar_main.o", "fs/proc/base.o"}))
    stage.tree.mkdir(parents=True)
    (stage.tree / ".config").write_text("CONFIG_PROC_FS=y\n# CONFIG_FOO is not set\n"
                                        "CONFIG_BAR_MOD=m\n")
    (workspace.tree / "fs/Makefile").write_text("obj-$(CONFIG_PROC_FS) += proc/\n"
                                                "obj-$(CONFIG_FOO) += foo.o \\\n\tfoo2.o\n"
                                                "obj-$(CONFIG_BAR_MOD) += bar.o\n"
                                                "bar-y := bar_main.o\n"
                                                "bar-$(CONFIG_FOO) += bar_extra.o\n")
    with pytest.raises(RecipeError) as caught:
        objects_to_rebuild(stage, workspace, ["fs/foo2.c"])
    assert caught.value.message == ("fs/foo2.o is not built in 6.1.0-1-test: "
                                    "CONFIG_FOO is not set; nothing to live-patch there")
    with pytest.raises(RecipeError, match="fs/bar_extra.o is not built .*CONFIG_FOO is not set"):
        objects_to_rebuild(stage, workspace, ["fs/bar_extra.c"])
    assert objects_to_rebuild(stage, workspace, ["fs/bar_main.c"]) == {
        "fs/bar_main.o": ["fs/bar_main.c"]}
    assert objects_to_rebuild(stage, workspace, ["fs/proc/base.c"]) == {
        "fs/proc/base.o": ["fs/proc/base.c"]}
    (stage.tree / ".config").write_text("# CONFIG_PROC_FS is not set\n")
    workspace.objects = set()  # type: ignore[attr-defined]
    with pytest.raises(RecipeError, match="fs/proc/base.o is not built .*CONFIG_PROC_FS is not"):
        objects_to_rebuild(stage, workspace, ["fs/proc/base.c"])


@pytest.mark.kernel
def test_default_recipe_diffs_cmdline(default_recipe_stage: RecipeStage) -> None:
    objects = json.loads((default_recipe_stage.work / "patched.json").read_text())["objects"]
    assert [(o["object"], o["target"], o["identical"]) for o in objects] == [
        ("fs/proc/cmdline.o", "vmlinux", False)]
    (diff,) = json.loads((default_recipe_stage.work / "diff.json").read_text())["diffs"]
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
    work = default_root() / "work/t-edit/debian12-6.1-cloud-amd64"
    patch = recipes / "t-edit/cmdline.patch"
    try:
        def build() -> dict[str, str]:
            # Up to the module: the recipe's check still looks for kpatch=1.
            result = run_doit("module", f"kernel={CI_KERNEL}", env=env)
            assert result.returncode == 0, result.stdout + result.stderr
            (pair,) = json.loads((work / "patched.json").read_text())["objects"]
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
def test_each_changed_object_has_its_own_diff_task(default_recipe_stage: RecipeStage,
                                                   tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    shutil.copytree(PROJECT / "recipes/two-patches", recipes / "t-two")
    env = {"KPATCHBUILD_RECIPES": str(recipes), "KPATCHBUILD_DOIT_DB": str(tmp_path / "db")}
    label = "t-two/debian12-6.1-cloud-amd64"
    patch = recipes / "t-two/version.patch"
    try:
        def diff_tasks_run() -> set[str]:
            result = run_doit("module", f"kernel={CI_KERNEL}", env=env)
            assert result.returncode == 0, result.stdout + result.stderr
            return {line.split()[1] for line in result.stdout.splitlines()
                    if line.startswith(".  diff:")}

        assert diff_tasks_run() == {f"diff:{label}/fs/proc/cmdline.o",
                                    f"diff:{label}/fs/proc/version.o", f"diff:{label}"}
        patch.write_text(patch.read_text().replace("version patched", "version edited"))
        # Only version.o changed: cmdline.o's diff task is up to date.
        assert diff_tasks_run() == {f"diff:{label}/fs/proc/version.o", f"diff:{label}"}
        assert diff_tasks_run() == set()
    finally:
        shutil.rmtree(default_root() / "work/t-two", ignore_errors=True)


@pytest.mark.kernel
def test_default_recipe_module_is_proven_in_debians_kernel(
        default_recipe_stage: RecipeStage) -> None:
    module = json.loads((default_recipe_stage.work / "module.json").read_text())
    assert Path(module["module"]).name == "livepatch_cmdline.ko"
    assert module["release"] == default_recipe_stage.fetch["kernel"]["release"]
    proof = json.loads((default_recipe_stage.work / "prove.json").read_text())
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


def built_stage_with_object(tmp_path: Path) -> tuple[Store, OriginalStage]:
    """A stage linked from a pristine source (kernel/a.c), holding kernel/a.o its build made
    and kbuild's record of the command that made it."""
    store = Store(tmp_path / "cache")
    stage = OriginalStage("built", "k3", store.path(STORE_KIND, "k3"), "6.1.0-1-test")
    (tmp_path / "pristine/kernel").mkdir(parents=True)
    (tmp_path / "pristine/kernel/a.c").write_text("int a;\n")
    link_tree(tmp_path / "pristine", stage.tree)
    (stage.tree / "kernel/a.o").write_text("original object\n")
    (stage.tree / "kernel/.a.o.d").write_text("original deps\n")
    (stage.tree / "kernel/.a.o.cmd").write_text(
        "cmd_kernel/a.o := echo rebuilt > kernel/a.o; echo deps > kernel/.a.o.d\n")
    return store, stage


def test_workspace_links_the_stage_and_compiles_never_write_through(tmp_path: Path) -> None:
    store, stage = built_stage_with_object(tmp_path)
    workspace = Workspace(store, stage)
    with workspace.locked():
        # Pristine sources are linked; what the stage's build made is copied, since kbuild
        # rewrites some of its own files in place.
        assert (workspace.tree / "kernel/a.c").samefile(stage.tree / "kernel/a.c")
        assert not (workspace.tree / "kernel/.a.o.cmd").samefile(stage.tree / "kernel/.a.o.cmd")
        workspace.set_contents({"kernel/a.c": b"int a = 1;\n"})
        output = workspace.compile("kernel/a.o", tmp_path / "log")
    assert output.read_text() == "rebuilt\n"
    assert (stage.tree / "kernel/a.c").read_text() == "int a;\n"
    assert (stage.tree / "kernel/a.o").read_text() == "original object\n"
    assert (stage.tree / "kernel/.a.o.d").read_text() == "original deps\n"


def test_two_cells_of_one_kernel_make_its_workspace_once(tmp_path: Path) -> None:
    """doit -n 2: two recipes' patched steps on one kernel reach an absent workspace at once
    (the matrix benchmark's cold run failed so, 'File exists' in the shared temp tree)."""
    import threading

    store, stage = built_stage_with_object(tmp_path)
    for index in range(300):  # enough files that both threads are inside at once
        (stage.tree / "kernel" / f"f{index}.c").write_text("int x;\n")
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def make() -> None:
        start.wait()
        try:
            Workspace(store, stage).ensure()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=make) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert (Workspace(store, stage).tree / "kernel/f299.c").read_text() == "int x;\n"
    assert not list(store.tmp.iterdir())


def test_a_write_through_discards_the_damaged_trees(tmp_path: Path) -> None:
    store, stage = built_stage_with_object(tmp_path)
    (store.path(STORE_KIND, "k3") / "manifest.json").write_text("{}")
    workspace = Workspace(store, stage)
    workspace.ensure()
    with pytest.raises(BuildError, match=r"make kernel/b.o wrote into 1 file\(s\) shared with "
                       r"the cache \(kernel/a.c\)"):
        with no_write_through(workspace.tree, what="make kernel/b.o",
                              on_damage=workspace.discard):
            with (workspace.tree / "kernel/a.c").open("r+") as inside:
                inside.write("int b;\n")  # in place: the stage's file changes too
            (workspace.tree / "kernel/b.o").write_text("a new file is fine\n")
    assert store.lookup(STORE_KIND, "k3") is None
    assert not workspace.root.exists()


def test_new_files_in_a_linked_tree_are_not_write_through(tmp_path: Path) -> None:
    (tmp_path / "pristine").mkdir()
    (tmp_path / "pristine/Makefile").write_text("all:\n")
    link_tree(tmp_path / "pristine", tmp_path / "linked")
    with no_write_through(tmp_path / "linked", what="make", on_damage=pytest.fail):
        (tmp_path / "linked/Makefile").unlink()
        (tmp_path / "linked/Makefile").write_text("replaced, not written through\n")
        (tmp_path / "linked/out.o").write_text("new\n")
    assert (tmp_path / "pristine/Makefile").read_text() == "all:\n"


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


def test_workspace_names_itself_in_the_tools_records_of_the_stage(tmp_path: Path) -> None:
    """The host tools' records name the directory the stage was built in; in a workspace
    they must name the workspace, or its first make rebuilds objtool."""
    store, stage = built_stage_with_object(tmp_path)
    built_in = tmp_path / "cache/tmp/built-k3-123/tree"
    objtool = stage.tree / "tools/objtool"
    objtool.mkdir(parents=True)
    (objtool / ".check.o.cmd").write_text(f"cmd_{built_in}/tools/objtool/check.o := gcc -o "
                                          f"{built_in}/tools/objtool/check.o check.c\n")
    os.utime(objtool / ".check.o.cmd", (1_000_000_000, 1_000_000_000))
    (objtool / "check.o").write_bytes(f"debug info naming {built_in}".encode())
    stage = replace(stage, built_in=built_in)
    workspace = Workspace(store, stage)
    workspace.ensure()
    record = workspace.tree / "tools/objtool/.check.o.cmd"
    assert record.read_text() == (f"cmd_{workspace.tree}/tools/objtool/check.o := gcc -o "
                                  f"{workspace.tree}/tools/objtool/check.o check.c\n")
    assert record.stat().st_mtime == 1_000_000_000
    # Only records are rewritten; objects stay as the build made them.
    assert (workspace.tree / "tools/objtool/check.o").read_bytes() == \
        f"debug info naming {built_in}".encode()
