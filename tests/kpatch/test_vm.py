"""The real ``kpatch`` command inside Debian's own 6.1 kernel under qemu.

Three modules built by the pipeline for the default recipe's kernel:
- ``livepatch_cmdline`` (recipes/cmdline): /proc/cmdline ends with " kpatch=1";
- ``livepatch_cmdline_v2``: the same recipe with a further edit, " kpatch=2", which
  atomically replaces the first;
- ``livepatch_stuck``: patches ``smpboot_thread_fn``, the loop the per-CPU kthreads
  (ksoftirqd, cpuhp, migration) sleep in, so its transition can never finish by itself:
  the timeout, the roll-back, ``--keep``, ``signal`` and ``force`` meet a real stuck
  transition.

The guest runs the host's Python from the initramfs (guestpython.guest_python) and a script whose
every step prints ``KPB-RUN <step>``, the command's output, ``KPB-RC <step> <status>`` and
the state after it (/proc/cmdline, /sys/kernel/livepatch, /proc/modules) for the test to
read.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from kpatchbuild.stages.prove import guestpython, initramfs, vm
from tests.conftest import PROJECT, RecipeStage, run_doit

pytestmark = pytest.mark.kernel

GUEST_SCRIPT = r"""
M=/kpb/modules
state() {
    echo "KPB-CMDLINE $1 $(cat /proc/cmdline)"
    echo "KPB-SYSFS $1 $(ls /sys/kernel/livepatch | tr '\n' ' ')"
    echo "KPB-MODULES $1 $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
}
run() {
    step=$1; shift
    echo "KPB-RUN $step"
    "$@" 2>&1
    echo "KPB-RC $step $?"
    state $step
}
state boot
run load kpatch load $M/livepatch_cmdline.ko
run list kpatch list
run list-json kpatch list --json
run info kpatch info livepatch_cmdline
run info-json kpatch info --json livepatch_cmdline
run info-file kpatch info --json $M/livepatch_cmdline_v2.ko
run load-again kpatch load $M/livepatch_cmdline.ko
run signal-idle kpatch signal livepatch_cmdline
run replace kpatch replace $M/livepatch_cmdline_v2.ko
run unload kpatch unload livepatch_cmdline_v2
run install kpatch install $M/livepatch_cmdline.ko
run installed ls /var/lib/kpatch/$(uname -r) /etc/systemd/system/kpatch.service \
    /etc/systemd/system/sysinit.target.wants/kpatch.service
