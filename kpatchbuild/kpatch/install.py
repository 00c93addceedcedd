"""Installed patches: ``/var/lib/kpatch/<release>/<name>.ko`` and what loads them at boot.

Two hooks, both written by ``install`` and removed by ``uninstall`` with the last module,
unless the ``kpatch`` package provides them (its unit in ``/lib/systemd/system`` on Debian 12,
``/usr/lib/systemd/system`` on Debian 13, its initramfs-tools hook in
``/usr/share/initramfs-tools``):

- a systemd unit ``kpatch.service`` running ``kpatch load --all`` early in boot (before
  ``sysinit.target`` is done, so before most services start), enabled by its
  ``sysinit.target.wants`` link: written directly, no ``systemctl`` call, so it works in an
  image being prepared as well as on the running system;
- on systems using initramfs-tools, a hook that puts ``insmod`` (and the few tools the
  checks need) into the initramfs and an ``init-bottom`` script that inserts the running
  release's modules from the root filesystem just mounted, before its init starts;
  ``kpatch load --all`` then finds them loaded and skips them. The modules are read from
  the root, not copied into the initramfs, so an initramfs never carries a patch that was
  since replaced or removed; it is rebuilt (``update-initramfs -u -k <release>``) only when
  the hooks come or go.

Beside each module, ``<name>.manifest`` records its sha256, the build id of the kernel it
was built for and whether it is an atomic replace. Both loaders check a module against it
(and its owner and mode) before inserting it, the shell script in the initramfs included,
which cannot read ELF files; a module without one is never loaded. At most one
atomic-replace module is installed per release: the one loaded last would retire the
others, so a second is refused at install, and at boot none of several is loaded.

The boot unit runs Python as root at every boot, so it is written only when the
interpreter and every file the command imports are root's alone, down every directory of
their paths (a checkout's venv writable by a user is refused: the ``kpatch`` package is
the way there), and Python runs isolated (``-I``).

Each file is written to a temporary name beside its destination and renamed into place, so
an interrupted install leaves either the old state or the new one.
"""

from __future__ import annotations

import os
import shlex
import site
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base import process
from kpatchbuild.kpatch.errors import KpatchError
from kpatchbuild.kpatch.livepatch import (
    check_livepatch_module,
    check_owned_by_root,
    check_release,
    require_root,
)
from kpatchbuild.kpatch.modfile import ModuleFile, package_metadata, read_module
from kpatchbuild.kpatch.system import System
from kpatchbuild.kpatch.trust import (
    is_module_name,
    kernel_release,
    module_name,
    untrusted_path,
)

INSTALL_DIR = "/var/lib/kpatch"
UNIT_PATH = "/etc/systemd/system/kpatch.service"
UNIT_LINK = "/etc/systemd/system/sysinit.target.wants/kpatch.service"
INITRAMFS_TOOLS_DIRS = ("/etc/initramfs-tools", "/usr/share/initramfs-tools")
INITRAMFS_HOOK = "/etc/initramfs-tools/hooks/kpatch"
INITRAMFS_SCRIPT = "/etc/initramfs-tools/scripts/init-bottom/kpatch"
UPDATE_INITRAMFS = "/usr/sbin/update-initramfs"
MANIFEST_SUFFIX = ".manifest"
# Where the kpatch package puts the same hooks: present, they are the ones in use. Its unit
# is in /lib on Debian 12 and in /usr/lib from Debian 13 on (one directory on a merged /usr,
# two on a root that is not).
PACKAGED_UNITS = ("/usr/lib/systemd/system/kpatch.service", "/lib/systemd/system/kpatch.service")
PACKAGED_INITRAMFS_HOOK = "/usr/share/initramfs-tools/hooks/kpatch"
PACKAGED_INITRAMFS_SCRIPT = "/usr/share/initramfs-tools/scripts/init-bottom/kpatch"


def command_files() -> list[Path]:
    """What the boot unit's ``python -I -m kpatchbuild.kpatch`` runs: the interpreter, the
    directories it searches, the path files its site directories hold, and every module of
    this command and of pyelftools that this process imported."""
    files = [Path(sys.executable)]
    # What -I leaves out: $PYTHONPATH, and the script's directory or working directory that
    # a run without -P puts first (for `python -m`, the working directory: / in a guest).
    ignored = set(os.environ.get("PYTHONPATH", "").split(os.pathsep)) | {"", "."}
    searched = sys.path if sys.flags.safe_path else sys.path[1:]
    files += [Path(entry) for entry in searched if entry not in ignored and Path(entry).exists()]
    for directory in site.getsitepackages():
        files += sorted(Path(directory).glob("*.pth"))
    for name, module in sorted(sys.modules.items()):
        source = getattr(module, "__file__", None)
        if source and name.split(".")[0] in ("kpatchbuild", "elftools"):
            files.append(Path(source))
    return files


