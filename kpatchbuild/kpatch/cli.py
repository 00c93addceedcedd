"""The ``kpatch`` command line: argparse subcommands over :mod:`livepatch` and :mod:`install`.

Output is for people by default and JSON with ``--json`` on ``list`` and ``info``; every
failure is one ``kpatch: error: ...`` line on stderr and an exit code from :mod:`errors`.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kpatchbuild.base.errors import KpbError
from kpatchbuild.kpatch import install as installing
from kpatchbuild.kpatch import livepatch, signing
from kpatchbuild.kpatch.errors import KpatchError, exit_codes_text
from kpatchbuild.kpatch.modfile import ModuleFile, PatchedFunction, read_module
from kpatchbuild.kpatch.system import ROOT_ENV, System
from kpatchbuild.kpatch.trust import kernel_release, module_name

PROG = "kpatch"


def _say(message: str) -> None:
    print(message, flush=True)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


# --- subcommands ---

def cmd_load(system: System, args: argparse.Namespace) -> int:
    if args.all == bool(args.module):
        raise KpatchError("kpatch load: give a MODULE.ko or NAME, or --all (not both)")
    if not args.all:
        with installing.resolve_module(system, args.module) as module:
            installing.check_sole_replace_mode(system, module)
            result = livepatch.load(system, module, timeout=args.timeout, keep=args.keep,
                                    report=_say)
        _say(f"loaded {module.name}: patch enabled, transition done in {result.seconds:.1f} s")
        return 0
    return load_all(system, args)


def load_all(system: System, args: argparse.Namespace) -> int:
    """Every module installed for the running kernel, as kpatch.service runs it at boot."""
    livepatch.require_root(system, "load")
    livepatch.require_livepatch(system)
    release = system.release()
    modules = [i for i in installing.installed_modules(system) if i.release == release]
    if not modules:
        _say(f"no patches installed for {release}")
        return 0
    failures: list[KpbError] = []

    def failed(error: KpbError) -> None:
        # At boot one bad module must not keep the others out: report it, go on.
        print(f"{PROG}: error: {error.message}", file=sys.stderr, flush=True)
        failures.append(error)

    replacing = installing.replace_mode_modules(system, release)
    if len(replacing) > 1:
        failed(KpatchError(
            f"several atomic-replace patches are installed for {release}: "
            f"{', '.join(installing.describe_installed(i) for i in replacing)}; the one loaded "
            "last would retire the others, so none of them is loaded; uninstall all but one "
            "(replace-mode patches are cumulative)"))
        modules = [i for i in modules if i not in replacing]
    for installed in modules:
        if system.loaded_module(installed.name) is not None:
            _say(f"{installed.name}: already loaded")
            continue
        try:
            with installing.read_installed(system, installed) as module:
                result = livepatch.load(system, module, timeout=args.timeout, keep=args.keep)
            _say(f"loaded {module.name}: patch enabled, transition done in "
                 f"{result.seconds:.1f} s")
        except KpbError as error:
            failed(error)
    return failures[0].exit_code if failures else 0


def cmd_unload(system: System, args: argparse.Namespace) -> int:
    if args.all == bool(args.name):
        raise KpatchError("kpatch unload: give a NAME, or --all (not both)")
    livepatch.require_root(system, "unload")
    livepatch.require_livepatch(system)
    names = livepatch.unload_order(system) if args.all else \
        [module_name(args.name, "kpatch unload")]
    if args.all and not names:
        _say("no livepatch modules loaded")
    for name in names:
        livepatch.unload(system, name, timeout=args.timeout, keep=args.keep, report=_say)
        _say(f"unloaded {name}")
    return 0


def cmd_replace(system: System, args: argparse.Namespace) -> int:
    with installing.resolve_module(system, args.module) as module:
        installing.check_sole_replace_mode(system, module)
        removed = livepatch.replace(system, module, timeout=args.timeout, keep=args.keep,
                                    report=_say)
    replaced = f"; replaced and removed {', '.join(removed)}" if removed else \
        "; it replaced no loaded patch"
    _say(f"loaded {module.name}: patch enabled, transition done{replaced}")
    return 0


def cmd_install(system: System, args: argparse.Namespace) -> int:
    if "/" not in args.module and not args.module.endswith(".ko"):
        raise KpatchError(f"kpatch install: {args.module}: give the module file's path "
                          f"(./{args.module}.ko): a bare name means an installed patch")
    release = args.kernel or system.release()
    with read_module(Path(args.module)) as module:
        written = installing.install(system, module, release)
    for path in written:
        _say(f"wrote {path}")
    when = "at boot" if release == system.release() else f"when {release} boots"
    _say(f"installed {module.name} for {release}: kpatch.service loads it {when}")
    return 0


def cmd_uninstall(system: System, args: argparse.Namespace) -> int:
    module_name(args.name, "kpatch uninstall")
    release = kernel_release(args.kernel or system.release(), "kpatch uninstall -k")
    for path in installing.uninstall(system, args.name, release):
        _say(f"removed {path}")
    _say(f"uninstalled {args.name} for {release}"
         + (" (still loaded: kpatch unload to remove it now)"
            if release == system.release() and system.loaded_module(args.name) else ""))
    return 0


def list_state(system: System) -> dict[str, Any]:
    """Loaded patches and installed modules, as ``list --json`` prints them."""
    release = system.release()
    packages = {(item.release, item.name): installed_package(item)
                for item in installing.installed_modules(system)}
    loaded = []
    for name in livepatch.unload_order(system):
        patch = system.patch_dir(name)
        present = patch.is_dir()
        loaded.append({
            "name": name,
            # A module whose patch was replaced or disabled stays loaded without sysfs.
            "patch": present,
            "enabled": present and system.read_attribute(patch / "enabled") == "1",
            "transition": present and livepatch.in_transition(system, name),
            # The package whose module of that name is installed for this kernel, if any.
            "package": packages.get((release, name)),
        })
    installed: dict[str, list[str]] = {}
    for item in installing.installed_modules(system):
        installed.setdefault(item.release, []).append(item.name)
    return {"kernel": {"release": release, "build_id": system.build_id(),
                       "livepatch": system.livepatch_dir.is_dir()},
            "loaded": loaded, "installed": installed}


def installed_package(item: installing.Installed) -> str | None:
    """``kpatch-patch-x 2+2026...``: the package that installed ``item``, if one did."""
    try:
        metadata = installing.package_metadata(item.path)
    except KpatchError:
        return None
    if not metadata or "package" not in metadata:
        return None
    return f"{metadata['package']} {metadata.get('version', '')}".strip()


def cmd_list(system: System, args: argparse.Namespace) -> int:
    state = list_state(system)
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    kernel = state["kernel"]
    _say(f"running kernel: {kernel['release']}"
         + ("" if kernel["livepatch"] else " (no livepatch support)"))
    _say("loaded patches:")
    for patch in state["loaded"]:
        if not patch["patch"]:
            status = "module loaded, patch inactive (replaced or disabled)"
        else:
            status = ("enabled" if patch["enabled"] else "disabled") + \
                (", in transition" if patch["transition"] else ", transition done")
        if patch["package"]:
            status += f" (from {patch['package']})"
        _say(f"  {patch['name']:<32} {status}")
    if not state["loaded"]:
        _say("  (none)")
    _say("installed patches:")
    loaded_names = {p["name"] for p in state["loaded"]}
    for release, names in state["installed"].items():
        running = " (running)" if release == kernel["release"] else ""
        _say(f"  {release}{running}:")
        for name in names:
            mark = "loaded" if running and name in loaded_names else ""
            _say(f"    {name:<30} {mark}".rstrip())
    if not state["installed"]:
        _say("  (none)")
    return 0


def sysfs_functions(system: System, name: str) -> list[PatchedFunction]:
    """The functions a loaded patch lists under /sys/kernel/livepatch/<name>/<object>/."""
    functions = []
    for obj in sorted(p for p in system.patch_dir(name).iterdir() if p.is_dir()):
        for entry in sorted(p for p in obj.iterdir() if p.is_dir()):
            function, _, sympos = entry.name.rpartition(",")
            functions.append(PatchedFunction(obj.name, function or entry.name,
                                             int(sympos) if sympos.isdigit() else 0))
    return functions


def info_state(system: System, spec: str) -> dict[str, Any]:
    """A module's metadata and patched functions, from sysfs when loaded, else its file."""
    module: ModuleFile | None = None
    if spec.endswith(".ko") or "/" in spec:
        module = read_module(Path(spec))
        name = module.name
    else:
        name = module_name(spec, "kpatch info")
        candidate = installing.installed_path(system, system.release(), name)
        if candidate.is_file():
            module = read_module(candidate)
    loaded = system.patch_dir(name).is_dir()
    if module is None and not loaded:
        if system.loaded_module(name) is None:
            raise KpatchError(f"{spec}: no such module file, loaded patch or module installed "
                              f"for {system.release()}")
    result: dict[str, Any] = {"name": name, "file": str(module.path) if module else None}
    if module:
        result.update(vermagic=module.vermagic, livepatch=module.livepatch,
                      release=module.release, build_id=module.build_id,
                      description=module.description, replace=module.replace)
    result["package"] = installing.package_metadata(module.path) if module else None
    checks = signing.kernel_checks(system)
    result["kernel_checks_signatures"] = {"lockdown": checks.lockdown,
                                          "sig_enforce": checks.enforced}
    result["signature"] = None
    if module and module.signature:
        certificate = signing.certificate_of(system, result["package"])
        result["signature"] = {
            "signer": module.signature.signer, "hash": module.signature.hash,
            "serial": module.signature.serial,
            "certificate": signing.shown_certificate(system, certificate),
            "trusted": signing.signer_trusted(system, module, certificate)}
    result["loaded"] = system.loaded_module(name) is not None
    if loaded:
        patch = system.patch_dir(name)
        result["enabled"] = system.read_attribute(patch / "enabled") == "1"
        result["transition"] = livepatch.in_transition(system, name)
        functions, source = sysfs_functions(system, name), "sysfs"
    else:
        functions, source = list(module.functions) if module else [], "file"
    result["functions_from"] = source
    # Positions as sysfs shows them (a unique name's 0 reads 1), whichever the source.
    result["functions"] = [{"object": f.object, "function": f.function,
                            "sympos": f.shown_sympos} for f in functions]
    return result


