"""Which objects a changed file feeds, asked of kbuild on Debian's real 6.1 tree.

`arch/x86/kvm/svm/nested.c` has no Makefile of its own: arch/x86/kvm/Makefile lists it in a
module's composite (`kvm-amd-y += svm/nested.o`). `kernel/sched/rt.c` is in no Makefile:
kernel/sched/build_policy.c `#include`s it. One patch changes both; it must build, with
each object's changes and targets as kbuild builds them, and prove in Debian's kernel.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import CI_KERNEL, RecipeStage, default_root, run_doit

PATCH = Path(__file__).with_name("data") / "object-owners.patch"
RECIPE = """\
description: a parent-listed KVM file and an #included scheduler file, in one patch
module: livepatch_object_owners
targets:
  - debian: {release: 12, series: "6.1", flavour: cloud-amd64}
patches:
  - object-owners.patch
# The patched sched_rr_handler refuses a timeslice over a minute.
check: '! echo 70000 2>/dev/null > /proc/sys/kernel/sched_rr_timeslice_ms'
"""


@pytest.mark.kernel
def test_parent_listed_and_included_c_files_build_and_prove(
        default_recipe_stage: RecipeStage, private_recipes) -> None:  # noqa: ANN001
    recipes, env = private_recipes
    recipe = recipes / "t-owners"
    recipe.mkdir()
    (recipe / "recipe.yaml").write_text(RECIPE)
    shutil.copyfile(PATCH, recipe / PATCH.name)
    result = run_doit("build", "recipe=t-owners", f"kernel={CI_KERNEL}", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    work = default_root() / "work/t-owners" / CI_KERNEL
    objects = json.loads((work / "patched.json").read_text())["objects"]
    assert sorted((o["object"], o["target"], o["identical"]) for o in objects) == [
        ("arch/x86/kvm/svm/nested.o", "kvm_amd", False),
        ("kernel/sched/build_policy.o", "vmlinux", False)]
    changed = {}
    for diff in json.loads((work / "diff.json").read_text())["diffs"]:
        report = json.loads(Path(diff["report"]).read_text())
        changed[diff["object"]] = [f["name"] for f in report["changed_functions"]]
    assert changed == {"arch/x86/kvm/svm/nested.o": ["nested_svm_check_permissions"],
                       "kernel/sched/build_policy.o": ["sched_rr_handler"]}
    proof = json.loads((work / "prove.json").read_text())
    assert "check-patched" in proof["steps"]