def kpatch_command(system: System) -> str:
    """How the boot unit runs this command: this interpreter and this package, by path,
    isolated from the environment; refused unless only root can change what it runs."""
    for path in command_files():
        reason = untrusted_path(path, system.trusted_owners)
        if reason is not None:
            raise KpatchError(
                f"kpatch install: the boot unit would run {sys.executable} -I -m "
                f"kpatchbuild.kpatch as root at every boot, but {reason}: whoever can change "
                "it would run code as root; install the kpatch package (its /usr/sbin/kpatch "
                "is root's alone), or run kpatch from an interpreter and packages only root "
                "can write")
    return f"{shlex.quote(sys.executable)} -I -m kpatchbuild.kpatch"


def unit_text(command: str) -> str:
    """The boot unit, running ``command``."""
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
ExecStart={command} load --all

[Install]
WantedBy=sysinit.target
"""


# The tools the init-bottom script runs, copied into the initramfs by the hook (klibc's
# utilities have no od, tr, sha256sum or stat; busybox may not be there).
INITRAMFS_TOOLS = {"insmod": "/sbin/insmod", "od": "/usr/bin/od", "tr": "/usr/bin/tr",
                   "sha256sum": "/usr/bin/sha256sum", "stat": "/usr/bin/stat"}

INITRAMFS_HOOK_TEXT = """#!/bin/sh
# kpatch: the initramfs needs insmod, and the tools that check a module before it is
# inserted, to insert the livepatch modules of the root filesystem.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
""" + "".join(f"copy_exec {path}\n" for path in INITRAMFS_TOOLS.values())

# The paths the init-bottom script reads, as a test may point them elsewhere.
INITRAMFS_PATHS = {"cmdline": "/proc/cmdline", "osrelease": "/proc/sys/kernel/osrelease",
                   "notes": "/sys/kernel/notes", "trusted_uid": "0"}

_INITRAMFS_SCRIPT = """#!/bin/sh
# kpatch: insert the livepatch modules installed for this kernel on the root filesystem
# just mounted, before its init starts (kpatch.service then finds them loaded), with the
# checks kpatch load makes: each module has its manifest, and both are owned by root and
# writable by nobody else; its sha256 is the manifest's; it was built for this kernel's
# build id; at most one atomic-replace module. No user process runs yet, so nothing can
# change a file between its check and insmod.
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in prereqs) prereqs; exit 0 ;; esac
case " $(cat {cmdline}) " in *" kpatch.enable=0 "*) exit 0 ;; esac
release=$(cat {osrelease})
directory="${{rootmnt}}{install_dir}/${{release}}"
[ -d "$directory" ] || exit 0
notes=$({od} -An -v -tx1 {notes} | {tr} -d ' \\n')

say() {{ echo "kpatch: $*" >&2; }}

# checked MODULE: the module passes every check; sets $kind (replace or stack).
checked() {{
    manifest="${{1%.ko}}{manifest_suffix}"
    if [ ! -f "$manifest" ]; then
        say "$1: no manifest beside it: not loaded; reinstall it"; return 1
    fi
    for owner_mode in $({stat} -c '%u:%a' "$1" "$manifest"); do
        case "$owner_mode" in
        {trusted_uid}:*[2367][0-7]|{trusted_uid}:*[2367]) ;;
        {trusted_uid}:*) continue ;;
        esac
        say "$1: owner and mode $owner_mode: only root may own and write it: not loaded"
        return 1
    done
    read -r sum build_id kind rest < "$manifest" || true
    actual=$({sha256sum} "$1")
    if [ "${{actual%% *}}" != "$sum" ]; then
        say "$1: its sha256 is not its manifest's: not loaded; reinstall it"; return 1
    fi
    if [ "$build_id" != "-" ]; then
        case "$notes" in
        *03000000474e5500"$build_id"*) ;;
        *) say "$1: built for another build of $release: not loaded"; return 1 ;;
        esac
    fi
}}

