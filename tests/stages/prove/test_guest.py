"""The proof's initramfs and console reading, without booting anything."""

from __future__ import annotations

import gzip
import stat
import subprocess
from pathlib import Path

import pytest

from kpatchbuild.base.errors import KpbError
from kpatchbuild.stages.prove import accel, console, guest, initramfs, qemu, vm


def fake_module(directory: Path, name: str, payload: bytes) -> Path:
    path = directory / name
    path.write_bytes(b"\x7fELF" + payload)
    return path


def members(path: Path) -> dict[str, initramfs.Entry]:
    return {entry.path: entry for entry in initramfs.read_initramfs(path)}


# --- the initramfs ---

def test_proof_initramfs_holds_init_busybox_check_and_modules(tmp_path: Path) -> None:
    module = fake_module(tmp_path, "livepatch-fix.ko", b"patch")
    first = fake_module(tmp_path, "some-driver.ko", b"driver")
    second = fake_module(tmp_path, "other.ko", b"other")
    initrd = guest.build_proof_initramfs(tmp_path / "initrd.gz", module, "grep -q x /proc/cmdline",
                                      preload=[first, second])
    entries = members(initrd)

    init = entries["init"]
    assert stat.S_ISREG(init.mode) and init.mode & 0o111 == 0o111
    assert init.data.startswith(b"#!/bin/sh\n")
    assert b"PATCH_NAME=livepatch_fix\n" in init.data
    assert b"MODULE_FILE=livepatch-fix.ko\n" in init.data
    assert entries["bin/busybox"].data == guest.BUSYBOX.read_bytes()
    assert entries["bin/busybox"].mode & 0o111
    assert stat.S_ISLNK(entries["bin/sh"].mode) and entries["bin/sh"].data == b"busybox"
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    assert entries["kpb/check.sh"].data == b"grep -q x /proc/cmdline\n"
    assert entries["kpb/livepatch-fix.ko"].data == module.read_bytes()
    # Preloaded modules keep their order through a numeric prefix the guest strips.
    assert entries["kpb/preload/00-some-driver.ko"].data == first.read_bytes()
    assert entries["kpb/preload/01-other.ko"].data == second.read_bytes()
    # Every member's parent directory comes before it: the kernel creates them in order.
    seen: set[str] = set()
    for entry in initramfs.read_initramfs(initrd):
        parent = entry.path.rpartition("/")[0]
        assert not parent or parent in seen, entry.path
        seen.add(entry.path)


def test_proof_without_a_check_has_no_check_steps(tmp_path: Path) -> None:
    module = fake_module(tmp_path, "livepatch-fix.ko", b"patch")
    entries = members(guest.build_proof_initramfs(tmp_path / "initrd.gz", module, None))
    assert "kpb/check.sh" not in entries
    assert b"if [ -e /kpb/check.sh ]; then" in entries["init"].data
    steps = vm.expected_steps(with_check=False)
    assert steps == ["mount", "insmod", "transition-enable", "disable", "transition-disable",
                     "sysfs-removed", "rmmod"]
    # Kernel problems still fail a proof without a check.
    report = console.parse_console("\r\n".join(
        [f"KPB-BEGIN {s}\r\nKPB-STEP {s} ok" for s in steps]
        + ["[    2.1] WARNING: CPU: 0 PID: 1 at fs/readdir.c:321 filldir64+0x1/0x2",
           "KPB-INFO taint-boot 0", "KPB-INFO taint-end 45056", "KPB-DMESG-BEGIN",
           "KPB-DMESG-END", "KPB-END"]))
    assert console.first_failure(report, steps)[0] == "dmesg"


def test_patch_name_defaults_to_module_name_and_can_be_given(tmp_path: Path) -> None:
    module = fake_module(tmp_path, "livepatch-a-b.ko", b"")
    assert vm.module_name(module) == "livepatch_a_b"
    initrd = guest.build_proof_initramfs(tmp_path / "i.gz", module, "true", patch_name="other")
    assert b"PATCH_NAME=other\n" in members(initrd)["init"].data


def test_initramfs_is_reproducible(tmp_path: Path) -> None:
    module = fake_module(tmp_path, "m.ko", b"same")
    first = guest.build_proof_initramfs(tmp_path / "1.gz", module, "true").read_bytes()
    second = guest.build_proof_initramfs(tmp_path / "2.gz", module, "true").read_bytes()
    assert first == second


