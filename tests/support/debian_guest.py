"""A booted Debian 12 or 13 system under qemu: the packages' workflow as a user runs it.

The proofs boot a busybox initramfs; a package's maintainer scripts, apt, systemd and the
boot unit need the real thing. The guest is:

- a root made once per Debian release and kept in the store (kind ``guest-root``): a
  ``debootstrap`` of bookworm or trixie with systemd, apt, python3, python3-pyelftools, kmod
  and initramfs-tools (the
  ``chroot`` kind of :mod:`tests.support.chroots`), copied, with Debian's own kernel
  packages installed in it (so Debian's ``update-initramfs`` makes each kernel's initramfs,
  natively, not in the emulated guest), and a oneshot unit that runs the step the kernel
  command line names (``kpb.step=NAME``: ``/usr/local/lib/kpb/NAME.sh``) and powers off;
- a disk image of it (``mkfs.ext4 -d``, no loop mount), which keeps its state from boot to
  boot, and a second, read-only disk holding the apt repository (made again when the
  repository changes: a newer version published), which apt reads as a user's machine
  does: ``signed-by=`` its key, which a step installs from that disk, as the README says;
- booted with the kernel and initramfs of the release asked for, read out of the disk
  image's ``/boot`` with ``debugfs`` (the guest's own ``update-initramfs`` may have
  rewritten them), under KVM when a probe boot succeeds with it, TCG otherwise
  (``KPATCHBUILD_VM_ACCEL`` decides when set).

A step prints ``KPB: <check> ok`` or ``KPB: <check> FAIL: <why>`` for each of its checks;
:class:`Boot` reads them back from the serial console.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base.store import Store, content_key, sha256_file
from kpatchbuild.stages.package.repository import INSTALLED_KEYRING
from kpatchbuild.stages.prove import accel as accelerator
from kpatchbuild.stages.prove.qemu import run_guest
from tests.support.chroots import Chroot, ChrootError, make_chroot

PACKAGES = ("systemd-sysv", "udev", "python3", "python3-pyelftools", "kmod", "apt",
            "initramfs-tools", "linux-base", "zstd")
FORMAT = 1
MEMORY_MB = 1024
DISK_MB = 3072
REPOSITORY_MOUNT = "/srv/kpatch-repo"
STEPS_DIR = "/usr/local/lib/kpb"

STEP_RUNNER = f"""#!/bin/sh
# Runs the step the kernel command line names, then powers the guest off.
step=$(sed -n 's/.*kpb\\.step=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
echo "KPB-STEP: $step begins at $(cut -d' ' -f1 /proc/uptime) s of uptime"
if [ -n "$step" ] && [ -x {STEPS_DIR}/$step.sh ]; then
    {STEPS_DIR}/$step.sh 2>&1
    echo "KPB-STEP: $step exit $?"
else
    echo "KPB-STEP: no step script for '$step'"
fi
sync
systemctl poweroff --no-block
"""

# The repository's disk is mounted nofail (the guest boots without it), so local-fs.target
# does not wait for it: the step does.
STEP_UNIT = f"""[Unit]
Description=kpatchbuild test step (kpb.step= on the kernel command line)
After=kpatch.service systemd-user-sessions.service local-fs.target
RequiresMountsFor={REPOSITORY_MOUNT}
ConditionKernelCommandLine=kpb.step

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/kpb-step
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
"""

# Shell helpers every step sources: a named check and a shown command.
COMMON = """check() {
    name=$1; shift
    if out=$("$@" 2>&1); then echo "KPB: $name ok"
    else echo "KPB: $name FAIL: $(printf '%s' "$out" | tail -n 4 | tr '\\n' ' ')"; fi
}
show() {
    echo "KPB-RUN: $*"
    "$@" 2>&1 | sed 's/^/  | /'
}
"""

SETUP = f"""set -e
echo kpb-guest > /etc/hostname
cat > /etc/fstab <<FSTAB
/dev/vda / ext4 errors=remount-ro 0 1
/dev/vdb {REPOSITORY_MOUNT} ext4 ro,nofail 0 0
FSTAB
mkdir -p {REPOSITORY_MOUNT}
echo 'deb [signed-by={INSTALLED_KEYRING}] file:{REPOSITORY_MOUNT} ./' > /etc/apt/sources.list
passwd -d root
systemctl enable kpb-step.service
systemctl mask serial-getty@ttyS0.service getty@tty1.service apt-daily.timer \\
    apt-daily-upgrade.timer e2scrub_reap.service
"""


class GuestError(ChrootError):
    """The guest could not be made or booted: one line saying why."""


def run_tool(argv: Sequence[str | os.PathLike[str]], what: str, *,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
    """A tool making part of the guest, its failure as one line naming ``what``."""
    result = subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True,
                            input=input)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
        raise GuestError(f"{what} failed (exit {result.returncode}): {tail}")
    return result


def suite_chroot(store: Store, suite: str) -> Chroot:
    """The debootstrapped ``suite`` a guest root is made from (it also runs the suite's tools)."""
    return make_chroot(store, suite, PACKAGES)


def guest_root(store: Store, kernel_debs: Sequence[Path], suite: str = "bookworm") -> Path:
    """The store's Debian root of ``suite`` with ``kernel_debs`` installed, made if not there
    yet."""
    chroot = suite_chroot(store, suite)
    files = {"runner": STEP_RUNNER, "unit": STEP_UNIT, "setup": SETUP}
    key = content_key("guest-root", FORMAT, str(chroot.root), files,
                      sorted(sha256_file(deb) for deb in kernel_debs))
    artifact = store.lookup("guest-root", key)
    if artifact is None:
        manifest = {"suite": suite, "kernels": [deb.name for deb in kernel_debs]}
        with store.publishing("guest-root", key, manifest) as work:
            root = work / "root"
            run_tool(["cp", "-a", str(chroot.root), str(root)], f"copying the {suite} chroot")
            system = Chroot(suite, root, chroot.packages)
            debs = work / "debs"
            debs.mkdir()
            for deb in kernel_debs:
                shutil.copyfile(deb, debs / deb.name)
            system.run(["dpkg", "-i", *(str(debs / deb.name) for deb in kernel_debs)],
                       binds=[debs])
            shutil.rmtree(debs)
            (root / "usr/local/sbin/kpb-step").write_text(STEP_RUNNER)
            (root / "usr/local/sbin/kpb-step").chmod(0o755)
            (root / "etc/systemd/system/kpb-step.service").write_text(STEP_UNIT)
            system.run(["sh", "-c", SETUP])
            for log in (root / "var/log").rglob("*.log"):
                log.write_text("")
        artifact = store.lookup("guest-root", key)
        assert artifact is not None
    return artifact.path / "root"


def ext4_image(tree: Path, image: Path, size_mb: int) -> Path:
    """``tree`` as an ext4 file system image (``mkfs.ext4 -d``: no mount needed)."""
    image.unlink(missing_ok=True)
    run_tool(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), f"{size_mb}M"],
         f"mkfs.ext4 -d {tree}")
    return image