def cmd_info(system: System, args: argparse.Namespace) -> int:
    state = info_state(system, args.module)
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    rows = [("name", state["name"]), ("file", state["file"] or "(none known)")]
    if state["file"]:
        built = state["release"] or state["vermagic"].split(" ", 1)[0]
        if state["build_id"]:
            built += f" (build id {state['build_id']})"
        replace = {True: "yes (atomic replace)", False: "no (stacks)", None: "unknown"}
        rows += [("description", state["description"]), ("built for", built),
                 ("vermagic", state["vermagic"]),
                 ("livepatch", "yes" if state["livepatch"] else "NO: not a livepatch module"),
                 ("replace", replace[state["replace"]])]
    package = state["package"]
    if package:
        rows += [("package", f"{package['package']} {package['version']}"),
                 ("recipe", package["recipe"])]
        rows += [("patch", f"{p['file']} (sha256 {p['sha256'][:16]})")
                 for p in package["patches"]]
    rows += _signature_rows(state)
    if "enabled" in state:
        status = ("enabled" if state["enabled"] else "disabled") + \
            (", in transition" if state["transition"] else ", transition done")
    else:
        status = "loaded, patch inactive" if state["loaded"] else "not loaded"
    rows.append(("state", status))
    for key, value in rows:
        _say(f"{key + ':':<13}{value}")
    _say(f"patched functions (from {state['functions_from']}):")
    for function in state["functions"]:
        _say(f"  {function['object']}: {function['function']},{function['sympos']}")
    if not state["functions"]:
        _say("  (none recorded)")
    return 0


