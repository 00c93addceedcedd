"""Load, unload and replace livepatch modules, and nudge or force a stuck transition.

The kernel's side, as Documentation/livepatch/livepatch.rst describes it: inserting a
livepatch module registers and enables its patch (``/sys/kernel/livepatch/<name>`` appears,
``transition`` reads 1 until every task runs the new code); writing 0 to ``enabled`` starts
the reverse transition, after which the kernel removes the patch's sysfs directory and the
module can be removed. A task still in old code shows ``/proc/<pid>/patch_state`` different
from the transition's target. An atomic-replace patch, once its transition ends, retires
every patch loaded before it: their sysfs directories go, their modules stay until removed.

Every operation checks first and then acts, and a transition that does not end in time is
undone (unless asked to keep it), so the machine is left as it was found or as asked.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.kpatch import signing
from kpatchbuild.kpatch.errors import (
    KernelRefusedError,
    KpatchError,
    NoLivepatchError,
    NotRootError,
    TransitionTimeoutError,
    WrongKernelError,
)
from kpatchbuild.kpatch.modfile import ModuleFile, package_metadata
from kpatchbuild.kpatch.system import System, errno_name
from kpatchbuild.kpatch.trust import untrusted_reason

DEFAULT_TIMEOUT = 60.0
POLL_SECONDS = 0.1
# After its sysfs directory goes, a patch's module drops its last reference a moment later.
REMOVE_RETRY_SECONDS = 5.0
PENDING_TASKS_SHOWN = 8

Report = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def require_root(system: System, action: str) -> None:
    if not system.is_root():
        raise NotRootError(f"kpatch {action}: must run as root (the module system calls and "
                           "/sys/kernel/livepatch need it); try sudo kpatch ...")


def require_livepatch(system: System) -> None:
    if not system.livepatch_dir.is_dir():
        raise NoLivepatchError(
            f"{system.livepatch_dir} does not exist: the running kernel "
            f"{system.release()} has no livepatch support (CONFIG_LIVEPATCH), or sysfs is "
            "not mounted")


def check_livepatch_module(module: ModuleFile) -> None:
    if not module.livepatch:
        raise KpatchError(f"{module.path}: not a livepatch module (its .modinfo has no "
                          "livepatch=Y)")


def check_built_for_running_kernel(system: System, module: ModuleFile) -> None:
    """Refuse a module built for another kernel: vermagic, recorded release and build id."""
    running = system.release()
    running_id = system.build_id()
    mismatch = (module.vermagic_release != running
                or (module.release is not None and module.release != running)
                or (module.build_id is not None and running_id is not None
                    and module.build_id != running_id))
    if mismatch:
        now = f"{running} (build id {running_id})" if running_id and module.build_id else running
        raise WrongKernelError(f"{module.path}: built for kernel {module.built_for}, but the "
                               f"running kernel is {now}; build it for this kernel")


def check_release(module: ModuleFile, release: str) -> None:
    """For install -k: the module must be for ``release`` (the build id is checked at load)."""
    built = module.release or module.vermagic_release
    if built != release or module.vermagic_release != release:
        raise WrongKernelError(f"{module.path}: built for kernel {module.built_for}, not "
                               f"{release}; install it for the kernel it was built for (-k "
                               f"{built})")


def check_owned_by_root(system: System, module: ModuleFile) -> None:
    """As root, a module file only root can change: whoever else could write it would
    choose what runs in the kernel."""
    if not system.is_root() or module.status is None:
        return
    reason = untrusted_reason(module.status, system.trusted_owners)
    if reason is not None:
        raise KpatchError(f"{module.path}: refused: {reason}; as root, kpatch loads only a "
                          "module file that only root can change (chown root:root and chmod "
                          "go-w it, after checking where it came from)")


# --- waiting on the kernel ---

def _wait(system: System, condition: Callable[[], bool], timeout: float) -> bool:
    deadline = system.monotonic() + timeout
    while not condition():
        if system.monotonic() >= deadline:
            return False
        system.sleep(POLL_SECONDS)
    return True


def in_transition(system: System, name: str) -> bool:
    return system.read_attribute(system.patch_dir(name) / "transition") == "1"


def pending_tasks(system: System, target: int) -> list[tuple[int, str]]:
    """Tasks not yet switched to ``target`` (1: patched, 0: unpatched): (pid, comm)."""
    return [(pid, comm) for pid, comm, state in system.task_states()
            if state not in (-1, target)]


def _describe_pending(system: System, target: int) -> str:
    tasks = pending_tasks(system, target)
    if not tasks:
        return "no task reported as pending"
    shown = ", ".join(f"{pid} ({comm})" for pid, comm in tasks[:PENDING_TASKS_SHOWN])
    more = f" and {len(tasks) - PENDING_TASKS_SHOWN} more" if len(tasks) > PENDING_TASKS_SHOWN \
        else ""
    return f"{len(tasks)} task(s) still run old code: {shown}{more}"


def _remove_module(system: System, name: str) -> None:
    """delete_module, retried briefly while the kernel drops the patch's last reference."""
    deadline = system.monotonic() + REMOVE_RETRY_SECONDS
    while True:
        try:
            system.loader.remove(name)
            return
        except OSError as error:
            retry = error.errno in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK)
            if not retry or system.monotonic() >= deadline:
                raise KernelRefusedError(f"{name}: the kernel refused to remove the module: "
                                         f"{errno_name(error)}") from None
        system.sleep(POLL_SECONDS)


