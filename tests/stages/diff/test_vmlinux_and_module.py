"""One patch touching vmlinux and a module: a global new in a vmlinux file, used by the
module's patched code, binds inside the livepatch module with an ordinary relocation, as
kpatch links it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kpatchbuild.stages.diff.objdiff import provided_by_others
from kpatchbuild.stages.patched.patched import ObjectPair
from tests.conftest import CI_KERNEL, RecipeStage, default_root, run_doit

PATCH = Path(__file__).with_name("data") / "vmlinux-and-module.patch"
RECIPE = """\
description: a module's patched code calls a global new in a vmlinux file of the same patch
module: livepatch_vmlinux_and_module
targets:
  - debian: {release: 12, series: "6.1", flavour: cloud-amd64}
patches:
  - vmlinux-and-module.patch
check: >-
  { [ -f /proc/sys/fs/binfmt_misc/status ] ||
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; } &&
  grep -q kpatch /proc/sys/fs/binfmt_misc/status
"""


def _object(tmp_path: Path, name: str, source: str) -> str:
    (tmp_path / f"{name}.c").write_text(source)
    subprocess.run(["gcc", "-c", "-o", str(tmp_path / f"{name}.o"), str(tmp_path / f"{name}.c")],
                   check=True)
    return str(tmp_path / f"{name}.o")


def test_globals_new_in_any_object_of_the_patch_are_provided(tmp_path: Path) -> None:
    empty = _object(tmp_path, "empty", "static int unused;\n")
    defines = _object(tmp_path, "defines", "const char *kpb_word(void) { return \"x\"; }\n")
    vmlinux = ObjectPair("fs/proc/cmdline.o", "vmlinux", empty, defines, False)
    module = ObjectPair("fs/binfmt_misc.o", "binfmt_misc", empty, empty, False)
    assert provided_by_others(module, [vmlinux, module]) == ("kpb_word",)
    assert provided_by_others(vmlinux, [vmlinux, module]) == ()


@pytest.mark.kernel
def test_a_module_calls_a_global_new_in_vmlinux(default_recipe_stage: RecipeStage,
                                                 private_recipes) -> None:  # noqa: ANN001
    recipes, env = private_recipes
    (recipes / "t-vmlinux-module").mkdir()
    (recipes / "t-vmlinux-module" / "recipe.yaml").write_text(RECIPE)
    shutil.copyfile(PATCH, recipes / "t-vmlinux-module" / PATCH.name)
    result = run_doit("build", "recipe=t-vmlinux-module", f"kernel={CI_KERNEL}", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    work = default_root() / "work/t-vmlinux-module" / CI_KERNEL
    objects = json.loads((work / "patched.json").read_text())["objects"]
    assert sorted((o["object"], o["target"]) for o in objects) == [
        ("fs/binfmt_misc.o", "binfmt_misc"), ("fs/proc/cmdline.o", "vmlinux")]
    proof = json.loads((work / "prove.json").read_text())
    assert "check-patched" in proof["steps"] and "preload:binfmt_misc" in proof["steps"]