def read_from_image(image: Path, path: str, destination: Path) -> Path:
    destination.unlink(missing_ok=True)
    run_tool(["debugfs", "-R", f"dump {path} {destination}", str(image)], f"debugfs dump {path}")
    if not destination.is_file() or destination.stat().st_size == 0:
        raise GuestError(f"{image}: has no {path}")
    return destination


@dataclass(frozen=True)
class Boot:
    """One boot of the guest: its console and the checks its step reported."""

    step: str
    release: str
    console_log: Path
    seconds: float
    accel: str

    @property
    def text(self) -> str:
        return self.console_log.read_text(errors="replace")

    def checks(self) -> dict[str, str]:
        """check name -> "ok" or the failure's words."""
        found = {}
        for name, verdict in re.findall(r"^KPB: (\S+) (ok|FAIL: .*)$", self.text, re.M):
            found[name] = verdict
        return found

    def failures(self, expected: Sequence[str]) -> list[str]:
        checks = self.checks()
        return [f"{name}: {checks.get(name, 'never reported')}" for name in expected
                if checks.get(name) != "ok"]

    @property
    def finished(self) -> bool:
        return f"KPB-STEP: {self.step} exit" in self.text

    def step_started_at(self) -> float | None:
        found = re.search(rf"KPB-STEP: {re.escape(self.step)} begins at ([0-9.]+) s", self.text)
        return float(found.group(1)) if found else None


class DebianGuest:
    """The guest's two disks under ``workdir`` and its boots."""

    def __init__(self, root: Path, workdir: Path, steps: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.disk = workdir / "root.img"
        self.repository_disk = workdir / "repository.img"
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=workdir) as temp:
            staged = Path(temp) / "root"
            # Hardlinks: the new files below are the only ones written, and mkfs only reads.
            run_tool(["cp", "-al", str(root), str(staged)], "staging the guest's root")
            steps_dir = staged / STEPS_DIR.lstrip("/")
            steps_dir.mkdir(parents=True)
            (steps_dir / "common.sh").write_text(COMMON)
            for name, body in steps.items():
                script = steps_dir / f"{name}.sh"
                script.write_text(f"#!/bin/sh\n. {STEPS_DIR}/common.sh\n{body}\n")
                script.chmod(0o755)
            ext4_image(staged, self.disk, DISK_MB)

    def publish_repository(self, repository: Path) -> None:
        """The repository as the guest's second disk, as it is now."""
        ext4_image(repository, self.repository_disk, 256)

    def boot(self, step: str, release: str, *, extra_args: str = "",
             timeout: float = 600) -> Boot:
        kernel = read_from_image(self.disk, f"/boot/vmlinuz-{release}",
                                 self.workdir / f"vmlinuz-{release}")
        initrd = read_from_image(self.disk, f"/boot/initrd.img-{release}",
                                 self.workdir / f"initrd.img-{release}")
        console = self.workdir / f"console-{step}.log"
        drives = ["-drive", f"file={self.disk},format=raw,if=virtio",
                  "-drive", f"file={self.repository_disk},format=raw,if=virtio,readonly=on"]
        # KVM when the probe boots with it (unless KPATCHBUILD_VM_ACCEL says otherwise): a
        # systemd boot is ten times the proofs' busybox one, where the emulator is enough.
        accel = accelerator.choose_accel(kernel, self.workdir) \
            if os.environ.get(accelerator.ACCEL_ENV) else \
            "kvm" if accelerator.probe_kvm(kernel, self.workdir) else "tcg"
        run = run_guest(kernel, initrd, console, accel=accel, timeout=timeout,
                        extra_args=f"root=/dev/vda rw kpb.step={step} {extra_args}".strip(),
                        qemu_args=drives, memory_mb=MEMORY_MB)
        boot = Boot(step, release, console, run.elapsed, run.accel)
        if run.timed_out:
            raise GuestError(f"boot {step} ({release}) did not power off within {timeout:.0f} s;"
                             f" console log: {console}")
        if not boot.finished:
            raise GuestError(f"boot {step} ({release}) never finished its step; console log: "
                             f"{console}")
        return boot