def _write_enabled(system: System, name: str, value: str) -> None:
    path = system.patch_dir(name) / "enabled"
    try:
        system.write_attribute(path, value)
    except OSError as error:
        raise KernelRefusedError(f"{name}: writing {value} to {path} failed: "
                                 f"{errno_name(error)}") from None


# --- load ---

@dataclass(frozen=True)
class LoadResult:
    module: ModuleFile
    seconds: float


def check_loadable(system: System, module: ModuleFile, action: str = "load") -> None:
    """Everything checked before a module is inserted, in the order a user would fix it."""
    require_root(system, action)
    require_livepatch(system)
    check_livepatch_module(module)
    check_owned_by_root(system, module)
    check_built_for_running_kernel(system, module)
    if system.loaded_module(module.name) is not None:
        raise KpatchError(f"{module.name} is already loaded; kpatch unload {module.name} "
                          "first, or kpatch replace with a newer build")


def load(system: System, module: ModuleFile, *, timeout: float = DEFAULT_TIMEOUT,
         keep: bool = False, report: Report = _quiet) -> LoadResult:
    """Insert ``module`` and wait for its transition; on timeout roll back unless ``keep``."""
    check_loadable(system, module)
    start = system.monotonic()
    try:
        system.loader.insert(module.descriptor, module.path)
    except OSError as error:
        untrusted = signing.refusal(system, module, error, package_metadata(module.path))
        if untrusted is not None:
            raise untrusted from None
        hint = " (see dmesg)" if error.errno in (errno.EINVAL, errno.ENOEXEC) else ""
        raise KernelRefusedError(f"{module.path}: the kernel refused to load it: "
                                 f"{errno_name(error)}{hint}") from None
    name = module.name
    if not system.patch_dir(name).is_dir():
        # Inserted but registered no patch: do not leave a half-done state behind.
        _remove_module(system, name)
        raise KernelRefusedError(f"{module.path}: loaded, but no {system.patch_dir(name)} "
                                 "appeared; the module was removed again (see dmesg)")
    report(f"loading {name}: waiting for the transition (at most {timeout:g} s)")
    if not _wait(system, lambda: not in_transition(system, name), timeout):
        pending = _describe_pending(system, target=1)
        what = f"{name}: the transition to the patched state did not finish in {timeout:g} s; " \
               f"{pending}"
        if keep:
            raise TransitionTimeoutError(
                f"{what}; kept in transition (--keep): kpatch signal {name} to wake them, "
                f"kpatch force {name} as a last resort, or kpatch unload {name}")
        raise TransitionTimeoutError(f"{what}; {_roll_back_load(system, name, timeout)}; "
                                     f"retry with --keep and then kpatch signal {name} or "
                                     f"kpatch force {name}")
    return LoadResult(module, system.monotonic() - start)


def _roll_back_load(system: System, name: str, timeout: float) -> str:
    """Reverse a stuck enable transition and remove the module; say what was done."""
    try:
        _write_enabled(system, name, "0")
    except KernelRefusedError as error:
        return f"rolling back failed ({error.message}); it is still loaded"
    if not _wait(system, lambda: not system.patch_dir(name).exists(), timeout):
        return (f"rolling back: the reverse transition is still running, so {name} stays "
                f"loaded; kpatch unload {name} when it ends")
    try:
        _remove_module(system, name)
    except KernelRefusedError as error:
        return f"rolled back (disabled), but {error.message}"
    return "rolled back: disabled and removed"


# --- unload ---

