"""The patched stage: which objects a recipe's patches change, compiled before and after.

Objects are compiled in a *workspace*: a private, writable copy of the original stage made
once per stage (the stage itself is never written to). For each object the touched files are
given the wanted content (original or patched), and the object is compiled by replaying the
command kbuild recorded for it in its ``.cmd`` file (objtool included), or, the first time,
by kbuild's single-target ``make path/file.o``; never a full-tree make.

A compiled object is cached under (original stage, object, contents of every touched file):
the stage fixes everything else the object is built from, so reverting an edit, or two
recipes with the same edit, is a cache hit with no compiler run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import xxhash

from kpatchbuild.base import kbuild, locks
from kpatchbuild.base.commands import HOST, Runner, run_step, say
from kpatchbuild.base.errors import BuildError, RecipeError
from kpatchbuild.base.store import PROJECT_ROOT, Store, content_key, write_atomically
from kpatchbuild.stages.fetch.source import link_tree, no_write_through
from kpatchbuild.stages.original.original import STORE_KIND, OriginalStage
from kpatchbuild.stages.patched import symversions
from kpatchbuild.stages.patched.header_index import HeaderIndex, build_index, load_index
from kpatchbuild.stages.patches.patching import apply_patches

# Code that runs outside the kernel proper, or before livepatch can exist, can't be patched.
NOT_LIVE_PATCHABLE = ("arch/x86/boot/", "arch/x86/realmode/", "arch/x86/entry/vdso/",
                      "arch/x86/purgatory/", "init/", "usr/", "firmware/")
NOT_BUILT = ("Documentation/", "scripts/", "tools/", "samples/", "LICENSES/")
_MODNAME = re.compile(r"-DKBUILD_MODNAME=['\"]*([A-Za-z0-9_]+)")


@dataclass(frozen=True)
class ObjectPair:
    """One object a patch changes: where it links and its two builds."""

    object: str  # path in the tree: fs/proc/cmdline.o
    target: str  # "vmlinux", or the name of the module it links into
    original: str  # path of the object compiled from the original sources
    patched: str
    identical: bool  # same bytes: the patch does not change this object's code
    # Why the patch cannot be live-patched though its code may be the same: the versions
    # (CRCs) of symbols this object exports change (see symversions).
    exports_changed: str = ""

    def to_json(self) -> dict:
        return asdict(self)


class Workspace:
    """A writable tree of one original stage, where single objects are compiled.

    Made once per stage: its pristine sources hardlinked, the files the stage's own build
    generated copied (see :func:`kpatchbuild.stages.fetch.source.link_tree`).
    """

    def __init__(self, store: Store, stage: OriginalStage, runner: Runner = HOST) -> None:
        self.store = store
        self.stage = stage
        self.runner = runner  # where its compiles run: the host, or the target's build root
        self.root = store.root / "patched-workspace" / stage.key
        self.tree = self.root / "tree"
        self._index: HeaderIndex | None = None

    def header_index(self, *, build: bool) -> HeaderIndex | None:
        """A Debian stage's header index (made now with ``build``), read once when needed:
        it knows each object's includes and command (a 25 MB file for Debian's 6.1)."""
        if self._index is None and self.stage.kind == "prepared":
            self._index = (build_index(self.store, self.stage, label=self.stage.release,
                                       runner=self.runner)
                           if build else load_index(self.store, self.stage))
        return self._index

    def ensure(self) -> None:
        """Link the stage once; the tree appears whole (one rename) or not at all."""
        if self.tree.is_dir():
            return
        # One maker per stage: two cells of one kernel (doit -n 2) both reach here first.
        with locks.exclusive(self.store.root / "locks" / f"workspace-{self.stage.key}.lock"):
            if self.tree.is_dir():
                return
            say(f"  making a compile workspace for {self.stage.release} (linking its sources)")
            temp = self.store.tmp / \
                f"workspace-{self.stage.key}-{threading.get_ident()}-{os.getpid()}"
            shutil.rmtree(temp, ignore_errors=True)
            try:
                link_tree(self.stage.tree, temp / "tree", copy_unshared=True,
                          built_in=self.stage.built_in, lives_at=self.tree)
                self.root.mkdir(parents=True, exist_ok=True)
                os.rename(temp / "tree", self.tree)
            finally:
                shutil.rmtree(temp, ignore_errors=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The workspace, whole, for one compiler at a time: compiles rewrite its sources."""
        self.ensure()
        with locks.exclusive(self.root / "lock"):
            yield

    @property
    def _edited_record(self) -> Path:
        return self.root / "edited.json"

    def _edited(self) -> set[str]:
        if not self._edited_record.is_file():
            return set()
        return set(json.loads(self._edited_record.read_text()))

    def set_contents(self, contents: dict[str, bytes]) -> None:
        """Give each file the wanted bytes, every other file its original ones.

        Files an earlier compile edited (and a killed run may have left edited) are put back
        from the stage first, so an object never sees another recipe's patch. The record of
        edited files is written before the edits, so a crash between the two leaves it
        naming too much, never too little.
        """
        edited = self._edited()
        write_atomically(self._edited_record, json.dumps(sorted(edited | set(contents))))
        for rel in sorted(edited - set(contents)):
            self._write(rel, (self.stage.tree / rel).read_bytes()
                        if (self.stage.tree / rel).is_file() else None)
        for rel, data in contents.items():
            self._write(rel, data)

    def _write(self, rel: str, data: bytes | None) -> None:
        """A rewrite is a new inode and a new mtime, so kbuild sees it; None removes the file."""
        path = self.tree / rel
        if data is None:
            path.unlink(missing_ok=True)
            return
        if path.is_file() and path.read_bytes() == data:
            return
        path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def discard(self) -> None:
        """Drop this workspace and its stage from the cache: a make wrote into both."""
        self.store.discard(STORE_KIND, self.stage.key)
        shutil.rmtree(self.root, ignore_errors=True)

    def compile(self, obj: str, log: Path) -> Path:
        """Compile ``obj`` from the workspace's current sources and return its path."""
        output = self.tree / obj
        # The stage's object and its dependency file are hardlinked here: the compiler would
        # truncate and rewrite them in place, through to the stage.
        output.unlink(missing_ok=True)
        output.with_name(f".{output.name}.d").unlink(missing_ok=True)
        recorded = self.recorded(obj)
        if recorded is not None:
            command = recorded.shell_command
            run_step(["sh", "-c", command], step=f"compile {obj}", log=log, cwd=self.tree,
                     runner=self.runner)
        else:
            with no_write_through(self.tree, what=f"make {obj}", on_damage=self.discard):
                run_step(kbuild.make_command(self.tree, obj, parallel=False),
                         step=f"make {obj}", log=log, runner=self.runner)
        if not output.is_file():
            raise BuildError(f"compiling {obj} produced no object; log: {log}")
        return output

    def built_objects(self, directory: str) -> set[str]:
        """The objects kbuild compiles under ``directory`` in this tree's config (a dry run:
        nothing is written)."""
        with self.locked(), no_write_through(self.tree, what=f"make -n {directory}/",
                                             on_damage=self.discard):
            return kbuild.objects_in(self.tree, directory, self.runner)

    def recorded(self, obj: str) -> kbuild.ObjectRecord | None:
        """How kbuild compiles ``obj``: its record here, left by an earlier ``make``, or else
        the one the header index holds; None before the first compile without an index."""
        record_file = (self.tree / obj).with_name(f".{Path(obj).name}.cmd")
        if record_file.is_file():
            return kbuild.read_cmd_file(record_file)
        index = self.header_index(build=False)
        return index.records.get(obj) if index else None

    def link_target(self, obj: str) -> str:
        """vmlinux, or the module ``obj`` links into, from the flags kbuild compiled it with."""
        recorded = self.recorded(obj)
        if recorded is None:
            raise BuildError(f"{obj}: compiled, but kbuild left no record of its command")
        command = recorded.command
        if " -DMODULE " not in f" {command} ":
            return "vmlinux"
        found = _MODNAME.search(command)
        if not found:
            raise BuildError(f"{obj}: a module object without KBUILD_MODNAME in its command")
        return found.group(1)


