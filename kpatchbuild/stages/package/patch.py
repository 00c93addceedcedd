"""A ``kpatch-patch-<recipe>`` package: one recipe's module for every kernel release of its
matrix, and the maintainer scripts that load it on the running system.

Signed modules bring their signer's certificate, ``/usr/share/kpatch/certs/<package>.der``
(DER, as ``mokutil --import`` takes it), named in each module's metadata.

The modules are installed where ``kpatch install`` puts them, ``/var/lib/kpatch/<release>/
<module>.ko``, owned by the package (an upgrade replaces them, a purge leaves nothing), each
with ``<module>.json`` beside it: the package, version, recipe, patches with their sha256
and the functions changed for that release, which ``kpatch info`` shows. So a kernel
installed but not yet booted has its patch waiting: kpatch.service loads it when it boots.

The scripts, for the running kernel only:

- postinst (configure): ``/usr/sbin/kpatch replace`` (or ``kpatch load`` for a module built with
  ``replace: false``) of the release's module, when the package has one: one transition
  from the older patch to this one, no window without either; a failure (the transition
  timed out and was rolled back, the kernel refused) fails the configure step with kpatch's
  message, and the older patch stays loaded. Without a module for the running kernel it
  says so and loads nothing. kpatch refuses it while another atomic-replace module is
  installed for the kernel, naming it. A kernel that does not trust the modules' signer
  (lockdown under Secure Boot) is the one refusal that does not fail the step: kpatch
  names the certificate to enrol, the package stays installed, and ``kpatch load`` or the
  next boot loads the patch once the key is enrolled.
- prerm (remove, not upgrade): ``kpatch unload``; if the patch cannot be disabled the
  removal stops, the patch still applied.

A replace-mode package provides and conflicts with ``kpatch-replace-<release>`` for each
release it carries: two of them for one kernel would retire each other's patch (replace-mode
patches are cumulative: one patch holds every fix), so dpkg keeps only one. Each module
has its ``<module>.manifest`` (sha256, build id, replace mode), which both boot loaders check.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import kpatchbuild
from kpatchbuild.base.errors import RecipeError
from kpatchbuild.base.store import sha256_file
from kpatchbuild.kpatch import trust as kpatch_trust
from kpatchbuild.kpatch.errors import UntrustedSignatureError
from kpatchbuild.kpatch.install import INSTALL_DIR, MANIFEST_SUFFIX, Manifest
from kpatchbuild.kpatch.modfile import read_module
from kpatchbuild.kpatch.signing import CERTIFICATES
from kpatchbuild.stages.package import tool
from kpatchbuild.stages.package.deb import DebSpec, File

PREFIX = "kpatch-patch-"


def kpatch_dependency(tool_version: str) -> str:
    """The kpatch command of this project's series (``0.1.0`` -> ``>= 0.1.0, << 0.2~``).

    Debian has a ``kpatch`` package of its own (upstream kpatch, 0.9.x) with other
    subcommands: a bare ``Depends: kpatch`` would let it stand in, and the maintainer
    scripts' ``kpatch replace`` would fail. With the range, apt takes ours or refuses."""
    major, minor = (int(part) for part in tool_version.split(".")[:2])
    return f"kpatch (>= {tool_version}), kpatch (<< {major}.{minor + 1}~)"


# Debian's package names: lower case letters, digits, + - . (policy 5.6.1).
_DEBIAN_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


@dataclass(frozen=True)
class ReleaseModule:
    """The recipe's module for one kernel release, as proven, and who signed it."""

    release: str
    module: Path
    functions: tuple[str, ...]
    signer: str | None = None  # None: unsigned
    hash: str | None = None
    certificate: bytes | None = None  # the signer's certificate (DER)

    @cached_property
    def sha256(self) -> str:
        """Read once: the package's content, the name check and the metadata all use it."""
        return sha256_file(self.module)


@dataclass(frozen=True)
class PatchFile:
    name: str
    sha256: str


