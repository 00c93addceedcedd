"""Two ways to give a qemu guest a Python for the kpatch command, timed.

(a) initramfs: the host's interpreter, the shared libraries ldd lists, the modules the
    command imports (compiled) and the package, copied into the busybox initramfs
    (kpatchbuild.stages.prove.guestpython.guest_python);
(b) 9p: the host's root shared read-only over virtio-9p, as virtme-ng does; the guest
    loads the 9p modules, mounts it, and runs the same interpreter chrooted into it.

Debian's cloud kernel, the one the default recipe targets, has no 9p at all
(``# CONFIG_NET_9P is not set``), so (b) needs Debian's generic flavour of the same release,
fetched here with ``apt-get download`` (70 MB, kept under cache/bench/). (a) is timed on
both kernels, so the two routes are compared on the same kernel.

Each run boots, runs ``kpatch list`` once and powers off. Printed per run: the guest's
uptime when its script starts (boot), the seconds ``kpatch list`` takes (first Python
start, imports included), the whole qemu run on the host, and the initramfs size.

    .venv/bin/python bench/guest_python.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from kpatchbuild.base.store import default_root  # noqa: E402
from kpatchbuild.stages.prove import guestpython, initramfs, vm  # noqa: E402

GENERIC_RELEASE = "6.1.0-56-amd64"
# 9p over virtio-pci and what it needs, in dependency order (the modules' depends=).
NINEP_MODULES = (
    "drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko", "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko", "fs/netfs/netfs.ko", "fs/fscache/fscache.ko",
    "net/9p/9pnet.ko", "net/9p/9pnet_virtio.ko", "fs/9p/9p.ko",
)
TIMING = r"""
echo "KPB-T boot $(cut -d' ' -f1 /proc/uptime)"
{prepare}
start=$(cut -d' ' -f1 /proc/uptime)
{command} > /tmp/out 2>&1
status=$?
end=$(cut -d' ' -f1 /proc/uptime)
echo "KPB-T prepare $start"
echo "KPB-T kpatch $(echo "$end $start" | awk '{{print $1 - $2}}') status $status"
sed 's/^/KPB-OUT /' /tmp/out
"""


def cloud_kernel() -> Path:
    fetch = json.loads(next((default_root() / "work/cmdline").glob("*/fetch.json")).read_text())
    return Path(fetch["files"]) / "vmlinuz"


def generic_kernel() -> tuple[Path, Path]:
    """Debian's generic 6.1 image, unpacked: (vmlinuz, modules directory)."""
    base = default_root() / "bench" / "generic-kernel"
    unpacked = base / "x"
    vmlinuz = unpacked / "boot" / f"vmlinuz-{GENERIC_RELEASE}"
    if not vmlinuz.is_file():
        base.mkdir(parents=True, exist_ok=True)
        debs = list(base.glob(f"linux-image-{GENERIC_RELEASE}_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", f"linux-image-{GENERIC_RELEASE}"], cwd=base,
                           check=True, capture_output=True)
            debs = list(base.glob(f"linux-image-{GENERIC_RELEASE}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
    return vmlinuz, unpacked / "lib" / "modules" / GENERIC_RELEASE / "kernel"


def parse(run: vm.ScriptRun) -> dict[str, float]:
    found = dict(re.findall(r"KPB-T (\w+) ([\d.]+)", run.console))
    if run.exit_status is None or "kpatch" not in found:
        raise SystemExit(f"the guest failed; console log: {run.console_log}")
    status = re.search(r"KPB-T kpatch [\d.]+ status (\d+)", run.console)
    if status is None or status[1] != "0":
        raise SystemExit(f"kpatch list failed in the guest; console log: {run.console_log}")
    return {"boot": float(found["boot"]), "kpatch": float(found["kpatch"]),
            "qemu": run.elapsed}


def initramfs_route(kernel: Path, workdir: Path) -> tuple[dict[str, float], int]:
    python = guestpython.guest_python(["kpatchbuild.kpatch.__main__"])
    script = TIMING.format(prepare=":",
                           command=python.command("-m", "kpatchbuild.kpatch", "list"))
    run = vm.run_guest_script(kernel, script, workdir=workdir, files=python.entries,
                              accel="tcg")
    return parse(run), (workdir / "initramfs.cpio.gz").stat().st_size


def ninep_route(kernel: Path, modules: Path, workdir: Path) -> tuple[dict[str, float], int]:
    python = Path(sys.executable).resolve()
    site = next(p for p in sys.path if p.endswith("site-packages"))
    files = [initramfs.regular_file(f"kpb/9p/{i:02d}-{Path(m).name}",
                                    (modules / m).read_bytes())
             for i, m in enumerate(NINEP_MODULES)]
    prepare = "\n".join([
        "for m in /kpb/9p/*.ko; do insmod $m || echo KPB-INSMOD-FAILED $m; done",
        "mkdir -p /host",
        "mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostroot /host"
        " || echo KPB-MOUNT-FAILED",
        "mount -t proc proc /host/proc && mount -t sysfs sysfs /host/sys",
    ])
    command = (f"chroot /host env PYTHONPATH={site}:{PROJECT} PYTHONDONTWRITEBYTECODE=1 "
               f"{python} -S -m kpatchbuild.kpatch list")
    script = TIMING.format(prepare=prepare, command=command)
    qemu_args = ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on"]
    run = vm.run_guest_script(kernel, script, workdir=workdir, files=files, accel="tcg",
                              qemu_args=qemu_args, timeout=300)
    figures = parse(run)
    # Mounting is part of this route's price: count from the boot, not the script start.
    prepared = float(re.search(r"KPB-T prepare ([\d.]+)", run.console)[1])
    figures["mount"] = prepared - figures["boot"]
    return figures, (workdir / "initramfs.cpio.gz").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = default_root() / "bench" / "guest-python"
    generic, modules = generic_kernel()
    routes = {
        "(a) initramfs, cloud kernel": lambda d: initramfs_route(cloud_kernel(), d),
        "(a) initramfs, generic kernel": lambda d: initramfs_route(generic, d),
        "(b) 9p host root, generic kernel": lambda d: ninep_route(generic, modules, d),
    }
    print(f"{'route':<34} {'boot':>6} {'9p mount':>9} {'kpatch list':>12} {'qemu run':>9} "
          f"{'initramfs':>10}")
    for label, route in routes.items():
        samples = []
        for index in range(args.runs):
            started = time.monotonic()
            figures, size = route(work / f"{label[:3].strip('()')}-{index}")
            figures.setdefault("mount", 0.0)
            figures["host"] = time.monotonic() - started
            samples.append(figures)

        def median(key: str, runs: list[dict[str, float]] = samples) -> float:
            return statistics.median(s[key] for s in runs)

        print(f"{label:<34} {median('boot'):>5.2f}s {median('mount'):>8.2f}s "
              f"{median('kpatch'):>11.2f}s {median('qemu'):>8.2f}s {size / 1e6:>8.1f}MB",
              flush=True)


if __name__ == "__main__":
    main()