def patched_contents(patches: tuple[Path, ...], tree: Path, strip: int = 1
                     ) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(original, patched) contents of every file the patches touch (b"" for new files)."""
    with tempfile.TemporaryDirectory(prefix="kpb-patched-") as scratch:
        touched = apply_patches(patches, tree, Path(scratch), strip)
        before = {rel: (tree / rel).read_bytes() if (tree / rel).is_file() else b""
                  for rel in touched}
        after = {rel: (Path(scratch) / rel).read_bytes() if (Path(scratch) / rel).is_file()
                 else b"" for rel in touched}
    return before, after


def objects_to_rebuild(stage: OriginalStage, workspace: Workspace, changed: list[str],
                       header_index: bool = False) -> dict[str, list[str]]:
    """The objects the changed files feed (each with the changed files it is compiled from),
    or a refusal naming the file that can't be patched.

    A built kernel knows exactly, from every object's recorded inputs. A Debian kernel was
    not built here: with ``header_index`` (the recipe's target asked for it) the index of
    its tree knows as exactly (made the first time a header changes); without it a ``.c``
    file means its own object, and a header is refused, naming that key, rather than
    missing a caller silently.
    """
    built = [rel for rel in changed if not rel.startswith(NOT_BUILT)
             and not rel.endswith((".txt", ".rst", ".md"))]
    if not built:
        raise RecipeError(f"the patches touch only files kbuild does not build "
                          f"({', '.join(changed)}); there is nothing to live-patch")
    for rel in built:
        if rel.startswith(NOT_LIVE_PATCHABLE):
            raise RecipeError(f"{rel} is code that cannot be live-patched (boot, "
                              "early init, vdso or realmode code runs outside the patchable "
                              "kernel)")
        if rel.endswith((".S", ".s", ".lds", ".lds.S")):
            raise RecipeError(f"{rel} is assembly or a linker script; only C code can "
                              "be live-patched")
        if os.path.basename(rel).startswith(("Kconfig", "Makefile", "Kbuild")):
            raise RecipeError(f"{rel} changes the build itself; a livepatch cannot "
                              "change configuration or build rules")
    records = None
    if stage.kind == "built":
        records = kbuild.object_records(stage.tree)
    elif header_index and any(rel.endswith(".h") for rel in built):
        index = workspace.header_index(build=True)
        assert index is not None
        records = index.records
    if records is not None:
        objects = sorted(obj for obj, record in records.items()
                         if any(rel in record.sources for rel in built))
        missing = [rel for rel in built if rel.endswith(".c")
                   and not any(rel in records[o].sources for o in objects)]
        if missing:
            _refuse_unbuilt(stage, workspace, missing)
            raise RecipeError(f"kbuild does not build {', '.join(missing)} in this "
                              "kernel's config; nothing to live-patch there")
        return {obj: [rel for rel in built if rel in records[obj].sources] for obj in objects}
    by_source: dict[str, list[str]] = {}
    for rel in built:
        if rel.endswith(".h"):
            raise RecipeError(
                f"{rel} is a header, and which objects include it is known only from "
                "a full build or a header index: set 'header_index: true' on the target (a "
                "one-time pass that preprocesses every object of this kernel, cached for "
                "it), or put the change in the .c files that use it")
        if not rel.endswith(".c"):
            raise RecipeError(f"{rel} is not C source; kpatchbuild cannot tell what "
                              "it changes")
        for obj in _objects_of_source(stage, workspace, rel):
            by_source.setdefault(obj, []).append(rel)
    return by_source


def _objects_of_source(stage: OriginalStage, workspace: Workspace, rel: str) -> list[str]:
    """The objects kbuild builds from ``rel`` in this config: its own object when kbuild
    lists it (also from a parent directory's Makefile, ``kvm-amd-y += svm/nested.o``),
    else the listed objects whose source ``#include``s it (kernel/sched/build_policy.c
    includes rt.c)."""
    own = rel[:-2] + ".o"
    listed: set[str] = set()
    for directory in _kbuild_directories(workspace.tree, rel):
        listed |= workspace.built_objects(directory)
        if own in listed:
            return [own]
        includers = _including_objects(workspace.tree, rel, listed)
        if includers:
            return includers
    _refuse_unbuilt(stage, workspace, [rel])
    raise RecipeError(f"kbuild does not build {rel} in this kernel's config, and no object "
                      "it builds there includes it; nothing to live-patch there")


def _kbuild_directories(tree: Path, rel: str) -> list[str]:
    """Where kbuild is asked about ``rel``: the nearest directory with a Makefile of its own,
    then its parent, whose lists may name objects of subdirectories."""
    directory = Path(rel).parent
    while str(directory) not in ("", ".") and not any(
            (tree / directory / name).is_file() for name in ("Kbuild", "Makefile")):
        directory = directory.parent
    found = [str(directory)]
    if str(directory.parent) not in ("", "."):
        found.append(str(directory.parent))
    return found


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+\.c)"', re.M)


def _including_objects(tree: Path, rel: str, listed: set[str], depth: int = 0) -> list[str]:
    """Objects in ``listed`` whose source includes ``rel``, directly or through another
    included ``.c`` file."""
    found: list[str] = []
    directory = (tree / rel).parent
    for candidate in sorted(directory.parent.rglob("*.c")) if depth < 3 else ():
        text = candidate.read_text(errors="replace")
        if Path(rel).name not in text:
            continue
        for included in _INCLUDE.findall(text):
            if os.path.normpath(candidate.parent / included) != os.path.normpath(tree / rel):
                continue
            including = str(candidate.relative_to(tree))
            obj = including[:-2] + ".o"
            if obj in listed:
                found.append(obj)
            else:
                found += _including_objects(tree, including, listed, depth + 1)
    return sorted(set(found))


def _export_version_changes(store: Store, workspace: Workspace, obj: str,
                            original: Path, patched: Path,
                            contents: tuple[dict[str, bytes], dict[str, bytes]],
                            log: Path) -> str:
    """Why the patch cannot change ``obj``: it changes the version (CRC) of a symbol the
    object exports, which the running kernel's modules were linked against (see
    symversions); "" when it does not."""
    config = workspace.stage.tree / ".config"
    tool = symversions.versioning_tool(config.read_text(errors="replace")
                                       if config.is_file() else "")
    if tool is None or not (symversions.exports_symbols(original)
                            or symversions.exports_symbols(patched)):
        return ""
    found = []
    for compiled, files in zip((original, patched), contents, strict=True):
        files = {**patch_headers(), **files}  # as compiled_object compiled it
        key = ("symversions", object_key(workspace.stage, obj, files))
        remembered = store.recall(key)
        if remembered is None:
            with workspace.locked():
                workspace.set_contents(files)
                record = workspace.recorded(obj)
                if record is None:
                    raise BuildError(f"{obj}: compiled, but kbuild left no record of its "
                                     "command")
                versions = symversions.symbol_versions(workspace.tree, record, tool,
                                                       obj=compiled, log=log,
                                                       runner=workspace.runner)
            remembered = {"crcs": versions.crcs, "types": versions.types}
            store.remember(key, remembered)
        found.append(symversions.SymbolVersions(remembered["crcs"], remembered["types"]))
    changes = symversions.version_changes(found[0], found[1])
    if not changes:
        return ""
    return (f"{changes}: the running kernel's modules were linked against the old "
            "version; keep the exported types as they are (a shadow variable instead of a "
            "new field, no new include that completes a type the file saw as opaque)")


def _check_inputs_recorded(workspace: Workspace, obj: str, inputs: list[str]) -> None:
    """kbuild's record of the compile must name every file the object was chosen for (an
    included ``.c`` file found by its ``#include`` line): else the patch would miss it."""
    record = workspace.recorded(obj)
    if record is None or not record.sources:
        return
    tree = str(workspace.tree)
    seen = {os.path.normpath(os.path.relpath(source, tree) if source.startswith("/")
                             else source) for source in record.sources}
    unseen = [rel for rel in inputs if rel not in seen]
    if unseen:
        raise BuildError(f"{obj} was compiled for {', '.join(unseen)}, but kbuild's record of "
                         "its compile does not list it; report this with the patch")


