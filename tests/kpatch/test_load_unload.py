"""load, unload, replace, signal and force against the fake kernel, and every refusal."""

from __future__ import annotations

import errno
import json

from tests.kpatch.conftest import Machine
from tests.kpatch.fakekernel import RELEASE, STUCK_PID


def test_load_enables_the_patch_and_waits_for_its_transition(machine: Machine) -> None:
    module = machine.module("lp_a")
    result = machine.kpatch("load", str(module))
    assert result.code == 0, result.err
    assert "loaded lp_a: patch enabled, transition done" in result.out
    assert (machine.patch_dir("lp_a") / "enabled").read_text() == "1\n"
    assert (machine.patch_dir("lp_a") / "transition").read_text() == "0\n"
    assert machine.kernel.modules == ["lp_a"]


def test_unload_disables_waits_and_removes_the_module(machine: Machine) -> None:
    machine.kpatch("load", str(machine.module("lp_a")))
    result = machine.kpatch("unload", "lp_a")
    assert result.code == 0, result.err
    assert "unloaded lp_a" in result.out
    assert not machine.patch_dir("lp_a").exists()
    assert machine.kernel.modules == []


def test_unload_all_goes_newest_first(machine: Machine) -> None:
    machine.kpatch("load", str(machine.module("lp_a", replace=False)))
    machine.kpatch("load", str(machine.module("lp_b", replace=False,
                                              functions=[("vmlinux", "version_proc_show", 0)])))
    result = machine.kpatch("unload", "--all")
    assert result.code == 0, result.err
    assert result.out.index("unloaded lp_b") < result.out.index("unloaded lp_a")
    assert machine.kernel.modules == []


def test_replace_loads_and_removes_the_replaced_modules(machine: Machine) -> None:
    machine.kpatch("load", str(machine.module("lp_v1")))
    result = machine.kpatch("replace", str(machine.module("lp_v2")))
    assert result.code == 0, result.err
    assert "replaced and removed lp_v1" in result.out
    assert machine.kernel.modules == ["lp_v2"]
    assert not machine.patch_dir("lp_v1").exists()


def test_replace_refuses_a_module_that_would_stack(machine: Machine) -> None:
    result = machine.kpatch("replace", str(machine.module("lp_stack", replace=False)))
    assert result.code == 1
    assert "not an atomic-replace module (built with replace: false)" in result.err
    assert machine.kernel.modules == []


def test_a_stuck_transition_is_rolled_back_and_names_the_tasks(machine: Machine) -> None:
    machine.kernel.stuck = True
    result = machine.kpatch("load", "--timeout", "2", str(machine.module("lp_a")))
    assert result.code == 6
    assert result.err.count("\n") == 1
    assert "lp_a: the transition to the patched state did not finish in 2 s" in result.err
    assert f"1 task(s) still run old code: {STUCK_PID} (sleeper)" in result.err
    assert "rolled back: disabled and removed" in result.err
    assert "kpatch signal lp_a or kpatch force lp_a" in result.err
    assert machine.kernel.modules == []
    assert not machine.patch_dir("lp_a").exists()


def test_keep_leaves_a_stuck_transition_for_signal_and_force(machine: Machine) -> None:
    machine.kernel.stuck = True
    machine.kernel.signal_unsticks = False
    result = machine.kpatch("load", "--timeout", "1", "--keep", str(machine.module("lp_a")))
    assert result.code == 6
    assert "kept in transition (--keep)" in result.err
    assert (machine.patch_dir("lp_a") / "transition").read_text() == "1\n"

    listed = json.loads(machine.kpatch("list", "--json").out)
    assert listed["loaded"] == [{"name": "lp_a", "patch": True, "enabled": True,
                                 "transition": True, "package": None}]

    forced = machine.kpatch("force", "lp_a")
    assert forced.code == 0, forced.err
    assert "warning: forcing marks every task as switched" in forced.err
    assert "module can never be removed again" in forced.err
    assert f"{STUCK_PID} (sleeper)" in forced.out
    assert (machine.patch_dir("lp_a") / "transition").read_text() == "0\n"
    assert machine.kernel.forced == ["lp_a"]


