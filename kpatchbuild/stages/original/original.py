"""The original stage: the unpatched kernel tree later stages compile and link against.

Two shapes, one result (an OriginalStage):
- a Debian kernel is *prepared*, not built: Debian's source, configured with Debian's config,
  ``modules_prepare``d for Debian's release, with Debian's Module.symvers in place. Later
  stages compile only the objects a patch touches;
- a configured kernel is *built* in full, keeping kbuild's ``.*.cmd`` files, which say what
  every object was built from.
Each is keyed by everything that shapes its objects, so recipes with the same kernel target
share one stage, and a config edit makes a new one.
"""

from __future__ import annotations

import re
import shutil
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpatchbuild.base import kbuild
from kpatchbuild.base.commands import Runner, format_elapsed, run_step, say
from kpatchbuild.base.errors import BuildError, RecipeError
from kpatchbuild.base.store import Artifact, Store, content_key, file_hash
from kpatchbuild.stages.buildroot.buildroot import Toolchain
from kpatchbuild.stages.config import kconfig
from kpatchbuild.stages.fetch.source import SourceTree, no_write_through, private_tree

# Bump when the way a stage is made changes, so old stages are not taken for new ones.
STAGE_FORMAT = 3  # 3: Debian's BTF options kept (pahole); trees linked, not copied
# Where both kinds of original stage are published: a prepared Debian tree, a built kernel.
STORE_KIND = "original"
LINKER_SCRIPT_MACROS = "include/asm-generic/vmlinux.lds.h"
_SECTION_MACROS_CONDITION = ("#if defined(CONFIG_LD_DEAD_CODE_DATA_ELIMINATION) || "
                             "defined(CONFIG_LTO_CLANG)")
BUILT_OUTPUTS = ("vmlinux", "arch/x86/boot/bzImage", "Module.symvers", "System.map")


@dataclass(frozen=True)
class OriginalStage:
    """A published original tree and what it stands for."""

    kind: str  # "prepared" (Debian) or "built"; both are published as STORE_KIND
    key: str
    path: Path  # the artifact directory; the kernel tree is path / "tree"
    release: str
    built_in: Path | None = None  # where the tree was made, before it was published

    @property
    def tree(self) -> Path:
        return self.path / "tree"

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> OriginalStage:
        manifest = artifact.manifest
        built_in = manifest.get("built_in")
        return cls(manifest["stage"], artifact.key, artifact.path, manifest["release"],
                   Path(built_in) if built_in else None)


def prepared_key(source: SourceTree, config_text: str, release: str,
                 compiler: kbuild.CompilerVersion, symvers_hash: str) -> str:
    return content_key("prepared", STAGE_FORMAT, source.key, config_text, release,
                       compiler.text, kbuild.KCFLAGS, symvers_hash)


def prepare_debian_tree(store: Store, source: SourceTree, config_text: str, release: str,
                        module_symvers: Path, *, label: str,
                        toolchain: Toolchain) -> OriginalStage:
    """Debian's source, configured and prepared as Debian built ``release`` (with its
    compiler: ``toolchain``, the host's or a build root's); no kernel build."""
    compiler = toolchain.compiler
    runner = toolchain.runner
    key = prepared_key(source, config_text, release, compiler, file_hash(module_symvers))
    artifact = store.lookup(STORE_KIND, key)
    if artifact:
        return OriginalStage.from_artifact(artifact)
    log = store.log_path(f"original-{label}")
    log.unlink(missing_ok=True)
    manifest: dict[str, Any] = {"stage": "prepared", "release": release,
                                "source": source.origin,
                                "compiler": compiler.text, "kcflags": kbuild.KCFLAGS}
    with store.publishing(STORE_KIND, key, manifest) as work:
        tree = work / "tree"
        manifest["built_in"] = str(tree)
        say(f"  preparing {release} (link source, olddefconfig, modules_prepare); log: {log}")
        private_tree(source, tree)
        (tree / ".config").write_text(config_text)
        kbuild.pin_release(tree, release)
        with _source_kept(store, source, label):
            kbuild.make(tree, "olddefconfig", step=f"{label}: make olddefconfig", log=log,
                        runner=runner)
            manifest["config_changes"] = config_changes(config_text,
                                                         (tree / ".config").read_text())
            check_config_kept(manifest["config_changes"], label, log)
            kbuild.make(tree, "modules_prepare", step=f"{label}: make modules_prepare", log=log,
                        runner=runner)
        shutil.copyfile(module_symvers, tree / "Module.symvers")
        _check_release(tree, release, log, runner)
    return OriginalStage.from_artifact(store.lookup(STORE_KIND, key))  # type: ignore[arg-type]


