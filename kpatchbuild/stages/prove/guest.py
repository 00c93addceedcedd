"""What the guest holds: busybox, the proof's ``/init`` and check, the modules to load.

The guest's shell scripts live beside this file in ``guest/``: ``proof-init.sh`` (the
proof's steps; its settings are put after its first line), ``probe-init.sh`` (the KVM
probe) and ``script-init.sh`` (a script run, for the kpatch command's tests).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from kpatchbuild.base.errors import KpbError
from kpatchbuild.stages.prove import initramfs

BUSYBOX = Path("/bin/busybox")
# Guest-side bound on each wait for a livepatch transition or sysfs removal, in seconds.
# Transitions normally finish at once in an idle guest; the kernel retries stragglers
# every second.
GUEST_WAIT_SECONDS = 30
SCRIPTS = Path(__file__).with_name("guest")
PROOF_INIT = (SCRIPTS / "proof-init.sh").read_text()
PROBE_INIT = (SCRIPTS / "probe-init.sh").read_text()
SCRIPT_INIT = (SCRIPTS / "script-init.sh").read_text()


def module_name(module: Path) -> str:
    """The kernel's name for a module file: ``livepatch-sample.ko`` -> ``livepatch_sample``.

    For a livepatch module it is also the name of its /sys/kernel/livepatch directory.
    """
    return module.name.removesuffix(".ko").replace("-", "_")


def preload_step(module: Path) -> str:
    return f"preload:{module_name(module)}"


CHECK_STEPS = ("check-before", "check-patched", "check-after")


def refused_step(label: str) -> str:
    return f"refused:{label}"


def expected_steps(preload: Sequence[Path] = (), *, with_check: bool = True,
                   refused: Sequence[str] = ()) -> list[str]:
    """The steps a proof's guest runs, in order, each of which must report ``ok``.

    Without a check, what remains proves the module loads, completes its transition,
    disables and unloads cleanly (kernel problems and taint are judged from the console).
    ``refused`` labels the copies of the module the kernel must refuse to load first.
    """
    steps = [
        "mount",
        *(preload_step(path) for path in preload),
        "check-before",       # the check fails on the original kernel
        *(refused_step(label) for label in refused),
        "insmod",
        "transition-enable",  # /sys/kernel/livepatch/<name>/transition reads 0
        "check-patched",      # the check passes
        "disable",            # 0 -> enabled
        "transition-disable",
        "sysfs-removed",      # /sys/kernel/livepatch/<name> is gone
        "rmmod",
        "check-after",        # the check fails again
    ]
    return steps if with_check else [step for step in steps if step not in CHECK_STEPS]



def guest_init(module_file: str, patch_name: str, *,
               wait_seconds: int = GUEST_WAIT_SECONDS) -> str:
    """The ``/init`` script of a proof; the check itself is ``/kpb/check.sh``."""
    settings = (f"PATCH_NAME={shlex.quote(patch_name)}\n"
                f"MODULE_FILE={shlex.quote(module_file)}\n"
                f"WAIT_SECONDS={int(wait_seconds)}\n")
    head, _, body = PROOF_INIT.partition("\n")
    return f"{head}\n{settings}{body}"



def base_entries(init_script: str, busybox: Path) -> list[initramfs.Entry]:
    return [
        *(initramfs.directory(name) for name in
          ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "kpb")),
        # The kernel opens /dev/console for init's stdio before anything is mounted.
        initramfs.char_device("dev/console", 5, 1),
        initramfs.regular_file("bin/busybox", busybox.read_bytes(), 0o755),
        initramfs.symlink("bin/sh", "busybox"),
        initramfs.regular_file("init", init_script.encode(), 0o755),
    ]


def build_proof_initramfs(dest: Path, module: Path, check: str | None, *,
                          patch_name: str | None = None, preload: Sequence[Path] = (),
                          refused: Sequence[tuple[str, Path]] = (),
                          busybox: Path = BUSYBOX,
                          wait_seconds: int = GUEST_WAIT_SECONDS) -> Path:
    """Write the initramfs of a proof of ``module`` to ``dest`` and return ``dest``.

    It holds busybox, the generated ``/init``, the check (if any) as ``/kpb/check.sh``, the
    module as ``/kpb/<file name>``, the ``preload`` modules as
    ``/kpb/preload/NN-<file name>`` (loaded in the given order) and the ``refused`` copies
    (label, file) as ``/kpb/refused/NN-<label>.ko``.
    """
    if not busybox.is_file():
        raise KpbError(f"{busybox} not found: install busybox-static (./run setup)")
    for path in (module, *preload, *(path for _, path in refused)):
        if not path.is_file():
            raise KpbError(f"module not found: {path}")
    name = patch_name or module_name(module)
    entries = base_entries(guest_init(module.name, name, wait_seconds=wait_seconds), busybox)
    if check is not None:
        entries.append(initramfs.regular_file("kpb/check.sh", f"{check}\n".encode(), 0o755))
    entries.append(initramfs.regular_file(f"kpb/{module.name}", module.read_bytes()))
    entries.append(initramfs.directory("kpb/preload"))
    for index, path in enumerate(preload):
        entries.append(initramfs.regular_file(f"kpb/preload/{index:02d}-{path.name}",
                                              path.read_bytes()))
    entries.append(initramfs.directory("kpb/refused"))
    for index, (label, path) in enumerate(refused):
        entries.append(initramfs.regular_file(f"kpb/refused/{index:02d}-{label}.ko",
                                              path.read_bytes()))
    return initramfs.write_initramfs(dest, entries)