def test_signal_writes_the_signal_file_where_the_kernel_has_one(make_machine) -> None:
    machine: Machine = make_machine(has_signal_file=True, stuck=True)
    machine.kpatch("load", "--timeout", "1", "--keep", str(machine.module("lp_a")))
    result = machine.kpatch("signal", "lp_a")
    assert result.code == 0, result.err
    assert machine.kernel.signals == 1
    assert "signalled the tasks blocking lp_a's transition" in result.out
    # The signal woke the task: the transition ends at the kernel's next retry.
    machine.kernel.sleep(1)
    assert (machine.patch_dir("lp_a") / "transition").read_text() == "0\n"


def test_signal_on_a_kernel_without_the_signal_file_says_it_signals_itself(
        machine: Machine) -> None:
    machine.kernel.stuck = True
    machine.kpatch("load", "--timeout", "1", "--keep", str(machine.module("lp_a")))
    result = machine.kpatch("signal", "lp_a")
    assert result.code == 1
    assert "this kernel has no" in result.err
    assert "signal: it signals the remaining tasks itself" in result.err


def test_signal_and_force_refuse_a_patch_not_in_transition(machine: Machine) -> None:
    machine.kpatch("load", str(machine.module("lp_a")))
    for command in ("signal", "force"):
        result = machine.kpatch(command, "lp_a")
        assert result.code == 1
        assert f"lp_a: not in transition; nothing to {command}" in result.err
    assert machine.kernel.forced == []


def test_a_stuck_unload_is_reversed_so_the_patch_stays_applied(machine: Machine) -> None:
    machine.kpatch("load", str(machine.module("lp_a")))
    machine.kernel.stuck = True
    result = machine.kpatch("unload", "--timeout", "1", "lp_a")
    assert result.code == 6
    assert "the transition back to the unpatched state did not finish in 1 s" in result.err
    assert "rolled back: re-enabled, the patch stays applied" in result.err
    assert (machine.patch_dir("lp_a") / "enabled").read_text() == "1\n"
    assert machine.kernel.modules == ["lp_a"]


# --- refusals before anything is done ---

def test_not_root_is_refused(machine: Machine) -> None:
    module = machine.module("lp_a")
    machine.euid = 1000
    for argv in (["load", str(module)], ["unload", "lp_a"], ["replace", str(module)],
                 ["install", str(module)], ["uninstall", "lp_a"], ["signal", "lp_a"],
                 ["force", "lp_a"], ["load", "--all"]):
        result = machine.kpatch(*argv)
        assert result.code == 3, argv
        assert f"kpatch {argv[0]}: must run as root" in result.err
    assert machine.kernel.inserted == []


def test_a_kernel_without_livepatch_is_refused(make_machine) -> None:
    machine: Machine = make_machine(livepatch=False)
    result = machine.kpatch("load", str(machine.module("lp_a")))
    assert result.code == 4
    assert "/sys/kernel/livepatch does not exist: the running kernel 6.1.0-56-cloud-amd64 " \
           "has no livepatch support" in result.err
    assert machine.kernel.inserted == []


def test_a_module_that_is_not_a_livepatch_module_is_refused(machine: Machine) -> None:
    module = machine.module("plain", livepatch=False)
    result = machine.kpatch("load", str(module))
    assert result.code == 1
    assert f"{module}: not a livepatch module (its .modinfo has no livepatch=Y)" in result.err