def unload(system: System, name: str, *, timeout: float = DEFAULT_TIMEOUT,
           keep: bool = False, report: Report = _quiet) -> None:
    """Disable the patch ``name``, wait for the transition and remove its module."""
    require_root(system, "unload")
    require_livepatch(system)
    loaded = system.loaded_module(name)
    patch = system.patch_dir(name)
    if loaded is None and not patch.exists():
        raise KpatchError(f"{name}: no such loaded patch (kpatch list shows them)")
    if loaded is not None and not loaded.is_livepatch and not patch.exists():
        raise KpatchError(f"{name}: a loaded module but not a livepatch module; kpatch "
                          "leaves it alone")
    if patch.exists():
        if system.read_attribute(patch / "enabled") == "1":
            report(f"unloading {name}: disabling, waiting for the transition "
                   f"(at most {timeout:g} s)")
            _write_enabled(system, name, "0")
        if not _wait(system, lambda: not patch.exists(), timeout):
            pending = _describe_pending(system, target=0)
            what = (f"{name}: the transition back to the unpatched state did not finish in "
                    f"{timeout:g} s; {pending}")
            if keep:
                raise TransitionTimeoutError(
                    f"{what}; kept in transition (--keep): kpatch signal {name}, kpatch force "
                    f"{name}, or wait and kpatch unload {name} again")
            undone = _reenable(system, name)
            raise TransitionTimeoutError(f"{what}; {undone}; retry later, or with --keep "
                                         f"and then kpatch signal {name}")
    _remove_module(system, name)


def _reenable(system: System, name: str) -> str:
    """Reverse a stuck disable transition: the patch stays applied, as before the unload."""
    if not system.patch_dir(name).exists():
        return "it finished meanwhile"
    try:
        _write_enabled(system, name, "1")
    except KernelRefusedError as error:
        return f"could not re-enable it ({error.message})"
    return "rolled back: re-enabled, the patch stays applied"


def unload_order(system: System) -> list[str]:
    """Loaded livepatch modules, newest first: the order patches stack in."""
    names = [m.name for m in system.loaded_modules() if m.is_livepatch]
    # A patch directory without a K-tainted module line (a kernel that does not show taint
    # flags in /proc/modules) is still a patch to remove.
    names += [n for n in system.patch_names() if n not in names]
    return names


# --- replace ---

def replace(system: System, module: ModuleFile, *, timeout: float = DEFAULT_TIMEOUT,
            keep: bool = False, report: Report = _quiet) -> list[str]:
    """Load an atomic-replace ``module``; remove the modules it replaced; return their names."""
    check_loadable(system, module, "replace")
    if module.replace is False:
        raise KpatchError(f"{module.path}: not an atomic-replace module (built with replace: "
                          f"false), so it would stack instead; use kpatch load")
    before = [name for name in unload_order(system) if name != module.name]
    load(system, module, timeout=timeout, keep=keep, report=report)
    removed = []
    for name in before:
        # The kernel retires the replaced patches as the transition ends.
        def replaced(name: str = name) -> bool:
            return not system.patch_dir(name).exists()

        if not _wait(system, replaced, timeout):
            raise KernelRefusedError(f"{module.name} is loaded, but {name} was not replaced "
                                     f"(its {system.patch_dir(name)} stays); kpatch unload "
                                     f"{name} if it should go")
        _remove_module(system, name)
        removed.append(name)
    return removed


# --- signal and force ---

def _require_transition(system: System, name: str, action: str) -> Path:
    require_root(system, action)
    require_livepatch(system)
    patch = system.patch_dir(name)
    if not patch.is_dir():
        raise KpatchError(f"{name}: no such loaded patch (kpatch list shows them)")
    if not in_transition(system, name):
        raise KpatchError(f"{name}: not in transition; nothing to {action}")
    return patch


def signal(system: System, name: str) -> str:
    """Ask the kernel to signal the tasks that block ``name``'s transition."""
    patch = _require_transition(system, name, "signal")
    target = patch / "signal"
    if not target.exists():
        raise KpatchError(f"{name}: this kernel has no {target}: it signals the remaining "
                          "tasks itself (every 15 s); wait, or kpatch force as a last resort")
    try:
        system.write_attribute(target, "1")
    except OSError as error:
        raise KernelRefusedError(f"{name}: writing 1 to {target} failed: "
                                 f"{errno_name(error)}") from None
    return _describe_pending(system, _target_state(system, name))


FORCE_WARNING = ("forcing marks every task as switched without checking its stack: a task "
                 "still inside an old function may then mix old and new code, and the "
                 "module can never be removed again; only do this when the patch's author "
                 "says it is safe")


def force(system: System, name: str) -> str:
    """Force ``name``'s transition to complete; returns the tasks it skipped over."""
    patch = _require_transition(system, name, "force")
    skipped = _describe_pending(system, _target_state(system, name))
    try:
        system.write_attribute(patch / "force", "1")
    except OSError as error:
        raise KernelRefusedError(f"{name}: writing 1 to {patch / 'force'} failed: "
                                 f"{errno_name(error)}") from None
    return skipped


def _target_state(system: System, name: str) -> int:
    return 1 if system.read_attribute(system.patch_dir(name) / "enabled") == "1" else 0