def test_system_cpio_reads_the_archive(tmp_path: Path) -> None:
    """GNU cpio agrees with our reader on names, types and sizes."""
    entries = [initramfs.directory("d"), initramfs.regular_file("d/f", b"hello\n", 0o755),
               initramfs.symlink("d/l", "f"), initramfs.regular_file("odd-name.x", b"a" * 5)]
    archive = tmp_path / "a.cpio"
    archive.write_bytes(initramfs.newc_archive(entries))
    listing = subprocess.run(["cpio", "-itv", "--quiet"], stdin=archive.open("rb"),
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing] \
        == ["d", "d/f", "d/l", "odd-name.x"]
    assert listing[1].startswith("-rwxr-xr-x") and " 6 " in listing[1]
    assert listing[2].startswith("l") and listing[2].endswith("d/l -> f")
    assert initramfs.read_newc(archive.read_bytes()) == entries


def test_reader_rejects_what_is_not_newc(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a newc cpio header"):
        initramfs.read_newc(b"070707" + b"0" * 200)
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"junk" * 40))
    with pytest.raises(ValueError):
        initramfs.read_initramfs(tmp_path / "x.gz")


def test_missing_module_is_named(tmp_path: Path) -> None:
    with pytest.raises(KpbError, match="module not found: .*absent.ko"):
        guest.build_proof_initramfs(tmp_path / "i.gz", tmp_path / "absent.ko", "true")


def test_guest_init_is_valid_shell() -> None:
    script = guest.guest_init("a-b.ko", "a_b")
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    for step in vm.expected_steps():
        if not step.startswith("preload:"):
            assert f"begin {step}\n" in script, step


# --- the console ---

def passing_console(preload: tuple[str, ...] = (), *, taint_end: int = 45056,
                    extra_dmesg: str = "") -> str:
    lines = ["SeaBIOS (version 1.16.2)", "\x1b[2JKPB-BEGIN mount", "KPB-INFO taint-boot 0"]
    steps = vm.expected_steps([Path(f"{name}.ko") for name in preload])
    for step in steps:
        lines += [f"KPB-BEGIN {step}", f"KPB-STEP {step} ok detail of {step}"]
    lines += [f"KPB-INFO taint-end {taint_end}", "KPB-DMESG-BEGIN",
              "[    1.7] livepatch_sample: loading out-of-tree module taints kernel.",
              "[    1.7] livepatch_sample: tainting kernel with TAINT_LIVEPATCH",
              "[    1.7] livepatch_sample: module verification failed: signature and/or "
              "required key missing - tainting kernel",
              *extra_dmesg.splitlines(), "KPB-DMESG-END", "KPB-END"]
    return "\r\n".join(lines) + "\r\n"


def test_parse_passing_console() -> None:
    report = console.parse_console(passing_console(("my-driver",)))
    assert [step.name for step in report.steps] == vm.expected_steps([Path("my-driver.ko")])
    assert report.steps[1].name == "preload:my_driver"
    assert all(step.ok for step in report.steps)
    assert report.step("insmod") == console.GuestStep("insmod", True, "detail of insmod")
    assert report.ended and report.problems == ()
    assert report.info == {"taint-boot": "0", "taint-end": "45056"}
    assert len(report.dmesg) == 3 and "TAINT_LIVEPATCH" in report.dmesg[1]
    assert console.first_failure(report, vm.expected_steps([Path("my-driver.ko")])) is None


def test_failed_step_is_the_failure() -> None:
    text = passing_console().replace("KPB-STEP check-patched ok detail of check-patched",
                                     "KPB-STEP check-patched fail the check failed (exit 1)")
    failure = console.first_failure(console.parse_console(text), vm.expected_steps())
    assert failure == ("check-patched", "the check failed (exit 1)")


def test_missing_step_is_named_with_how_far_the_guest_got() -> None:
    text = passing_console().split("KPB-BEGIN disable")[0] + "KPB-BEGIN disable\r\n"
    report = console.parse_console(text)
    assert report.last_begun == "disable" and not report.ended
    assert console.first_failure(report, vm.expected_steps()) == (
        "disable", "step never reported (the guest got as far as disable)")


