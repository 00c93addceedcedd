"""Installed patches: ``/var/lib/kpatch/<release>/<name>.ko`` and what loads them at boot.

Two hooks, both written by ``install`` and removed by ``uninstall`` with the last module,
unless the ``kpatch`` package provides them (its unit in ``/lib/systemd/system``, its
initramfs-tools hook in ``/usr/share/initramfs-tools``):

- a systemd unit ``kpatch.service`` running ``kpatch load --all`` early in boot (before
  ``sysinit.target`` is done, so before most services start), enabled by its
  ``sysinit.target.wants`` link: written directly, no ``systemctl`` call, so it works in an
  image being prepared as well as on the running system;
- on systems using initramfs-tools, a hook that puts ``insmod`` into the initramfs and an
  ``init-bottom`` script that inserts the running release's modules from the root
  filesystem just mounted, before its init starts; ``kpatch load --all`` then finds them
  loaded and skips them. The modules are read from the root, not copied into the initramfs,
  so an initramfs never carries a patch that was since replaced or removed; it is rebuilt
  (``update-initramfs -u -k <release>``) only when the hooks come or go.

Each file is written to a temporary name beside its destination and renamed into place, so
an interrupted install leaves either the old state or the new one.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpatchbuild.base import process
from kpatchbuild.kpatch.errors import KpatchError
from kpatchbuild.kpatch.livepatch import check_livepatch_module, check_release, require_root
from kpatchbuild.kpatch.modfile import ModuleFile
from kpatchbuild.kpatch.system import System

INSTALL_DIR = "/var/lib/kpatch"
UNIT_PATH = "/etc/systemd/system/kpatch.service"
UNIT_LINK = "/etc/systemd/system/sysinit.target.wants/kpatch.service"
INITRAMFS_TOOLS = ("/etc/initramfs-tools", "/usr/share/initramfs-tools")
INITRAMFS_HOOK = "/etc/initramfs-tools/hooks/kpatch"
INITRAMFS_SCRIPT = "/etc/initramfs-tools/scripts/init-bottom/kpatch"
UPDATE_INITRAMFS = "update-initramfs"
# Where the kpatch package puts the same hooks: present, they are the ones in use.
PACKAGED_UNIT = "/lib/systemd/system/kpatch.service"
PACKAGED_INITRAMFS_HOOK = "/usr/share/initramfs-tools/hooks/kpatch"
PACKAGED_INITRAMFS_SCRIPT = "/usr/share/initramfs-tools/scripts/init-bottom/kpatch"


def kpatch_command() -> str:
    """How the boot unit runs this command: this interpreter and this package, by path."""
    return f"{shlex.quote(sys.executable)} -m kpatchbuild.kpatch"


def unit_text(command: str | None = None) -> str:
    """The boot unit, running ``command`` (by default this interpreter and package)."""
    return f"""[Unit]
Description=Apply the installed kernel livepatches (kpatch load --all)
Documentation=man:kpatch(8)
DefaultDependencies=no
After=local-fs.target systemd-modules-load.service
Before=sysinit.target shutdown.target
Conflicts=shutdown.target
ConditionPathIsDirectory=/sys/kernel/livepatch
ConditionKernelCommandLine=!kpatch.enable=0

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={command or kpatch_command()} load --all