def _signature_rows(state: dict[str, Any]) -> list[tuple[str, str]]:
    checks = state["kernel_checks_signatures"]
    lockdown = checks["lockdown"] or "unknown (no securityfs)"
    enforce = {True: "module.sig_enforce=1", False: "no module.sig_enforce",
               None: "the kernel checks no signatures (no CONFIG_MODULE_SIG)"}[
        checks["sig_enforce"]]
    rows = [("kernel", f"lockdown: {lockdown}; {enforce}")]
    signature = state["signature"]
    if not state["file"]:
        return rows
    if signature is None:
        rows.append(("signature", "unsigned: a kernel in lockdown (Secure Boot) refuses it"))
        return rows
    rows.append(("signed by", f"{signature['signer']} ({signature['hash']}, serial "
                              f"{signature['serial']})"))
    if signature["certificate"]:
        rows.append(("certificate", f"{signature['certificate']} (mokutil --import it to "
                                    "enrol the signer)"))
    rows.append(("trusted", signature["trusted"]))
    return rows


def cmd_signal(system: System, args: argparse.Namespace) -> int:
    pending = livepatch.signal(system, module_name(args.name, "kpatch signal"))
    _say(f"signalled the tasks blocking {args.name}'s transition; {pending}")
    return 0


def cmd_force(system: System, args: argparse.Namespace) -> int:
    name = module_name(args.name, "kpatch force")
    _warn(livepatch.FORCE_WARNING)
    skipped = livepatch.force(system, name)
    _say(f"forced {args.name}'s transition to complete ({skipped} before forcing)")
    return 0


# --- parser ---

def _timeout_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=livepatch.DEFAULT_TIMEOUT,
                        metavar="SECONDS",
                        help="how long to wait for the livepatch transition "
                             f"(default {livepatch.DEFAULT_TIMEOUT:g})")
    parser.add_argument("--keep", action="store_true",
                        help="if the transition does not finish in time, leave it running "
                             "instead of rolling it back")