run load-all kpatch load --all
run load-all-again kpatch load --all
run unload-all kpatch unload --all
run uninstall kpatch uninstall livepatch_cmdline
run stuck-timeout kpatch load --timeout 3 $M/livepatch_stuck.ko
run stuck-keep kpatch load --timeout 3 --keep $M/livepatch_stuck.ko
run stuck-list kpatch list --json
run stuck-signal kpatch signal livepatch_stuck
run stuck-force kpatch force livepatch_stuck
"""


@dataclass(frozen=True)
class Step:
    output: str
    status: int
    cmdline: str
    sysfs: list[str]
    modules: list[str]


def _build_module(recipe: str, target: str, env: dict[str, str]) -> Path:
    result = run_doit(f"module:{recipe}/{target}", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((vm_cache_work() / recipe / target / "module.json").read_text())
    return Path(record["module"])


def vm_cache_work() -> Path:
    from kpatchbuild.base.store import default_root
    return default_root() / "work"


@dataclass(frozen=True)
class Guest:
    steps: dict[str, Step]
    console_log: Path
    release: str  # the kernel's, as the pipeline resolved it


@pytest.fixture(scope="module")
def guest_steps(default_recipe_stage: RecipeStage,
                tmp_path_factory: pytest.TempPathFactory) -> Guest:
    target = default_recipe_stage.work.name
    v1 = Path(json.loads((default_recipe_stage.work / "module.json").read_text())["module"])

    recipes = tmp_path_factory.mktemp("recipes")
    v2 = recipes / "kpatch-cmdline-v2"
    shutil.copytree(PROJECT / "recipes/cmdline", v2)
    (v2 / "recipe.yaml").write_text(
        (v2 / "recipe.yaml").read_text().replace("module: livepatch_cmdline",
                                                 "module: livepatch_cmdline_v2")
        .replace("kpatch=1", "kpatch=2"))
    (v2 / "cmdline.patch").write_text((v2 / "cmdline.patch").read_text()
                                      .replace("kpatch=1", "kpatch=2"))
    shutil.copytree(Path(__file__).parent / "recipes/kpatch-stuck", recipes / "kpatch-stuck")
    env = {"KPATCHBUILD_RECIPES": str(recipes),
           "KPATCHBUILD_DOIT_DB": str(recipes.parent / "doit-db.json")}
    modules = [v1, _build_module("kpatch-cmdline-v2", target, env),
               _build_module("kpatch-stuck", target, env)]

    python = guestpython.guest_python(["kpatchbuild.kpatch.__main__"])
    wrapper = f'#!/bin/sh\nexec {python.command("-m", "kpatchbuild.kpatch")} "$@"\n'
    files = [*python.entries,
             initramfs.regular_file("usr/sbin/kpatch", wrapper.encode(), 0o755),
             *(initramfs.regular_file(f"kpb/modules/{m.name}", m.read_bytes())
               for m in modules)]
    workdir = tmp_path_factory.mktemp("guest")
    kernel = Path(default_recipe_stage.fetch["files"]) / "vmlinuz"
    run = vm.run_guest_script(kernel, GUEST_SCRIPT, workdir=workdir, files=files,
                              timeout=600, accel="tcg")
    log = run.console_log
    assert not run.timed_out, f"the guest timed out; console log: {log}"
    assert run.exit_status == 0, f"the guest script did not end; console log: {log}"
    assert not run.problems, f"kernel problem {run.problems[0]}; console log: {log}"
    return Guest(_parse(run.console), log, default_recipe_stage.original["release"])


def _parse(console: str) -> dict[str, Step]:
    steps: dict[str, Step] = {}
    current: str | None = None
    lines: list[str] = []
    facts: dict[str, dict[str, str]] = {}
    for raw in console.splitlines():
        line = raw.replace("\r", "")
        if match := re.match(r"KPB-RUN (\S+)$", line):
            current, lines = match[1], []
        elif match := re.match(r"KPB-RC (\S+) (\d+)$", line):
            facts.setdefault(match[1], {})["rc"] = match[2]
            facts[match[1]]["output"] = "\n".join(lines)
            current = None
        elif match := re.match(r"KPB-(CMDLINE|SYSFS|MODULES) (\S+) ?(.*)$", line):
            facts.setdefault(match[2], {})[match[1]] = match[3].strip()
        elif current is not None:
            lines.append(line)
    for name, fact in facts.items():
        steps[name] = Step(fact.get("output", ""), int(fact.get("rc", -1)),
                           fact.get("CMDLINE", ""), fact.get("SYSFS", "").split(),
                           fact.get("MODULES", "").split())
    return steps


def _step(guest: Guest, name: str) -> tuple[Step, str]:
    """The step and what to say if an assertion on it fails (with the console log)."""
    assert name in guest.steps, f"step {name} never reported; console log: {guest.console_log}"
    return guest.steps[name], f"step {name}: {guest.steps[name]}; console log: " \
                              f"{guest.console_log}"


def test_load_applies_the_patch(guest_steps) -> None:
    boot, _ = _step(guest_steps, "boot")
    assert "kpatch=" not in boot.cmdline and boot.sysfs == []
    step, where = _step(guest_steps, "load")
    assert step.status == 0, where
    assert "loaded livepatch_cmdline: patch enabled, transition done" in step.output, where
    assert step.cmdline.endswith(" kpatch=1"), where
    assert step.sysfs == ["livepatch_cmdline"], where


def test_list_and_info_show_the_loaded_patch(guest_steps) -> None:
    step, where = _step(guest_steps, "list")
    assert step.status == 0, where
    assert re.search(r"livepatch_cmdline +enabled, transition done", step.output), where
    listed, where = _step(guest_steps, "list-json")
    state = json.loads(listed.output)
    assert state["kernel"]["release"] == guest_steps.release, where
    assert state["kernel"]["build_id"] and state["kernel"]["livepatch"] is True, where
    assert state["loaded"] == [{"name": "livepatch_cmdline", "patch": True, "enabled": True,
                                "transition": False, "package": None}], where
    info, where = _step(guest_steps, "info")
    assert "patched functions (from sysfs):" in info.output, where
    assert "vmlinux: cmdline_proc_show,1" in info.output, where
    from_sysfs = json.loads(_step(guest_steps, "info-json")[0].output)
    assert from_sysfs["functions_from"] == "sysfs" and from_sysfs["enabled"] is True
    assert from_sysfs["functions"] == [{"object": "vmlinux", "function": "cmdline_proc_show",
                                        "sympos": 1}]
    from_file = json.loads(_step(guest_steps, "info-file")[0].output)
    assert from_file["name"] == "livepatch_cmdline_v2" and from_file["loaded"] is False
    assert from_file["functions_from"] == "file" and from_file["replace"] is True
    assert from_file["build_id"] == json.loads(listed.output)["kernel"]["build_id"]


def test_refusals_from_the_real_kernel(guest_steps) -> None:
    again, where = _step(guest_steps, "load-again")
    assert again.status == 1, where
    assert "livepatch_cmdline is already loaded" in again.output, where
    idle, where = _step(guest_steps, "signal-idle")
    assert idle.status == 1, where
    assert "livepatch_cmdline: not in transition; nothing to signal" in idle.output, where


def test_replace_swaps_in_the_second_build(guest_steps) -> None:
    step, where = _step(guest_steps, "replace")
    assert step.status == 0, where
    assert "replaced and removed livepatch_cmdline" in step.output, where
    assert step.cmdline.endswith(" kpatch=2") and "kpatch=1" not in step.cmdline, where
    assert step.sysfs == ["livepatch_cmdline_v2"], where
    assert "livepatch_cmdline" not in step.modules, where


def test_unload_restores_the_original(guest_steps) -> None:
    step, where = _step(guest_steps, "unload")
    assert step.status == 0, where
    assert "unloaded livepatch_cmdline_v2" in step.output, where
    assert "kpatch=" not in step.cmdline and step.sysfs == [] and step.modules == [], where


def test_install_then_load_all(guest_steps) -> None:
    step, where = _step(guest_steps, "install")
    assert step.status == 0, where
    assert f"installed livepatch_cmdline for {guest_steps.release}" in step.output, where
    assert step.sysfs == [], where  # installing does not load
    listed, where = _step(guest_steps, "installed")
    assert listed.status == 0 and "livepatch_cmdline.ko" in listed.output, where
    loaded, where = _step(guest_steps, "load-all")
    assert loaded.status == 0, where
    assert "loaded livepatch_cmdline" in loaded.output, where
    assert loaded.cmdline.endswith(" kpatch=1") and loaded.sysfs == ["livepatch_cmdline"], where
    again, where = _step(guest_steps, "load-all-again")
    assert again.status == 0 and "livepatch_cmdline: already loaded" in again.output, where
    unloaded, where = _step(guest_steps, "unload-all")
    assert unloaded.status == 0 and unloaded.modules == [], where
    removed, where = _step(guest_steps, "uninstall")
    assert removed.status == 0 and "uninstalled livepatch_cmdline" in removed.output, where


def test_a_stuck_transition_is_rolled_back(guest_steps) -> None:
    step, where = _step(guest_steps, "stuck-timeout")
    assert step.status == 6, where
    assert "livepatch_stuck: the transition to the patched state did not finish in 3 s" \
        in step.output, where
    assert re.search(r"task\(s\) still run old code: \d+ \((ksoftirqd|cpuhp|migration)/0\)",
                     step.output), where
    assert "rolled back: disabled and removed" in step.output, where
    assert step.sysfs == [] and "livepatch_stuck" not in step.modules, where


def test_keep_then_signal_and_force(guest_steps) -> None:
    kept, where = _step(guest_steps, "stuck-keep")
    assert kept.status == 6 and "kept in transition (--keep)" in kept.output, where
    assert kept.sysfs == ["livepatch_stuck"], where
    listed, where = _step(guest_steps, "stuck-list")
    assert json.loads(listed.output)["loaded"] == [
        {"name": "livepatch_stuck", "patch": True, "enabled": True, "transition": True,
         "package": None}], where
    signalled, where = _step(guest_steps, "stuck-signal")
    # Linux 6.1 has no signal file: it signals the remaining tasks itself.
    assert signalled.status == 1, where
    assert "it signals the remaining tasks itself" in signalled.output, where
    forced, where = _step(guest_steps, "stuck-force")
    assert forced.status == 0, where
    assert "kpatch: warning: forcing marks every task as switched" in forced.output, where
    assert "forced livepatch_stuck's transition to complete" in forced.output, where