def test_panic_during_a_step_names_that_step() -> None:
    text = (passing_console().split("KPB-BEGIN rmmod")[0]
            + "KPB-BEGIN rmmod\r\n[ 2.1] Kernel panic - not syncing: Fatal exception\r\n")
    step, detail = console.first_failure(console.parse_console(text), vm.expected_steps())
    assert step == "rmmod" and "Kernel panic - not syncing" in detail


@pytest.mark.parametrize("line", [
    "[    2.0] WARNING: CPU: 0 PID: 93 at kernel/livepatch/core.c:123 klp_x+0x1/0x2",
    "[    2.0] BUG: kernel NULL pointer dereference, address: 0000000000000000",
    "[    2.0] Oops: 0002 [#1] PREEMPT SMP NOPTI",
    "[    2.0] Call Trace:",
    "[    2.0] kernel BUG at mm/slub.c:42!",
    "[    2.0] general protection fault, probably for non-canonical address 0xdead",
    "[   25.0] rcu: INFO: rcu_preempt self-detected stall on CPU",
])
def test_kernel_problems_in_dmesg_fail_the_proof(line: str) -> None:
    report = console.parse_console(passing_console(extra_dmesg=line))
    without_time = line.partition("] ")[2]
    assert report.problems == (without_time,)
    assert console.first_failure(report, vm.expected_steps()) == (
        "dmesg", f"kernel problem: {without_time}")


def test_check_output_is_not_taken_for_kernel_messages() -> None:
    text = passing_console().replace(
        "KPB-BEGIN check-patched\r\n",
        "KPB-BEGIN check-patched\r\nKPB-OUT BUG: the check printed this\r\n")
    report = console.parse_console(text)
    assert report.problems == ()
    assert console.first_failure(report, vm.expected_steps()) is None


def test_marker_after_kernel_message_on_the_same_line_is_found() -> None:
    text = passing_console().replace(
        "KPB-STEP rmmod ok", "[    1.9] random: crng init doneKPB-STEP rmmod ok")
    step = console.parse_console(text).step("rmmod")
    assert step == console.GuestStep("rmmod", True, "detail of rmmod")


def test_unexpected_taint_fails_and_expected_taint_does_not() -> None:
    expected = console.TAINT_OUT_OF_TREE | console.TAINT_UNSIGNED_MODULE | console.TAINT_LIVEPATCH
    assert console.first_failure(console.parse_console(passing_console(taint_end=expected)),
                            vm.expected_steps()) is None
    warned = console.parse_console(passing_console(taint_end=expected | 1 << 9))
    step, detail = console.first_failure(warned, vm.expected_steps())
    assert step == "taint" and "taint W (512)" in detail
    assert console.taint_letters(45056) == "OEK"


def test_missing_end_is_a_failure() -> None:
    text = passing_console().replace("KPB-END", "")
    assert console.first_failure(console.parse_console(text), vm.expected_steps()) == (
        "end", "the guest did not reach its end (no dmesg dump)")


def test_accel_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(accel.ACCEL_ENV, raising=False)
    assert accel.choose_accel(tmp_path / "k", tmp_path) == "tcg"
    monkeypatch.setenv(accel.ACCEL_ENV, "KVM")
    assert accel.choose_accel(tmp_path / "k", tmp_path) == "kvm"
    monkeypatch.setenv(accel.ACCEL_ENV, "xen")
    with pytest.raises(KpbError, match="KPATCHBUILD_VM_ACCEL='xen'"):
        accel.choose_accel(tmp_path / "k", tmp_path)


def test_qemu_command_shape(tmp_path: Path) -> None:
    command = qemu.qemu_command(tmp_path / "vmlinuz", tmp_path / "i.gz", accel="tcg")
    assert command[:3] == [qemu.QEMU, "-accel", "tcg"]
    assert "-no-reboot" in command and "-nographic" in command
    assert command[command.index("-append") + 1] == "console=ttyS0 panic=-1 quiet"
    assert command[command.index("-kernel") + 1] == str(tmp_path / "vmlinuz")
    # No network card unless asked for: qemu would otherwise add one with user networking.
    assert command[command.index("-nic") + 1] == "none"
    networked = qemu.qemu_command(tmp_path / "vmlinuz", tmp_path / "i.gz", accel="tcg",
                                  network=True)
    assert networked[networked.index("-nic") + 1] == "user,model=virtio-net-pci"