def built_key(source: SourceTree, config_text: str, compiler: kbuild.CompilerVersion) -> str:
    return content_key("built", STAGE_FORMAT, source.key, config_text, compiler.text,
                       kbuild.KCFLAGS)


def build_kernel(store: Store, source: SourceTree, config_text: str, *,
                 label: str, toolchain: Toolchain) -> OriginalStage:
    """Build the kernel of ``config_text`` in full, keeping every ``.cmd`` record, with the
    compiler that configured it (``toolchain``: the host's or its release's build root)."""
    compiler = toolchain.compiler
    runner = toolchain.runner
    key = built_key(source, config_text, compiler)
    artifact = store.lookup(STORE_KIND, key)
    if artifact:
        return OriginalStage.from_artifact(artifact)
    log = store.log_path(f"original-{label}")
    log.unlink(missing_ok=True)
    manifest: dict[str, Any] = {"stage": "built", "source": source.origin,
                                "compiler": compiler.text, "kcflags": kbuild.KCFLAGS,
                                "config_hash": content_key(config_text)}
    with store.publishing(STORE_KIND, key, manifest) as work:
        tree = work / "tree"
        manifest["built_in"] = str(tree)
        say(f"  building {label} in full (make -j{kbuild.jobs()} all); log: {log}")
        private_tree(source, tree)
        link_function_sections_as_text(tree)
        (tree / ".config").write_text(config_text)
        started = time.monotonic()
        with _source_kept(store, source, label):
            kbuild.make(tree, "olddefconfig", step=f"{label}: make olddefconfig", log=log,
                        runner=runner)
            changed = significant_config_changes(
                config_changes(config_text, (tree / ".config").read_text()))
            if changed:
                raise BuildError(f"{label}: olddefconfig changed the resolved config "
                                 f"({', '.join(changed)}): the host's tools changed since it "
                                 f"was made; run the build again to remake it; log: {log}")
            run_step(kbuild.make_command(tree, "all"), step=f"{label}: make all", log=log,
                     runner=runner)
        missing = [name for name in BUILT_OUTPUTS if not (tree / name).is_file()]
        if missing:
            raise BuildError(f"{label}: the build did not produce {', '.join(missing)}; "
                             f"log: {log}")
        manifest["release"] = kbuild.kernelrelease(tree)
        elapsed = time.monotonic() - started
        manifest["build_seconds"] = round(elapsed, 1)
        say(f"  built {label} ({manifest['release']}) in {format_elapsed(elapsed)}")
    return OriginalStage.from_artifact(store.lookup(STORE_KIND, key))  # type: ignore[arg-type]


def _source_kept(store: Store, source: SourceTree, label: str) -> AbstractContextManager[None]:
    """Guard the unpacked source a stage links to: a build writing into it discards it."""
    return no_write_through(source.path, what=f"{label}: the kernel build",
                            on_damage=lambda: store.discard("source", source.key))


def link_function_sections_as_text(tree: Path) -> None:
    """Make vmlinux's linker script gather ``.text.<name>`` sections into ``.text``.

    The differ needs one section per function, so the kernel is built with
    -ffunction-sections. Its linker script gathers ``.text.*`` only for dead-code elimination
    or clang LTO; otherwise ld places them as orphans past ``_etext``, in memory the kernel
    frees at the end of boot, and the first call there faults forever. The macros serve only
    linker scripts, so defining them whenever a linker script is preprocessed is exact.
    """
    header = tree / LINKER_SCRIPT_MACROS
    text = header.read_text()
    if _SECTION_MACROS_CONDITION not in text:
        raise BuildError(f"{header}: this kernel's linker script macros are not the ones "
                         "kpatchbuild knows how to extend for -ffunction-sections")
    header.unlink()  # a new file, not a write through a link into the pristine source
    header.write_text(text.replace(_SECTION_MACROS_CONDITION,
                                   _SECTION_MACROS_CONDITION + " || defined(LINKER_SCRIPT)", 1))