def _refuse_unbuilt(stage: OriginalStage, workspace: Workspace, sources: list[str]) -> None:
    """Refuse, naming the option, a source whose object this kernel's config leaves out,
    rather than let its compile fail with the compiler's errors."""
    config_file = stage.tree / ".config"
    if not config_file.is_file():
        return
    config = config_file.read_text(errors="replace")
    for rel in sources:
        obj = rel[:-2] + ".o"
        reason = kbuild.unbuilt_reason(workspace.tree, obj, config)
        if reason:
            raise RecipeError(f"{obj} is not built in {stage.release}: {reason}; "
                              "nothing to live-patch there")


def object_key(stage: OriginalStage, obj: str, contents: dict[str, bytes]) -> str:
    return content_key("patched", stage.key, obj,
                       sorted((rel, xxhash.xxh3_128_hexdigest(data))
                              for rel, data in contents.items()))


# Headers a patch may include from kernel code ("kpatch-macros.h", as patches written for
# kpatch do): put on the kernel's include path, in the workspace's include/, for every compile.
PATCH_HEADERS = ("kpatch-macros.h", "kpatch-syscall.h", "kpatchbuild.h")
_KMOD = PROJECT_ROOT / "kmod"


def patch_headers() -> dict[str, bytes]:
    return {f"include/{name}": (_KMOD / name).read_bytes() for name in PATCH_HEADERS}