# --- choosing KVM ---

class FakeQemu:
    """Stands in for run_guest: writes a console and records each boot's accelerator."""

    def __init__(self, console: str, *, timed_out: bool = False) -> None:
        self.console, self.timed_out, self.boots = console, timed_out, []

    def __call__(self, kernel: Path, initrd: Path, console_log: Path, *, accel: str,
                 timeout: float, extra_args: str = "") -> qemu.GuestRun:
        self.boots.append((accel, timeout))
        console_log.write_text(self.console)
        return qemu.GuestRun(console_log, 0.1, self.timed_out, None if self.timed_out else 0,
                           accel)


@pytest.fixture
def kvm_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    monkeypatch.setattr(accel, "KVM_DEVICE", device)
    monkeypatch.setattr(accel, "_kvm_probe_results", {})
    monkeypatch.setenv(accel.ACCEL_ENV, "auto")
    return device


def test_auto_uses_kvm_after_a_probe_boot_succeeds_and_remembers_it(
        kvm_device: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    qemu = FakeQemu("Booting from ROM...\r\nKPB-PROBE-OK\r\n")
    monkeypatch.setattr(accel, "run_guest", qemu)
    assert accel.choose_accel(tmp_path / "vmlinuz", tmp_path / "work") == "kvm"
    assert accel.choose_accel(tmp_path / "vmlinuz", tmp_path / "work") == "kvm"
    assert qemu.boots == [("kvm", accel.KVM_PROBE_SECONDS)]
    probe_init = members(tmp_path / "work" / "kvm-probe.cpio.gz")["init"]
    assert b"KPB-PROBE-OK" in probe_init.data and probe_init.mode & 0o111


@pytest.mark.parametrize("console, timed_out", [
    ("Booting from ROM...\r\n", True),                                      # the boot hung
    ("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n", False),  # qemu gave up
])
def test_auto_falls_back_to_tcg_when_the_probe_fails(
        kvm_device: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        console: str, timed_out: bool) -> None:
    qemu = FakeQemu(console, timed_out=timed_out)
    monkeypatch.setattr(accel, "run_guest", qemu)
    assert accel.choose_accel(tmp_path / "vmlinuz", tmp_path / "work") == "tcg"
    assert accel.choose_accel(tmp_path / "vmlinuz", tmp_path / "work") == "tcg"
    assert len(qemu.boots) == 1


def test_auto_does_not_probe_without_a_usable_kvm_device(
        kvm_device: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    qemu = FakeQemu("KPB-PROBE-OK\n")
    monkeypatch.setattr(accel, "run_guest", qemu)
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "absent")
    assert accel.choose_accel(tmp_path / "vmlinuz", tmp_path / "work") == "tcg"
    assert qemu.boots == []


def test_qemu_error_before_the_guest_starts_is_reported() -> None:
    text = ("qemu-system-x86_64: warning: host doesn't support requested feature\n"
            "qemu-system-x86_64: could not load kernel '/nowhere/vmlinuz'\n")
    report = console.parse_console(text)
    assert console.first_failure(report, vm.expected_steps()) == (
        "boot", "qemu: qemu-system-x86_64: could not load kernel '/nowhere/vmlinuz'")


def test_missing_kernel_is_named(tmp_path: Path) -> None:
    module = fake_module(tmp_path, "m.ko", b"")
    with pytest.raises(KpbError, match="kernel image not found: .*nowhere"):
        vm.prove_livepatch(tmp_path / "nowhere", module, "true", workdir=tmp_path / "w")


def test_multi_line_details_stay_on_the_marker_line(tmp_path: Path) -> None:
    """The guest's own shell library, run on the host with busybox: ok/fail flatten details."""
    library = guest.guest_init("m.ko", "m").split("\nbegin mount\n")[0]
    library = library.replace("/bin/busybox --install -s", "")
    script = library + '\nfinish() { echo finished; }\nbegin demo\nfail "first\nsecond"\n'
    output = subprocess.run([str(guest.BUSYBOX), "sh", "-c", script], capture_output=True,
                            text=True, check=True).stdout
    assert output.splitlines() == ["KPB-BEGIN demo", "KPB-STEP demo fail first second ",
                                   "finished"]
    step = console.parse_console(output).step("demo")
    assert step == console.GuestStep("demo", False, "first second")