[Install]
WantedBy=sysinit.target
"""


INITRAMFS_HOOK_TEXT = """#!/bin/sh
# kpatch: the initramfs needs insmod to insert the livepatch modules of the root filesystem.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
copy_exec /sbin/insmod /sbin
"""

INITRAMFS_SCRIPT_TEXT = f"""#!/bin/sh
# kpatch: insert the livepatch modules installed for this kernel on the root filesystem
# just mounted, before its init starts (kpatch.service then finds them loaded).
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in prereqs) prereqs; exit 0 ;; esac
grep -q 'kpatch.enable=0' /proc/cmdline && exit 0
for module in "${{rootmnt}}{INSTALL_DIR}/$(uname -r)"/*.ko; do
    [ -e "$module" ] || continue
    insmod "$module" || echo "kpatch: could not load $module" >&2
done
exit 0
"""


def _write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _link_atomically(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, path)


@dataclass(frozen=True)
class Installed:
    release: str
    name: str
    path: Path


def installed_modules(system: System) -> list[Installed]:
    """Every installed module, by release then name."""
    base = system.path(INSTALL_DIR)
    if not base.is_dir():
        return []
    return [Installed(release.name, module.stem, module)
            for release in sorted(base.iterdir()) if release.is_dir()
            for module in sorted(release.glob("*.ko"))]


def package_metadata(module: Path) -> dict[str, Any] | None:
    """What the package that installed ``module`` says of it (``<name>.json`` beside it:
    package, version, recipe, patches and their hashes, changed functions), if any."""
    path = module.with_suffix(".json")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise KpatchError(f"{path}: unreadable package metadata ({error}); reinstall the "
                          "package that carries it") from None
    return data if isinstance(data, dict) else None


def uses_initramfs_tools(system: System) -> bool:
    return any(system.path(path).is_dir() for path in INITRAMFS_TOOLS)


def install(system: System, module: ModuleFile, release: str) -> list[str]:
    """Keep ``module`` for ``release`` and make boot load it; returns what was written."""
    require_root(system, "install")
    check_livepatch_module(module)
    check_release(module, release)
    destination = system.path(INSTALL_DIR) / release / f"{module.name}.ko"
    _write_atomically(destination, module.path.read_bytes())
    hooks = _write_boot_hooks(system)
    written = [str(destination), *hooks]
    if any(INITRAMFS_SCRIPT in path for path in hooks):
        written += _update_initramfs(system, release)
    return written


def uninstall(system: System, name: str, release: str) -> list[str]:
    """Forget ``name`` for ``release``; the boot hooks go with the last module."""
    require_root(system, "uninstall")
    path = system.path(INSTALL_DIR) / release / f"{name}.ko"
    if not path.is_file():
        others = [i.release for i in installed_modules(system) if i.name == name]
        hint = f" (installed for {', '.join(others)}: use -k)" if others else ""
        raise KpatchError(f"{name}: not installed for {release}{hint}")
    path.unlink()
    removed = [str(path)]
    if not any(path.parent.iterdir()):
        path.parent.rmdir()
    if not installed_modules(system):
        hooks = _remove_boot_hooks(system)
        removed += hooks
        if any(INITRAMFS_SCRIPT in path for path in hooks):
            _update_initramfs(system, release)
    return removed


def packaged(system: System) -> bool:
    """Whether the kpatch package provides the boot hooks (then they are not written)."""
    return system.path(PACKAGED_UNIT).is_file()


def _write_boot_hooks(system: System) -> list[str]:
    """The hooks that are missing or out of date, written; returns what was written."""
    if packaged(system):
        return []
    wanted = [(UNIT_PATH, unit_text(), 0o644)]
    if uses_initramfs_tools(system):
        wanted += [(INITRAMFS_HOOK, INITRAMFS_HOOK_TEXT, 0o755),
                   (INITRAMFS_SCRIPT, INITRAMFS_SCRIPT_TEXT, 0o755)]
    written = []
    for path, text, mode in wanted:
        target = system.path(path)
        if not target.is_file() or target.read_text() != text:
            _write_atomically(target, text.encode(), mode)
            written.append(str(target))
    link = system.path(UNIT_LINK)
    if not link.is_symlink():
        _link_atomically(link, UNIT_PATH)
        written.append(str(link))
    return written


def _remove_boot_hooks(system: System) -> list[str]:
    removed = []
    for path in (UNIT_LINK, UNIT_PATH, INITRAMFS_HOOK, INITRAMFS_SCRIPT):
        target = system.path(path)
        if target.is_symlink() or target.exists():
            target.unlink()
            removed.append(str(target))
    return removed


def _update_initramfs(system: System, release: str) -> list[str]:
    """Rebuild the release's initramfs on the real system, when the tool is there.

    Under a root prefix (an image, a test tree) the initramfs belongs to that tree's own
    tools, so nothing is run; the hook takes effect at its next rebuild.
    """
    tool = shutil.which(UPDATE_INITRAMFS)
    if system.root != Path("/") or tool is None or not Path(f"/boot/config-{release}").exists():
        return []
    process.run([tool, "-u", "-k", release], error=KpatchError,
                what=f"{UPDATE_INITRAMFS} -u -k {release}",
                hint="the module is installed and kpatch.service loads it at boot")
    return [f"initramfs of {release} (update-initramfs)"]