def compiled_object(store: Store, workspace: Workspace, obj: str,
                    contents: dict[str, bytes], log: Path) -> Path:
    """``obj`` compiled with the touched files holding ``contents``: from the cache if known."""
    contents = {**patch_headers(), **contents}
    key = object_key(workspace.stage, obj, contents)
    artifact = store.lookup("patched", key)
    if artifact:
        with workspace.locked():
            if workspace.recorded(obj) is None:
                # A workspace made anew since: one compile leaves kbuild's record of the
                # object (what it links into), which the cached copy does not carry.
                workspace.set_contents(contents)
                workspace.compile(obj, log)
        return artifact.path / Path(obj).name
    with store.publishing("patched", key, {"object": obj, "stage": workspace.stage.key,
                                          "files": sorted(contents)}) as work:
        with workspace.locked():
            workspace.set_contents(contents)
            built = workspace.compile(obj, log)
            shutil.copyfile(built, work / Path(obj).name)
    return store.path("patched", key) / Path(obj).name


def build_object_pairs(store: Store, stage: OriginalStage, patches: tuple[Path, ...],
                       *, log: Path, header_index: bool = False,
                       strip: int = 1, runner: Runner = HOST) -> list[ObjectPair]:
    """Compile every object the patches change, before and after; say which really differ.

    ``header_index`` lets a Debian stage index which objects include its headers (see
    :func:`objects_to_rebuild`). ``runner`` is where the compiles run (the stage's own
    toolchain).
    """
    before, after = patched_contents(patches, stage.tree, strip)
    changed = [rel for rel in after if after[rel] != before[rel]]
    if not changed:
        raise RecipeError("the patches change no file")
    workspace = Workspace(store, stage, runner)
    workspace.ensure()
    objects = objects_to_rebuild(stage, workspace, changed, header_index)
    # An object is keyed by the changed files it is built from, not by all the patches
    # change: an edit to one file recompiles (and re-diffs) only that file's objects. New
    # files count for every object, since an object that now includes one has no record
    # of it yet.
    new_files = [rel for rel in changed if not before[rel]]
    pairs = []
    for obj, inputs in objects.items():
        feeds = set(inputs) | set(new_files)
        original = compiled_object(store, workspace, obj,
                                   {rel: before[rel] for rel in feeds}, log)
        patched = compiled_object(store, workspace, obj, {rel: after[rel] for rel in feeds}, log)
        with workspace.locked():
            target = workspace.link_target(obj)
            _check_inputs_recorded(workspace, obj, inputs)
        exports_changed = _export_version_changes(
            store, workspace, obj, original, patched,
            ({rel: before[rel] for rel in feeds}, {rel: after[rel] for rel in feeds}), log)
        identical = original.read_bytes() == patched.read_bytes()
        pairs.append(ObjectPair(obj, target, str(original), str(patched), identical,
                                exports_changed))
    with workspace.locked():
        workspace.set_contents(before)  # leave the workspace as the original stage
    return pairs
