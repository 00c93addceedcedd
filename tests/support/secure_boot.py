"""The Debian 12 guest booted as a Secure Boot machine boots: firmware, shim, grub, kernel.

- **Firmware**: Debian's OVMF built with Secure Boot (``OVMF_CODE_4M.secboot.fd``, SMM) and
  its variable store holding Microsoft's keys (``OVMF_VARS_4M.ms.fd``), which sign shim.
  virt-firmware (PyPI) adds the machine-owner keys to shim's ``MokList`` there, as an
  enrolment through MokManager would have (MokManager is interactive: ``mokutil --import``
  then a reboot into it, which a test cannot click through).
- **Boot chain**: Debian's signed packages, as a user's machine has them: shim
  (``shim-signed``, signed by Microsoft) as ``EFI/BOOT/BOOTX64.EFI`` on an EFI system
  partition, grub (``grub-efi-amd64-signed``, signed by Debian) beside it, and the guest's
  own Debian-signed kernel and initramfs, which grub verifies through shim. The kernel finds
  Secure Boot on and locks itself down (integrity): a module then loads only if its signer
  is trusted, and Debian's kernel trusts the MOK keys shim passes on (``MokListRT``) for
  modules through its platform keyring.

The ESP is a third disk of the guest, made without mounting (``mkfs.vfat``, mtools); the
root and repository disks stay ``/dev/vda`` and ``/dev/vdb`` as in every boot.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base.store import Store
from kpatchbuild.stages.fetch import debian
from kpatchbuild.stages.prove import accel as accelerator
from tests.support.debian_guest import (
    MEMORY_MB,
    Boot,
    DebianGuest,
    GuestError,
    read_from_image,
    run_tool,
)

SHIM_LOCK_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"
EFI_SYSTEM_PARTITION = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
FILES = {
    "ovmf": ("usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
    "shim-signed": ("usr/lib/shim/shimx64.efi.signed",),
    "grub-efi-amd64-signed": ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",),
}
ESP_MB = 64


@dataclass(frozen=True)
class Firmware:
    code: Path
    variables: Path  # Microsoft's keys, Secure Boot on, the machine-owner keys in MokList
    shim: Path
    grub: Path


def firmware(store: Store, where: Path, machine_owner_keys: Sequence[Path]) -> Firmware:
    """Debian 12's firmware and signed boot chain, with ``machine_owner_keys`` (DER
    certificates) enrolled in shim's MokList."""
    index = debian.index_for(store, "12")
    extracted = where / "packages"
    extracted.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        newest = debian.newest(debian.available_versions(index, [name])[name])
        deb = debian.fetch_package(store, debian.package_record(index, name, newest))
        run_tool(["dpkg-deb", "-x", deb, extracted], f"unpacking {deb.name}")
    code, template = (extracted / path for path in FILES["ovmf"])
    variables = where / "OVMF_VARS.fd"
    tool = Path(sys.executable).with_name("virt-fw-vars")
    mok = [argument for key in machine_owner_keys
           for argument in ("--add-mok", SHIM_LOCK_GUID, str(key))]
    run_tool([tool, "--input", template, "--output", variables, "--secure-boot", *mok],
         "virt-fw-vars (enrolling the machine-owner keys)")
    return Firmware(code, variables, extracted / FILES["shim-signed"][0],
                    extracted / FILES["grub-efi-amd64-signed"][0])


def esp_disk(where: Path, chain: Firmware, kernel: Path, initrd: Path,
             command_line: str) -> Path:
    """A GPT disk whose one partition is an EFI system partition booting shim -> grub ->
    ``kernel`` with ``command_line``."""
    esp = where / "esp.fat"
    esp.unlink(missing_ok=True)
    run_tool(["mkfs.vfat", "-C", esp, str(ESP_MB * 1024)], "mkfs.vfat")
    config = where / "grub.cfg"
    # Names of the ESP's own: the root disk has a /vmlinuz too (Debian's link to its newest
    # kernel), which a search for /vmlinuz could find first.
    config.write_text("set timeout=0\nsearch --no-floppy --file --set=root /kpb-vmlinuz\n"
                      f"linux /kpb-vmlinuz {command_line}\ninitrd /kpb-initrd.img\nboot\n")
    run_tool(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT", "::/EFI/debian"], "mmd")
    for source, target in ((chain.shim, "EFI/BOOT/BOOTX64.EFI"),
                           (chain.grub, "EFI/BOOT/grubx64.efi"),
                           (config, "EFI/BOOT/grub.cfg"), (config, "EFI/debian/grub.cfg"),
                           (kernel, "kpb-vmlinuz"), (initrd, "kpb-initrd.img")):
        run_tool(["mcopy", "-i", esp, source, f"::/{target}"], f"mcopy {target}")
    disk = where / "esp-disk.img"
    disk.unlink(missing_ok=True)
    with open(disk, "wb") as image:
        image.truncate((ESP_MB + 2) * 1024 * 1024)
    run_tool(["sfdisk", "--quiet", disk], "sfdisk",
         input=f"label: gpt\nstart=2048, size={ESP_MB * 2048}, type={EFI_SYSTEM_PARTITION}\n")
    run_tool(["dd", f"if={esp}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc"], "dd")
    esp.unlink()
    return disk


def boot(guest: DebianGuest, chain: Firmware, step: str, release: str, *,
         timeout: float = 900) -> Boot:
    """Boot ``release`` of the guest through the firmware, to run ``step``."""
    work = guest.workdir / "secure-boot"
    work.mkdir(exist_ok=True)
    kernel = read_from_image(guest.disk, f"/boot/vmlinuz-{release}", work / "vmlinuz")
    initrd = read_from_image(guest.disk, f"/boot/initrd.img-{release}", work / "initrd.img")
    disk = esp_disk(work, chain, kernel, initrd,
                    f"root=/dev/vda rw console=ttyS0 panic=-1 quiet kpb.step={step}")
    variables = work / "vars.fd"
    shutil.copyfile(chain.variables, variables)
    accel = "kvm" if accelerator.probe_kvm(kernel, guest.workdir) else "tcg"
    console = guest.workdir / f"console-{step}.log"
    command = ["qemu-system-x86_64", "-machine", "q35,smm=on", "-accel", accel,
               "-m", str(MEMORY_MB), "-smp", "1", "-nographic", "-no-reboot", "-nic", "none",
               "-global", "driver=cfi.pflash01,property=secure,value=on",
               "-drive", f"if=pflash,format=raw,unit=0,file={chain.code},readonly=on",
               "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
               "-drive", f"file={guest.disk},format=raw,if=virtio",
               "-drive", f"file={guest.repository_disk},format=raw,if=virtio,readonly=on",
               "-drive", f"file={disk},format=raw,if=virtio,readonly=on"]
    started = time.monotonic()
    with console.open("wb") as log:
        log.write(f"# {' '.join(command)}\n".encode())
        log.flush()
        try:
            subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log,
                           stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise GuestError(f"secure boot {step} did not power off within {timeout:.0f} s; "
                             f"console log: {console}") from None
    done = Boot(step, release, console, time.monotonic() - started, accel)
    if not done.finished:
        raise GuestError(f"secure boot {step} never finished its step; console log: {console}")
    return done