replacing=0
replacing_names=""
for module in "$directory"/*.ko; do
    [ -f "$module" ] || continue
    if checked "$module" 2>/dev/null && [ "$kind" = replace ]; then
        replacing=$((replacing + 1))
        replacing_names="$replacing_names ${{module##*/}}"
    fi
done
if [ "$replacing" -gt 1 ]; then
    say "several atomic-replace patches are installed for $release:$replacing_names; the" \
        "one loaded last would retire the others, so none of them is loaded; uninstall all" \
        "but one (replace-mode patches are cumulative)"
fi
for module in "$directory"/*.ko; do
    [ -f "$module" ] || continue
    checked "$module" || continue
    [ "$kind" = replace ] && [ "$replacing" -gt 1 ] && continue
    {insmod} "$module" || say "could not load $module"
done
exit 0
"""


def initramfs_script_text(paths: dict[str, str] | None = None,
                          tools: dict[str, str] | None = None) -> str:
    """The init-bottom script; ``paths`` and ``tools`` replace the defaults (tests)."""
    return _INITRAMFS_SCRIPT.format(install_dir=INSTALL_DIR, manifest_suffix=MANIFEST_SUFFIX,
                                    **{**INITRAMFS_PATHS, **(paths or {})},
                                    **{**INITRAMFS_TOOLS, **(tools or {})})


INITRAMFS_SCRIPT_TEXT = initramfs_script_text()


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

    @property
    def manifest_path(self) -> Path:
        return self.path.with_suffix(MANIFEST_SUFFIX)


def installed_modules(system: System) -> list[Installed]:
    """Every installed module, by release then name (files whose names no module or release
    could have are not modules of ours: left out)."""
    base = system.path(INSTALL_DIR)
    if not base.is_dir():
        return []
    return [Installed(release.name, module.stem, module)
            for release in sorted(base.iterdir()) if release.is_dir()
            and not release.is_symlink()
            for module in sorted(release.glob("*.ko")) if is_module_name(module.stem)]


def installed_path(system: System, release: str, name: str) -> Path:
    return (system.path(INSTALL_DIR) / kernel_release(release, "kernel release")
            / f"{module_name(name, 'kpatch')}.ko")


@dataclass(frozen=True)
class Manifest:
    """What was installed: the module's sha256, the build id of the kernel it was built for
    (``-``: none recorded) and whether it is an atomic replace. One line, so the initramfs's
    shell reads it with ``read``."""

    sha256: str
    build_id: str | None
    replace: bool

    @classmethod
    def of(cls, module: ModuleFile) -> Manifest:
        return cls(module.sha256, module.build_id, module.replace is not False)

    def text(self) -> str:
        return f"{self.sha256} {self.build_id or '-'} " \
               f"{'replace' if self.replace else 'stack'}\n"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            fields = path.read_text().split()
        except FileNotFoundError:
            raise KpatchError(f"{path}: missing: the module beside it was not installed by "
                              "kpatch install or a package; reinstall it") from None
        except (OSError, UnicodeDecodeError) as error:
            raise KpatchError(f"{path}: unreadable ({error}); reinstall the module") from None
        if len(fields) != 3 or fields[2] not in ("replace", "stack") or len(fields[0]) != 64:
            raise KpatchError(f"{path}: not a kpatch manifest (sha256, build id, replace or "
                              "stack); reinstall the module")
        return cls(fields[0], None if fields[1] == "-" else fields[1], fields[2] == "replace")


def read_installed(system: System, installed: Installed) -> ModuleFile:
    """An installed module, checked against its manifest; the module stays open."""
    manifest = Manifest.read(installed.manifest_path)
    module = read_module(installed.path)
    try:
        if module.sha256 != manifest.sha256:
            raise KpatchError(f"{installed.path}: its sha256 is not the one its manifest "
                              "recorded at install: it changed since; reinstall it")
        if module.name != installed.name:
            raise KpatchError(f"{installed.path}: installed as {installed.name}, but its "
                              f".modinfo names {module.name}; reinstall it")
        check_owned_by_root(system, module)
    except BaseException:
        module.close()
        raise
    return module


def resolve_module(system: System, spec: str) -> ModuleFile:
    """``spec`` is a module file when it holds a ``/`` or ends in ``.ko``; otherwise only the
    name of a module installed for the running kernel, never a file of the current
    directory."""
    if "/" in spec or spec.endswith(".ko"):
        return read_module(Path(spec))
    name = module_name(spec, "kpatch")
    release = system.release()
    path = installed_path(system, release, name)
    if not path.is_file():
        raise KpatchError(f"{name}: no module of that name is installed for {release} "
                          f"({path.parent}); for a file, give its path (./{name}.ko)")
    return read_installed(system, Installed(release, name, path))


def replace_mode_modules(system: System, release: str) -> list[Installed]:
    """The atomic-replace modules installed for ``release`` (by their manifests)."""
    found = []
    for item in installed_modules(system):
        if item.release != release:
            continue
        try:
            if Manifest.read(item.manifest_path).replace:
                found.append(item)
        except KpatchError:
            continue  # never loaded anyway: both loaders refuse it
    return found


def _check_sole_replace_mode(system: System, module: ModuleFile, release: str,
                             what: str) -> None:
    if module.replace is False:
        return
    others = [item for item in replace_mode_modules(system, release) if item.name != module.name]
    if others:
        raise KpatchError(
            f"{what}: {module.name} is an atomic-replace patch, and "
            f"{', '.join(describe_installed(o) for o in others)} is installed for {release} "
            "too: the one loaded last would retire the other at every boot; replace-mode "
            "patches are cumulative: build one patch holding both, or uninstall the other "
            "first")


def check_sole_replace_mode(system: System, module: ModuleFile) -> None:
    """An installed atomic-replace module is loaded only while no other one is installed
    for the running kernel (as a package's postinst loads it): at boot neither would be."""
    release = system.release()
    if module.path.parent.resolve() == (system.path(INSTALL_DIR) / release).resolve():
        _check_sole_replace_mode(system, module, release, f"kpatch: {module.path}")


def describe_installed(item: Installed) -> str:
    """``lp_a`` or ``lp_a (package kpatch-patch-x)``: how messages name an installed module."""
    try:
        metadata = package_metadata(item.path)
    except KpatchError:
        metadata = None
    package = metadata.get("package") if metadata else None
    return f"{item.name} (package {package})" if package else item.name


def uses_initramfs_tools(system: System) -> bool:
    return any(system.path(path).is_dir() for path in INITRAMFS_TOOLS_DIRS)


def install(system: System, module: ModuleFile, release: str) -> list[str]:
    """Keep ``module`` for ``release`` and make boot load it; returns what was written."""
    require_root(system, "install")
    release = kernel_release(release, "kpatch install -k")
    check_livepatch_module(module)
    check_release(module, release)
    check_owned_by_root(system, module)
    manifest = Manifest.of(module)
    _check_sole_replace_mode(system, module, release, "kpatch install")
    command = None if packaged(system) else kpatch_command(system)
    destination = installed_path(system, release, module.name)
    data = module.content()  # through the descriptor that was checked
    _write_atomically(destination, data)
    _write_atomically(destination.with_suffix(MANIFEST_SUFFIX), manifest.text().encode())
    hooks = _write_boot_hooks(system, command)
    written = [str(destination), str(destination.with_suffix(MANIFEST_SUFFIX)), *hooks]
    if any(INITRAMFS_SCRIPT in path for path in hooks):
        written += _update_initramfs(system, release)
    return written


def uninstall(system: System, name: str, release: str) -> list[str]:
    """Forget ``name`` for ``release``; the boot hooks go with the last module."""
    require_root(system, "uninstall")
    path = installed_path(system, release, name)
    if not path.is_file():
        others = [i.release for i in installed_modules(system) if i.name == name]
        hint = f" (installed for {', '.join(others)}: use -k)" if others else ""
        raise KpatchError(f"{name}: not installed for {release}{hint}")
    removed = []
    for item in (path, path.with_suffix(MANIFEST_SUFFIX)):
        if item.exists():
            item.unlink()
            removed.append(str(item))
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
    return any(system.path(unit).is_file() for unit in PACKAGED_UNITS)


def _write_boot_hooks(system: System, command: str | None) -> list[str]:
    """The hooks that are missing or out of date, written; returns what was written.
    ``command`` runs kpatch in the unit; None where the kpatch package provides them."""
    if command is None:
        return []
    wanted = [(UNIT_PATH, unit_text(command), 0o644)]
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
    tool = Path(UPDATE_INITRAMFS)
    if system.root != Path("/") or not tool.is_file() \
            or not Path(f"/boot/config-{release}").exists():
        return []
    process.run([str(tool), "-u", "-k", release], error=KpatchError,
                what=f"{UPDATE_INITRAMFS} -u -k {release}",
                hint="the module is installed and kpatch.service loads it at boot")
    return [f"initramfs of {release} (update-initramfs)"]