@dataclass(frozen=True)
class PatchPackage:
    """What a recipe's package carries: the inputs, without the version it is given."""

    recipe: str
    module: str
    description: str
    replace: bool
    patches: tuple[PatchFile, ...]
    releases: tuple[ReleaseModule, ...]

    @property
    def package(self) -> str:
        return package_name(self.recipe)

    @property
    def certificate(self) -> bytes | None:
        """The signer's certificate, which every module shares (checked when the package
        is put together); None: the modules are unsigned."""
        return self.releases[0].certificate if self.releases else None

    @property
    def certificate_path(self) -> str:
        return f"{CERTIFICATES}/{self.package}.der"

    def metadata(self, version: str, release: ReleaseModule) -> dict[str, object]:
        signature = None if release.signer is None else {
            "signer": release.signer, "hash": release.hash,
            "certificate": self.certificate_path}
        return {"format": 1, "package": self.package, "version": version,
                "recipe": self.recipe, "module": self.module,
                "description": self.description,
                "patches": [{"file": p.name, "sha256": p.sha256} for p in self.patches],
                "release": release.release, "functions": list(release.functions),
                "releases": [r.release for r in self.releases], "signature": signature}


def package_name(recipe: str) -> str:
    name = f"{PREFIX}{recipe}"
    if not _DEBIAN_NAME.match(name):
        raise RecipeError(f"recipe {recipe}: '{name}' is not a Debian package name (lower case "
                          "letters, digits, '+', '-', '.'): rename the recipe's directory")
    return name


@dataclass(frozen=True)
class ScriptPlaces:
    """Where the maintainer scripts find the system. Fixed in a package (``/`` and
    ``/usr/sbin/kpatch``); a test renders them for a tree and a fake kpatch. Never read
    from the environment: dpkg runs them as root."""

    root: str = ""
    kpatch: str = tool.COMMAND

    @property
    def shell_root(self) -> str:
        """The root as a prefix in the scripts: nothing for ``/``."""
        return shlex.quote(self.root) if self.root else ""


def _postinst(item: PatchPackage, places: ScriptPlaces) -> str:
    action = "replace" if item.replace else "load"
    releases = " ".join(r.release for r in item.releases)
    root = places.shell_root
    return f"""#!/bin/sh
# {item.package}: load the patch for the running kernel ({action}).
set -e
# kpatch acts on this system: a root override is for images, never for what dpkg runs.
unset KPATCH_ROOT
MODULE={shlex.quote(item.module)}
case "$1" in
configure)
    running=$(cat {root}/proc/sys/kernel/osrelease)
    module={root}"{INSTALL_DIR}/$running/$MODULE.ko"
    if [ ! -e "$module" ]; then
        echo "{item.package}: no module for the running kernel $running (this package" \\
             "carries {releases}): nothing loaded now; kpatch.service loads it when" \\
             "one of those kernels boots"
    elif [ ! -d {root}/sys/kernel/livepatch ]; then
        echo "{item.package}: the running kernel has no /sys/kernel/livepatch (not" \\
             "booted in it?): nothing loaded now; kpatch.service loads it at boot"
    elif [ -d {root}"/sys/kernel/livepatch/$MODULE" ]; then
        echo "{item.package}: $MODULE is loaded already"
    else
        # Exit 8: the kernel does not trust the signer (kpatch said which certificate to
        # enrol). Nothing changed: the package stays installed, and kpatch load or the
        # next boot loads the patch once the certificate is enrolled.
        {shlex.quote(places.kpatch)} {action} "$module" || {{
            status=$?
            [ "$status" -eq {UntrustedSignatureError.exit_code} ] || exit "$status"
            echo "{item.package}: installed, not loaded: the running kernel does not" \
                 "trust its signer; enrol the certificate as said above, then" \
                 "kpatch load $MODULE (or reboot)"
        }}
    fi
    ;;
esac
exit 0
"""


def _prerm(item: PatchPackage, places: ScriptPlaces) -> str:
    root = places.shell_root
    return f"""#!/bin/sh
# {item.package}: unload the patch when the package goes (an upgrade replaces it instead).
set -e
unset KPATCH_ROOT
MODULE={shlex.quote(item.module)}
case "$1" in
remove|deconfigure)
    if [ -d {root}"/sys/module/$MODULE" ]; then
        {shlex.quote(places.kpatch)} unload "$MODULE"
    fi
    ;;
esac
exit 0
"""


def maintainer_scripts(item: PatchPackage, places: ScriptPlaces = ScriptPlaces()
                       ) -> dict[str, str]:
    return {"postinst": _postinst(item, places), "prerm": _prerm(item, places)}