def test_a_file_that_is_not_a_module_is_refused(machine: Machine) -> None:
    junk = machine.modules / "junk.ko"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"\x7fELF not really")
    assert "not a kernel module" in machine.kpatch("load", str(junk)).err
    text = machine.modules / "text.ko"
    text.write_text("hello\n")
    result = machine.kpatch("info", str(text))
    assert result.code == 1
    assert f"{text}: not a kernel module" in result.err
    missing = machine.kpatch("load", str(machine.modules / "missing.ko"))
    assert missing.code == 1
    assert "missing.ko: no such module file" in missing.err


def test_an_unknown_name_is_refused(machine: Machine) -> None:
    result = machine.kpatch("load", "lp_nowhere")
    assert result.code == 1
    assert f"lp_nowhere: no module of that name is installed for {RELEASE}" in result.err
    assert "for a file, give its path (./lp_nowhere.ko)" in result.err
    result = machine.kpatch("unload", "lp_nowhere")
    assert result.code == 1
    assert "lp_nowhere: no such loaded patch" in result.err


def test_a_module_for_another_release_is_refused(machine: Machine) -> None:
    module = machine.module("lp_a", release="6.1.0-55-cloud-amd64", build_id=None)
    result = machine.kpatch("load", str(module))
    assert result.code == 5
    assert f"{module}: built for kernel 6.1.0-55-cloud-amd64, but the running kernel is " \
           f"{RELEASE}; build it for this kernel" in result.err
    assert machine.kernel.inserted == []


def test_a_module_with_another_vermagic_is_refused(machine: Machine) -> None:
    module = machine.module("lp_a", release=None, build_id=None,
                            vermagic="6.12.117+deb12-cloud-amd64 SMP preempt mod_unload")
    result = machine.kpatch("load", str(module))
    assert result.code == 5
    assert "built for kernel 6.12.117+deb12-cloud-amd64, but the running kernel is " \
           f"{RELEASE}" in result.err


def test_a_module_for_another_build_of_the_same_release_is_refused(machine: Machine) -> None:
    other = "aa" * 20
    module = machine.module("lp_a", build_id=other)
    result = machine.kpatch("load", str(module))
    assert result.code == 5
    assert f"built for kernel {RELEASE} (build id {other}), but the running kernel is " \
           f"{RELEASE} (build id {machine.kernel.build_id})" in result.err


def test_an_already_loaded_module_is_refused(machine: Machine) -> None:
    module = machine.module("lp_a")
    machine.kpatch("load", str(module))
    result = machine.kpatch("load", str(module))
    assert result.code == 1
    assert "lp_a is already loaded; kpatch unload lp_a first" in result.err


def test_the_kernel_refusing_the_module_is_one_line(machine: Machine) -> None:
    machine.kernel.refuse_insert = errno.EPERM
    result = machine.kpatch("load", str(machine.module("lp_a")))
    assert result.code == 7
    assert "lp_a.ko: the kernel refused to load it: EPERM (Operation not permitted)" \
        in result.err
    assert result.err.count("\n") == 1


def test_a_module_that_registers_no_patch_is_removed_again(machine: Machine) -> None:
    machine.kernel.register_patch = False
    result = machine.kpatch("load", str(machine.module("lp_a")))
    assert result.code == 7
    assert "loaded, but no" in result.err and "the module was removed again" in result.err
    assert machine.kernel.modules == []


def test_load_needs_a_module_or_all_but_not_both(machine: Machine) -> None:
    assert machine.kpatch("load").code == 1
    both = machine.kpatch("load", "--all", "lp_a")
    assert both.code == 1
    assert "give a MODULE.ko or NAME, or --all (not both)" in both.err


def test_help_lists_the_exit_codes(machine: Machine, capsys) -> None:
    import pytest

    from kpatchbuild.kpatch.cli import main
    with pytest.raises(SystemExit) as raised:
        main(["--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    for line in ("3  not running as root", "5  the module was built for another kernel",
                 "6  a livepatch transition did not finish in time"):
        assert line in out
    for command in ("load", "unload", "replace", "install", "uninstall", "list", "info",
                    "signal", "force"):
        assert f"    {command}" in out
