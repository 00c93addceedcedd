"""Real proofs: Debian's own cloud kernel booted under qemu, with modules built against it.

The livepatch is the kernel's own ``samples/livepatch/livepatch-sample.c`` (it replaces
``cmdline_proc_show`` so that /proc/cmdline reads "this has been live patched"), built as an
external module against the default recipe's prepared tree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from kpatchbuild.stages.prove import vm
from tests.conftest import RecipeStage

pytestmark = pytest.mark.kernel

PATCHED_CHECK = 'grep -q "this has been live patched" /proc/cmdline'

# Helper modules loaded before the patch, to show the proof catches what goes wrong in the
# kernel: one warns, one oopses, both in their init function.
WARNING_MODULE = r"""
#include <linux/module.h>
#include <linux/bug.h>
static int __init kpb_warn_init(void)
{
	WARN(1, "kpatchbuild test warning\n");
	return 0;
}
static void __exit kpb_warn_exit(void) {}
module_init(kpb_warn_init);
module_exit(kpb_warn_exit);
MODULE_LICENSE("GPL");
"""

OOPS_MODULE = r"""
#include <linux/module.h>
static int __init kpb_oops_init(void)
{
	*(volatile int *)0 = 1;
	return 0;
}
module_init(kpb_oops_init);
MODULE_LICENSE("GPL");
"""


@dataclass(frozen=True)
class BuiltModules:
    kernel: Path
    release: str  # what the pipeline resolved: Debian's newest 6.1 cloud kernel
    livepatch: Path
    warning: Path
    oops: Path


@pytest.fixture(scope="module")
def modules(default_recipe_stage: RecipeStage,
            tmp_path_factory: pytest.TempPathFactory) -> BuiltModules:
    tree = default_recipe_stage.tree
    directory = tmp_path_factory.mktemp("modules")
    shutil.copy(tree / "samples/livepatch/livepatch-sample.c", directory)
    (directory / "kpb_warn.c").write_text(WARNING_MODULE)
    (directory / "kpb_oops.c").write_text(OOPS_MODULE)
    (directory / "Kbuild").write_text("obj-m := livepatch-sample.o kpb_warn.o kpb_oops.o\n")
    build = subprocess.run(["make", "-C", str(tree), f"M={directory}", "modules"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    return BuiltModules(Path(default_recipe_stage.fetch["files"]) / "vmlinuz",
                        default_recipe_stage.original["release"],
                        directory / "livepatch-sample.ko", directory / "kpb_warn.ko",
                        directory / "kpb_oops.ko")


def test_sample_livepatch_is_proven(modules: BuiltModules, tmp_path: Path) -> None:
    result = vm.prove_livepatch(modules.kernel, modules.livepatch, PATCHED_CHECK,
                                workdir=tmp_path, accel="tcg")
    assert result.patch_name == "livepatch_sample"
    assert [step.name for step in result.steps] == vm.expected_steps()
    assert all(step.ok for step in result.steps), result.steps
    assert result.steps[0].detail == f"kernel {modules.release}"
    dmesg = "\n".join(result.dmesg)
    assert "livepatch: 'livepatch_sample': patching complete" in dmesg
    assert "livepatch: 'livepatch_sample': unpatching complete" in dmesg
    assert result.console_log == tmp_path / "console.log"
    assert "KPB-END" in result.console_log.read_text(errors="replace")
    assert 0 < result.elapsed < 120


def test_check_that_never_passes_fails_at_check_patched(modules: BuiltModules,
                                                        tmp_path: Path) -> None:
    with pytest.raises(vm.VmProofError) as raised:
        vm.prove_livepatch(modules.kernel, modules.livepatch, "false", workdir=tmp_path,
                           accel="tcg")
    error = raised.value
    assert error.step == "check-patched"
    assert error.console_log == tmp_path / "console.log" and error.console_log.is_file()
    assert str(error) == (f"VM proof of livepatch_sample: check-patched: the check failed "
                          f"(exit 1) with the patch applied; it must pass "
                          f"(console log: {tmp_path / 'console.log'})")


def test_check_that_already_passes_fails_at_check_before(modules: BuiltModules,
                                                         tmp_path: Path) -> None:
    with pytest.raises(vm.VmProofError, match=r": check-before: the check passed \(exit 0\) "
                       r"before the patch; it must fail \(console log: "):
        vm.prove_livepatch(modules.kernel, modules.livepatch, "true", workdir=tmp_path,
                           accel="tcg")


def test_wrong_patch_name_fails_at_insmod(modules: BuiltModules, tmp_path: Path) -> None:
    with pytest.raises(vm.VmProofError) as raised:
        vm.prove_livepatch(modules.kernel, modules.livepatch, PATCHED_CHECK, workdir=tmp_path,
                           patch_name="not_this_one", accel="tcg")
    assert raised.value.step == "insmod"
    assert "no /sys/kernel/livepatch/not_this_one" in str(raised.value)


def test_warning_in_dmesg_fails_the_proof(modules: BuiltModules, tmp_path: Path) -> None:
    """Every step passes, but a WARN in the kernel log (quiet on the console) still fails."""
    with pytest.raises(vm.VmProofError) as raised:
        vm.prove_livepatch(modules.kernel, modules.livepatch, PATCHED_CHECK, workdir=tmp_path,
                           preload=[modules.warning], accel="tcg")
    assert raised.value.step == "dmesg"
    assert re.search(r"kernel problem: .*WARNING: CPU: \d+ PID: \d+ at .*kpb_warn",
                     str(raised.value))
    console = raised.value.console_log.read_text(errors="replace")
    assert "KPB-STEP preload:kpb_warn ok" in console
    assert "KPB-STEP check-after ok" in console


def test_oops_fails_the_step_it_happened_in(modules: BuiltModules, tmp_path: Path) -> None:
    with pytest.raises(vm.VmProofError) as raised:
        vm.prove_livepatch(modules.kernel, modules.livepatch, PATCHED_CHECK, workdir=tmp_path,
                           preload=[modules.oops], accel="tcg")
    assert raised.value.step == "preload:kpb_oops"
    # The oops kills insmod (SIGKILL: exit 137) and the reason comes with the failed step.
    assert "insmod /kpb/preload/00-kpb_oops.ko failed (exit 137)" in str(raised.value)
    assert re.search(r"kernel problem: .*(BUG: kernel NULL pointer|Oops)", str(raised.value))


def test_hanging_check_times_out_naming_the_step(modules: BuiltModules, tmp_path: Path) -> None:
    with pytest.raises(vm.VmProofError) as raised:
        vm.prove_livepatch(modules.kernel, modules.livepatch, "sleep 1000", workdir=tmp_path,
                           timeout=15, accel="tcg")
    assert raised.value.step == "check-before"
    assert "timed out after 15 s during step check-before" in str(raised.value)