def replace_slot(release: str) -> str:
    """The virtual package every replace-mode patch package for ``release`` provides and
    conflicts with: two of them would retire each other's patch (the one loaded last wins),
    so dpkg keeps one. Debian's package-name characters only."""
    return "kpatch-replace-" + re.sub(r"[^a-z0-9+.-]", "-", release.lower())


def spec(item: PatchPackage, version: str) -> DebSpec:
    # Both become paths and script text on the users' machines.
    kpatch_trust.module_name(item.module, f"recipe {item.recipe}: module")
    files: dict[str, File] = {}
    for release in item.releases:
        kpatch_trust.kernel_release(release.release, f"recipe {item.recipe}: kernel release")
        where = f"{INSTALL_DIR}/{release.release}/{item.module}"
        with read_module(release.module) as module:
            data = module.content()
            manifest = Manifest.of(module)
        files[f"{where}.ko"] = File(data)
        files[f"{where}{MANIFEST_SUFFIX}"] = File(manifest.text().encode())
        files[f"{where}.json"] = File(
            (json.dumps(item.metadata(version, release), indent=2) + "\n").encode())
    # Policy prefers PATH's commands in maintainer scripts; these run as root and must run
    # the kpatch this package depends on, whatever PATH dpkg was started with.
    files[f"/usr/share/lintian/overrides/{item.package}"] = File(
        f"{item.package}: command-with-path-in-maintainer-script {tool.COMMAND} *\n".encode())
    if item.certificate is not None:
        files[item.certificate_path] = File(item.certificate)
    lines = [f"{r.release}: {', '.join(r.functions) or 'no function changed'}"
             for r in item.releases]
    description = (f"{item.description or 'A kernel livepatch'}. Built by kpatchbuild from "
                   f"the recipe {item.recipe} ({', '.join(p.name for p in item.patches)}).\n\n"
                   f"It carries the livepatch module {item.module} for "
                   f"{len(item.releases)} kernel release(s); installing it loads the patch "
                   "into the running kernel at once, and kpatch.service loads it at every "
                   "boot of a kernel it has a module for.\n\n"
                   "Changed functions: " + "; ".join(lines) + ".\n\n" + _signing_text(item))
    slots = tuple(replace_slot(r.release) for r in item.releases) if item.replace else ()
    return DebSpec(
        package=item.package, version=version, architecture="amd64",
        summary=_summary(item), description=description, section="kernel",
        depends=(kpatch_dependency(kpatchbuild.__version__),), files=files,
        provides=slots, conflicts=slots, scripts=maintainer_scripts(item),
        changes=(f"{item.module} for {', '.join(r.release for r in item.releases)}.",
                 *(f"{p.name} (sha256 {p.sha256})" for p in item.patches)))


def _signing_text(item: PatchPackage) -> str:
    signer = item.releases[0].signer if item.releases else None
    if signer is None:
        return ("Its modules are unsigned: a kernel in lockdown (Secure Boot) refuses "
                "them.")
    return (f"Its modules are signed by '{signer}'. A kernel in lockdown (Secure Boot) "
            "loads them once that key is trusted: enrol the certificate as a machine-owner "
            f"key with mokutil --import {item.certificate_path}, reboot and confirm the "
            "enrolment in MokManager. Until then the patch stays installed but not loaded, "
            "and kpatch load (or the next boot) loads it once the key is enrolled.")


def _summary(item: PatchPackage) -> str:
    """Debian's synopsis: one line, at most 80 characters."""
    text = f"kernel livepatch: {item.description}".rstrip(".")
    return text if item.description and len(text) <= 80 else f"kernel livepatch {item.recipe}"


def content(item: PatchPackage) -> list[object]:
    """What decides whether a package changed: everything but its version."""
    return [item.recipe, item.module, item.description, item.replace,
            [(p.name, p.sha256) for p in item.patches],
            [(r.release, r.sha256, list(r.functions)) for r in item.releases],
            hashlib.sha256(item.certificate).hexdigest() if item.certificate else None]


def modules_by_release(item: PatchPackage) -> dict[str, tuple[str, str]]:
    """release -> (module name, sha256): what an upgrade must not keep the name of while
    changing the bytes (the kernel cannot replace a loaded patch by one of its own name)."""
    return {r.release: (item.module, r.sha256) for r in item.releases}