SECURE_BOOT = (
    "A kernel in lockdown (Secure Boot) or booted with module.sig_enforce=1 loads only "
    "modules signed by a key it trusts. kpatch info MODULE names a module's signer, its "
    "certificate and whether the kernel trusts it. A patch package ships its signer's "
    "certificate in /usr/share/kpatch/certs/; enrol it once as a machine-owner key: run "
    "mokutil --import /usr/share/kpatch/certs/<package>.der (it asks for a one-time "
    "password), reboot, and in MokManager choose \"Enroll MOK\" and give that password. "
    "Until then a refused patch stays installed and nothing changes (exit code 8): kpatch "
    "load it, or reboot, once the key is enrolled.")
SECURE_BOOT_TEXT = "Secure Boot:\n" + textwrap.fill(
    SECURE_BOOT, 78, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage livepatch modules on the running kernel: load, replace and "
                    "unload them, install them to be loaded at boot, inspect them.",
        epilog=f"{exit_codes_text()}\n\nmodules:\n  an argument with a '/' or ending in .ko is a "
               "module file; any other is the name\n  of a patch installed for the running "
               "kernel (or loaded), never a file of the current directory\n\n"
               f"{SECURE_BOOT_TEXT}\n\n"
               f"environment:\n  {ROOT_ENV}  a directory standing for / (sysfs, /proc, "
               "/var/lib/kpatch, /etc), for\n               install, uninstall, list and info "
               "on an image; no module is inserted or removed under it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Any, summary: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=summary, description=summary,
                                 epilog=exit_codes_text(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        command.set_defaults(func=func)
        return command

    load = add("load", cmd_load, "check a livepatch module against the running kernel, "
               "insert it and wait for its transition; --all loads every module installed "
               "for the running kernel (as kpatch.service does at boot)")
    load.add_argument("module", nargs="?", metavar="MODULE.ko|NAME",
                      help="a module file (a path with '/' or ending in .ko), or the name of "
                           "a module installed for the running kernel")
    load.add_argument("--all", action="store_true", help="every installed module")
    _timeout_options(load)

    unload = add("unload", cmd_unload, "disable a patch, wait for the transition, remove "
                 "its module; --all does so for every loaded livepatch module, newest first")
    unload.add_argument("name", nargs="?", metavar="NAME")
    unload.add_argument("--all", action="store_true", help="every loaded livepatch module")
    _timeout_options(unload)

    replace = add("replace", cmd_replace, "load an atomic-replace module and remove the "
                  "modules of the patches it replaced")
    replace.add_argument("module", metavar="MODULE.ko|NAME")
    _timeout_options(replace)

    install = add("install", cmd_install, "keep a module under /var/lib/kpatch/<release>/ "
                  "and load it at boot (kpatch.service, and an initramfs-tools hook where "
                  "initramfs-tools is used); does not load it now")
    install.add_argument("module", metavar="MODULE.ko")
    install.add_argument("-k", "--kernel", metavar="RELEASE",
                         help="install for this kernel release (default: the running one), "
                              "e.g. to stage a patch for the next boot")

    uninstall = add("uninstall", cmd_uninstall, "forget an installed module (the boot "
                    "hooks go with the last one); does not unload it")
    uninstall.add_argument("name", metavar="NAME")
    uninstall.add_argument("-k", "--kernel", metavar="RELEASE",
                           help="the kernel release it was installed for (default: running)")

    listing = add("list", cmd_list, "loaded patches (enabled, in transition) and installed "
                  "modules per kernel release")
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    info = add("info", cmd_info, "a module's metadata and the functions it patches (from "
               "sysfs when loaded, from the module file otherwise)")
    info.add_argument("module", metavar="NAME|MODULE.ko")
    info.add_argument("--json", action="store_true", help="machine-readable output")

    signal = add("signal", cmd_signal, "signal the tasks that keep a transition from "
                 "finishing (writes the patch's signal file where the kernel has one)")
    signal.add_argument("name", metavar="NAME")

    force = add("force", cmd_force, "force a stuck transition to complete (dangerous: see "
                "the warning it prints; the module can never be removed afterwards)")
    force.add_argument("name", metavar="NAME")
    return parser


def main(argv: Sequence[str] | None = None, system: System | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(system or System.from_environment(), args))
    except KpbError as error:
        print(f"{PROG}: error: {error.message}", file=sys.stderr, flush=True)
        return error.exit_code
    except OSError as error:
        # A file that vanished or could not be written mid-way (sysfs entries come and go).
        where = f"{error.filename}: " if error.filename else ""
        print(f"{PROG}: error: {where}{error.strerror or error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