def _check_release(tree: Path, release: str, log: Path, runner: Runner) -> None:
    reported = kbuild.kernelrelease(tree, runner)
    uts = (tree / "include/generated/utsrelease.h").read_text()
    if reported != release or f'"{release}"' not in uts:
        raise BuildError(f"prepared tree reports release '{reported}', not '{release}'; "
                         f"log: {log}")


def config_changes(before: str, after: str) -> dict[str, list[str | None]]:
    """Options olddefconfig changed in a distribution's config ("n" and unset are one)."""
    old, new = kconfig.parse_config(before), kconfig.parse_config(after)

    def value(options: dict[str, str], name: str) -> str | None:
        found = options.get(name)
        return None if found == "n" else found

    return {name: [value(old, name), value(new, name)]
            for name in sorted(set(old) | set(new)) if value(old, name) != value(new, name)}


# What olddefconfig may change in a distribution's config without changing the kernel's code
# or data layout: facts about the host's tools (their versions and abilities; the compiler
# itself is checked to be the distribution's) and module signing, which the proof does not
# use. Any other change means objects and modules built here would not match the running
# kernel: a dropped CONFIG_DEBUG_INFO_BTF_MODULES, for one, shrinks struct module, so the
# kernel would read a livepatch module's exit function from the wrong place. The compiler
# options a compiler accepts (CC_OPT_*, 6.12's CC_OPT_INLINE_MEMSET) are facts of it too.
_TOOLCHAIN_FACTS = re.compile(
    r"CONFIG_(\w+_VERSION(_TEXT)?|(CC|AS|LD|RUSTC|PAHOLE|TOOLS)_(HAS|IS|CAN|SUPPORTS?|OPT)_\w+"
    r"|BUILD_SALT|MODULE_SIG_ALL|MODULE_SIG_KEY|SYSTEM_TRUSTED_KEYS)$")

# The host package that makes an option survive olddefconfig, where one is known.
_PROVIDED_BY = {"CONFIG_DEBUG_INFO_BTF": "dwarves (pahole)",
                "CONFIG_RUST": "rustc and bindgen of the kernel's required versions"}


def significant_config_changes(changes: dict[str, list[str | None]]) -> dict[str, list]:
    """The changes that make this tree build code the running kernel was not built as."""
    return {name: change for name, change in changes.items()
            if not _TOOLCHAIN_FACTS.match(name)}


def check_config_kept(changes: dict[str, list[str | None]], label: str, log: Path) -> None:
    """Refuse a prepared tree whose config is not the distribution's, naming what moved."""
    significant = significant_config_changes(changes)
    if not significant:
        return
    shown = ", ".join(f"{name} ({old or 'unset'} -> {new or 'unset'})"
                      for name, (old, new) in list(significant.items())[:4])
    more = f" and {len(significant) - 4} more" if len(significant) > 4 else ""
    hints = sorted({package for name in significant for prefix, package in _PROVIDED_BY.items()
                    if name.startswith(prefix)})
    remedy = (f"install {' and '.join(hints)} and run again" if hints else
              "the host's tools cannot configure this kernel as the distribution did")
    raise BuildError(f"{label}: make olddefconfig changed the distribution's config: {shown}"
                     f"{more}; modules built from it would not match the running kernel: "
                     f"{remedy}; log: {log}")


def check_livepatch_config(config_text: str, label: str) -> None:
    """A distribution kernel without CONFIG_LIVEPATCH cannot take a livepatch: say so early."""
    options = kconfig.parse_config(config_text)
    missing = [o.name for o in kconfig.LIVEPATCH_REQUIREMENTS
               if o.name != "CONFIG_DEBUG_KERNEL" and not kconfig.is_on(options.get(o.name))]
    if missing:
        raise RecipeError(f"{label}: this kernel's config lacks {', '.join(missing)}; it cannot "
                          "load livepatch modules: choose another kernel")
