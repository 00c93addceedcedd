"""The doit task graph: the only module that knows doit.

Per recipe and kernel target (task names ``<step>:<recipe>/<target>``):

    fetch -> config -> prepare (Debian kernel) | build-orig (built kernel) -> check-patches

and ``build``, which runs the whole pipeline for every recipe, or for one with
``doit build recipe=NAME``. Each step records its result in a small JSON or text file under
``<cache>/work/<recipe>/<target>/``; those files are the targets and file dependencies doit
tracks, by xxhash of their contents. The heavy artifacts they point to live in the
content-addressed store, so two recipes on the same kernel share one original stage.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import xxhash
from doit import create_after
from doit.dependency import FileChangedChecker
from doit.exceptions import TaskFailed
from doit.reporter import ConsoleReporter
from doit.tools import config_changed

from kpatchbuild import (
    buildid,
    debian,
    kbuild,
    kconfig,
    module,
    objdiff,
    original,
    patched,
    patching,
    source,
    target_modules,
    vm,
)
from kpatchbuild.differ import CannotPatch
from kpatchbuild.errors import KpbError
from kpatchbuild.recipe import KernelTarget, Recipe, find_recipes
from kpatchbuild.steps import say
from kpatchbuild.store import (
    PROJECT_ROOT,
    Store,
    content_key,
    default_root,
    file_hash,
    write_atomically,
)

RECIPES_ENV = "KPATCHBUILD_RECIPES"


class XxhashChecker(FileChangedChecker):
    """doit's file-change check by content (xxh3-64), with mtime+size as the fast path.

    Timestamps alone rebuild on a touch and miss a same-second rewrite; md5 is slow on the
    packages and trees this project moves around.
    """

    def check_modified(self, file_path: str, file_stat: os.stat_result, state: Any) -> bool:
        mtime, size, digest = state
        if file_stat.st_mtime == mtime:
            return False
        if file_stat.st_size != size:
            return True
        return digest != _xxh64_file(file_path)

    def get_state(self, dep: str, current_state: Any) -> Any:
        mtime = os.path.getmtime(dep)
        if current_state and current_state[0] == mtime:
            return None
        return mtime, os.path.getsize(dep), _xxh64_file(dep)


def _xxh64_file(path: str) -> str:
    digest = xxhash.xxh3_64()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class OneLineReporter(ConsoleReporter):
    """doit's console reporter, printing a failed task as one line instead of a traceback."""

    desc = "one line per failure"

    def _write_failure(self, result: dict, write_exception: bool = True) -> None:
        fail = result["exception"]
        message = fail.message.strip() if fail.message else fail.get_msg().strip()
        self.write(f"kpatchbuild: error: {result['task'].name}: {message}\n")

    def complete_run(self) -> None:
        if self.runtime_errors:
            self.write("kpatchbuild: error: " + "; ".join(self.runtime_errors) + "\n")


DOIT_DB_ENV = "KPATCHBUILD_DOIT_DB"


def doit_db_path() -> str:
    """doit's own record of what ran, beside the artifacts it describes."""
    return os.environ.get(DOIT_DB_ENV) or str(default_root() / "doit-deps.json")


DOIT_CONFIG = {
    "default_tasks": ["build"],
    "dep_file": doit_db_path(),
    "verbosity": 2,
    "check_file_uptodate": XxhashChecker,
    "reporter": OneLineReporter,
    "backend": "json",
}


def _reporting_errors(function: Callable[[], None]) -> Callable[[], TaskFailed | None]:
    """Turn KpbError into doit's TaskFailed so the reporter prints its one line."""

    def action() -> TaskFailed | None:
        try:
            function()
        except KpbError as error:
            return TaskFailed(error.message)
        return None

    action.__name__ = getattr(function, "__name__", "action")
    return action


@dataclass(frozen=True)
class TargetPipeline:
    """The steps of one recipe on one kernel target, and the files that link them."""

    store: Store
    recipe: Recipe
    target: KernelTarget

    @property
    def label(self) -> str:
        return f"{self.recipe.name}/{self.target.name}"

    @property
    def work(self) -> Path:
        return self.store.root / "work" / self.recipe.name / self.target.name

    @property
    def fetch_record(self) -> Path:
        return self.work / "fetch.json"

    @property
    def config_file(self) -> Path:
        return self.work / "config"

    @property
    def original_record(self) -> Path:
        return self.work / "original.json"

    @property
    def patches_record(self) -> Path:
        return self.work / "patches.json"

    @property
    def objects_record(self) -> Path:
        return self.work / "objects.json"

    @property
    def diffs_record(self) -> Path:
        return self.work / "diffs.json"

    @property
    def module_record(self) -> Path:
        return self.work / "module.json"

    @property
    def proof_record(self) -> Path:
        return self.work / "proof.json"

    @property
    def build_log(self) -> Path:
        return self.store.log_path(f"build-{self.recipe.name}-{self.target.name}")

    def read(self, record: Path) -> dict:
        return json.loads(record.read_text())

    def write(self, record: Path, data: dict) -> None:
        write_atomically(record, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def source_tree(self) -> source.SourceTree:
        data = self.read(self.fetch_record)["source"]
        return source.SourceTree(Path(data["path"]), data["key"], data["origin"])

    # --- fetch ---

    def fetch(self) -> None:
        if self.target.debian:
            kernel = debian.resolve_release(self.target.debian, self.store)
            # Both mostly wait on dpkg-deb, xz and the disk: unpack the source meanwhile.
            with ThreadPoolExecutor(max_workers=1) as pool:
                files_job = pool.submit(debian.kernel_files, self.store, kernel)
                tree = source.debian_source_tree(self.store, kernel.packages["source"])
                files = files_job.result()
            record = {"kind": "debian", "kernel": kernel.to_json(), "files": str(files.path)}
        else:
            assert self.target.source is not None
            tree = source.obtain_source(self.store, self.target.source,
                                        f"{self.target.place}.source")
            record = {"kind": "built"}
        record["source"] = {"path": str(tree.path), "key": tree.key, "origin": tree.origin}
        self.write(self.fetch_record, record)

    def fetch_still_current(self) -> bool:
        """False when what the recipe names now resolves to something else (Debian moved on,
        a local tree changed), so fetch runs again even though no file it depends on did."""
        if not self.fetch_record.is_file():
            return False
        record = self.read(self.fetch_record)
        if not Path(record["source"]["path"]).is_dir():
            return False
        try:
            if self.target.debian and not self.target.debian.image:
                release, version = debian.newest_release_known(self.target.debian, self.store)
                return (release, version) == (record["kernel"]["release"],
                                              record["kernel"]["version"])
            spec = self.target.source
            if spec and spec.kind == "tree":
                assert spec.path is not None
                return source.tree_fingerprint(spec.path) == record["source"]["key"]
            if spec and spec.kind == "debian" and not spec.version:
                assert spec.package is not None
                newest = debian.newest_version_known(spec.package, self.store)
                return newest == record["source"]["origin"]["version"]
        except KpbError:
            return True  # offline or index gone: keep what was fetched
        return True

    # --- config ---

    def configure(self) -> None:
        record = self.read(self.fetch_record)
        if record["kind"] == "debian":
            text = (Path(record["files"]) / "config").read_text()
            original.check_livepatch_config(text, self.label)
            kbuild.check_compiler(text, f"{self.label} (Debian's config)")
        else:
            assert self.target.config is not None
            log = self.store.log_path(f"config-{self.recipe.name}-{self.target.name}")
            log.unlink(missing_ok=True)
            scratch = self.store.tmp / f"config-{os.getpid()}"
            try:
                text = kconfig.make_config(self.source_tree().path, self.target.config,
                                           scratch, log)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        write_atomically(self.config_file, text)

    def config_deps(self) -> list[str]:
        deps = [str(self.recipe.path), str(self.fetch_record)]
        if self.target.config:
            deps += [str(p) for p in self.target.config.fragments]
            if self.target.config.base_path:
                deps.append(str(self.target.config.base_path))
        return deps

    # --- original stage ---

    def make_original(self) -> None:
        record = self.read(self.fetch_record)
        config_text = self.config_file.read_text()
        tree = self.source_tree()
        if record["kind"] == "debian":
            files = Path(record["files"])
            stage = original.prepare_debian_tree(
                self.store, tree, config_text, record["kernel"]["release"],
                files / "Module.symvers", label=self.label.replace("/", "-"),
            )
        else:
            stage = original.build_kernel(self.store, tree, config_text,
                                          label=self.label.replace("/", "-"))
        self.write(self.original_record, {"kind": stage.kind, "key": stage.key,
                                          "path": str(stage.path), "release": stage.release})
        say(f"  {self.label}: original stage {stage.release} at {stage.tree}")

    def original_still_there(self) -> bool:
        if not self.original_record.is_file():
            return False
        return (Path(self.read(self.original_record)["path"]) / "manifest.json").is_file()

    # --- patches ---

    def stage(self) -> original.OriginalStage:
        record = self.read(self.original_record)
        return original.OriginalStage(record["kind"], record["key"], Path(record["path"]),
                                      record["release"])

    def check_patches(self) -> None:
        tree = Path(self.read(self.original_record)["path"]) / "tree"
        touched = patching.check_patches_apply(self.recipe.patches, tree)
        self.write(self.patches_record, {"patches": [str(p) for p in self.recipe.patches],
                                         "touched": touched})


    # --- patched objects and their diffs ---

    def build_patched_objects(self) -> None:
        self.build_log.unlink(missing_ok=True)
        pairs = patched.build_object_pairs(self.store, self.stage(), self.recipe.patches,
                                           where=str(self.recipe.path), log=self.build_log)
        for pair in pairs:
            if pair.identical:
                say(f"  {pair.object}: no change in the compiled object")
        self.write(self.objects_record, {"objects": [p.to_json() for p in pairs]})

    def target_modules(self) -> target_modules.DebianModules | target_modules.BuiltModules:
        """Where this kernel's loadable modules come from: Debian's image, or the build."""
        if self.target.kind == "debian":
            kernel = debian.KernelRelease.from_json(self.read(self.fetch_record)["kernel"])
            return target_modules.DebianModules(self.store, kernel.packages["image"],
                                                kernel.release)
        return target_modules.BuiltModules(self.stage().tree)

    def symbol_files(self, target: str) -> objdiff.SymbolFiles:
        """What references into ``target`` resolve against: System.map, or the module's .ko."""
        if self.target.kind == "debian":
            files = Path(self.read(self.fetch_record)["files"])
        else:
            files = self.stage().tree
        if target == "vmlinux":
            return objdiff.SymbolFiles(files / "System.map", files / "Module.symvers")
        return objdiff.SymbolFiles(self.target_modules().find(target),
                                   files / "Module.symvers")

    def changed_pairs(self) -> list[patched.ObjectPair]:
        """The rebuilt objects whose bytes differ from the original: one diff task each."""
        if not self.objects_record.is_file():
            return []  # `doit list` before anything was built
        return [patched.ObjectPair(**o) for o in self.read(self.objects_record)["objects"]
                if not o["identical"]]

    def object_diff_record(self, obj: str) -> Path:
        return self.work / "diffs" / f"{obj}.json"

    def diff_object(self, pair: patched.ObjectPair) -> None:
        """Diff one object; a refusal the recipe expects is recorded, any other one fails."""
        workspace = patched.Workspace(self.store, self.stage())
        sizes = objdiff.measured_entry_sizes(self.store, workspace)
        try:
            diff = objdiff.diff_pair(self.store, pair, self.symbol_files(pair.target), sizes)
        except CannotPatch as refusal:
            if not (self.recipe.refused and self.recipe.refused in refusal.message):
                raise
            say(f"  refused, as the recipe expects: {refusal.message}")
            record: dict = {"refused": refusal.message}
        else:
            for line in objdiff.decision_lines(diff):
                say(f"  {line}")
            record = {"diff": diff.to_json()}
        self.object_diff_record(pair.object).parent.mkdir(parents=True, exist_ok=True)
        self.write(self.object_diff_record(pair.object), record)

    def collect_diffs(self) -> None:
        """The target's diffs in one record: what the module links, or the expected refusal."""
        pairs = self.changed_pairs()
        if not pairs:
            raise KpbError(f"{self.recipe.path}: the patches change no compiled code "
                           "(every rebuilt object is byte-identical)", exit_code=3)
        records = [self.read(self.object_diff_record(p.object)) for p in pairs]
        refused = [r["refused"] for r in records if "refused" in r]
        if refused:
            self.write(self.diffs_record, {"diffs": [], "refused": refused[0]})
            return
        if self.recipe.refused:
            raise KpbError(f"{self.recipe.path}: the recipe expects a refusal containing "
                           f"'{self.recipe.refused}', but the differ accepted the change")
        diffs = [r["diff"] for r in records]
        if not any(d["output"] for d in diffs):
            raise KpbError(f"{self.recipe.path}: no functional change: the patches change "
                           "only line numbers or nothing the kernel runs", exit_code=3)
        self.write(self.diffs_record, {"diffs": diffs})

    def diff_tasks(self) -> Iterator[dict]:
        """One task per changed object, then the target's collecting task.

        Created by doit once this target's patched objects are known (see dodo.py). The
        tasks are named in full (no group) so that each recipe's creator stands alone.
        """
        names = []
        for pair in self.changed_pairs():
            name = f"diff:{self.label}/{pair.object}"
            names.append(name)
            yield {
                "basename": name,
                "doc": f"diff {pair.object} of {self.label}",
                "actions": [_reporting_errors(partial(self.diff_object, pair))],
                "file_dep": [pair.original, pair.patched, str(self.recipe.path)],
                "uptodate": [config_changed(objdiff.differ_version())],
                "targets": [str(self.object_diff_record(pair.object))],
                "verbosity": 2,
            }
        yield {
            "basename": f"diff:{self.label}",
            "doc": f"collect the diffs of {self.label}",
            "actions": [_reporting_errors(self.collect_diffs)],
            "file_dep": [str(self.objects_record), str(self.recipe.path),
                         *(str(self.object_diff_record(p.object))
                           for p in self.changed_pairs())],
            "task_dep": names,
            "targets": [str(self.diffs_record)],
            "verbosity": 2,
        }

    # --- the module and its proof ---

    def kernel_image(self) -> Path:
        """The original kernel to boot: Debian's own vmlinuz, or the bzImage built here."""
        if self.target.kind == "debian":
            return Path(self.read(self.fetch_record)["files"]) / "vmlinuz"
        return self.stage().tree / "arch/x86/boot/bzImage"

    def expected_refusal(self, record: Path) -> bool:
        """True when the diff was refused as the recipe expects: nothing to link or prove."""
        if "refused" not in self.read(self.diffs_record):
            return False
        self.write(record, {"refused": self.read(self.diffs_record)["refused"]})
        return True

    def link(self) -> None:
        if self.expected_refusal(self.module_record):
            return
        records = [d for d in self.read(self.diffs_record)["diffs"] if d["output"]]
        diffs = [module.ObjectDiff.from_report(Path(d["report"]), Path(d["output"]))
                 for d in records]
        stage = self.stage()
        log = self.store.log_path(f"module-{self.recipe.name}-{self.target.name}")
        key = content_key(
            "module", stage.key, self.recipe.module, self.recipe.replace,
            self.recipe.description, objdiff.differ_version(), file_hash(Path(module.__file__)),
            [(file_hash(Path(d["output"])), file_hash(Path(d["report"]))) for d in records],
            [(p.name, file_hash(p)) for p in self.recipe.sources],
            [(p.name, file_hash(p)) for p in module_inputs()],
        )
        name = f"{self.recipe.module}.ko"
        if not self.store.lookup("module", key):
            log.unlink(missing_ok=True)
            workspace = patched.Workspace(self.store, stage)
            with self.store.publishing("module", key, {"module": name,
                                                       "stage": stage.key}) as work:
                with workspace.locked(), source.no_write_through(
                    workspace.tree, what="linking the module", on_damage=workspace.discard
                ):
                    ko = module.link_module(
                        workspace.tree, self.recipe.module, diffs, self.work / "module",
                        release=stage.release, log=log, replace=self.recipe.replace,
                        build_id=self.kernel_build_id(), sources=self.recipe.sources,
                        description=self.recipe.description,
                    )
                shutil.copyfile(ko, work / name)
        final = self.work / name
        shutil.copyfile(self.store.path("module", key) / name, final.with_suffix(".ko.tmp"))
        os.replace(final.with_suffix(".ko.tmp"), final)
        say(f"  module: {final}")
        for diff in diffs:
            for change in diff.changed_functions:
                say(f"    {diff.object_name}: changed function: {change.name}")
            for change in diff.new_functions:
                say(f"    {diff.object_name}: new function: {change.name}")
        say(f"  build log: {log}")
        # The module's hash in its record: a relinked module with new bytes is proven again.
        self.write(self.module_record, {"module": str(final), "release": stage.release,
                                        "log": str(log), "xxh3": file_hash(final)})

    def kernel_build_id(self) -> str:
        """The build id of the kernel the module is for; decompressing vmlinuz once."""
        image = self.kernel_image()
        memory = ("build-id", file_hash(image))
        known = self.store.recall(memory)
        if not known:
            known = buildid.kernel_build_id(image)
            self.store.remember(memory, known)
        return known

    def patched_modules(self) -> list[Path]:
        """The modules the patch changes, with their dependencies, to load before it."""
        targets = sorted({d["target"] for d in self.read(self.diffs_record)["diffs"]
                          if d["output"] and d["target"] != "vmlinux"})
        modules = self.target_modules()
        ordered: list[Path] = []
        for name in targets:
            ordered += [ko for ko in target_modules.with_dependencies(name, modules.find)
                        if ko not in ordered]
        return ordered

    def prove(self) -> None:
        if self.expected_refusal(self.proof_record):
            return
        if not self.recipe.check:
            raise KpbError(f"{self.recipe.path}: no 'check' command: the proof in a VM needs "
                           "one that fails before the patch and passes after it")
        ko = Path(self.read(self.module_record)["module"])
        result = vm.prove_livepatch(self.kernel_image(), ko, self.recipe.check,
                                    workdir=self.work / "vm", preload=self.patched_modules())
        exit_line = f"{vm.module_name(ko)}: exit"
        if exit_line not in result.console_log.read_text(errors="replace"):
            raise KpbError(f"{self.label}: the module unloaded but its exit function never ran "
                           f"('{exit_line}' missing): the module's struct module does not match "
                           f"the kernel's; console log: {result.console_log}")
        say(f"  proven in {self.read(self.module_record)['release']} under qemu "
            f"({result.accel}, {result.elapsed:.1f} s): {', '.join(s.name for s in result.steps)}")
        say(f"  console log: {result.console_log}")
        self.write(self.proof_record, {"module": str(ko), "console_log": str(result.console_log),
                                       "steps": [s.name for s in result.steps],
                                       "elapsed": result.elapsed, "accel": result.accel})


def recipes_dir() -> Path:
    return Path(os.environ.get(RECIPES_ENV) or PROJECT_ROOT / "recipes")


def pipelines(store: Store, only: str | None) -> list[TargetPipeline]:
    recipes = find_recipes(recipes_dir(), only)
    return [TargetPipeline(store, recipe, target)
            for recipe in recipes for target in recipe.targets]


STEP_DOCS = {
    "fetch": "fetch a target's Debian packages or kernel source",
    "config": "produce and verify a target's kernel .config",
    "prepare": "prepare Debian's source for its kernel (modules_prepare; no kernel build)",
    "build-orig": "build a configured target kernel in full",
    "check-patches": "check that a recipe's patches apply to its target's source",
    "patched-objects": "compile the objects a recipe's patches change, before and after",
    "diff": "diff each changed object into a livepatch object",
    "module": "link the livepatch module of a recipe's target",
    "prove": "boot the original kernel under qemu and prove the module patches it",
}


def module_inputs() -> list[Path]:
    """The templates a module is generated from: an edit to them relinks every module."""
    return sorted((PROJECT_ROOT / "kmod").glob("*"))


def diff_task_creators(items: list[TargetPipeline]) -> dict[str, Callable[[], Iterator[dict]]]:
    """doit task creators, one per target, each run once that target's objects are built.

    Which objects changed is known only then, so their diff tasks cannot be declared with
    the rest; doit's delayed creation (``create_after``) makes them when they can be.
    """
    creators = {}
    for index, item in enumerate(items):
        def create(item: TargetPipeline = item) -> Iterator[dict]:
            yield from item.diff_tasks()

        create.__doc__ = f"diff the changed objects of {item.label}"
        delayed = create_after(executed=f"patched-objects:{item.label}",
                               creates=[f"diff:{item.label}"])
        creators[f"task_diff_{index}"] = delayed(create)
    return creators


def generate_tasks(items: list[TargetPipeline]) -> Iterator[dict]:
    """Every step of every pipeline, as doit task dicts."""
    for basename, doc in STEP_DOCS.items():
        if basename != "diff":  # its tasks are created later, named in full: no group
            yield {"basename": basename, "name": None, "doc": doc}
    yield {"basename": "diff", "doc": STEP_DOCS["diff"], "actions": None,
           "task_dep": [f"diff:{item.label}" for item in items]}
    finals = []
    for item in items:
        name = item.label
        yield {
            "basename": "fetch", "name": name,
            "doc": f"fetch the kernel packages or source of {name}",
            "actions": [_reporting_errors(item.fetch)],
            "file_dep": [str(item.recipe.path)],
            "targets": [str(item.fetch_record)],
            "uptodate": [item.fetch_still_current],
            "verbosity": 2,
        }
        yield {
            "basename": "config", "name": name,
            "doc": f"produce and verify the kernel .config of {name}",
            "actions": [_reporting_errors(item.configure)],
            "file_dep": item.config_deps(),
            "uptodate": [config_changed({"tools": kbuild.toolchain_fingerprint()})],
            "targets": [str(item.config_file)],
            "verbosity": 2,
        }
        stage = "prepare" if item.target.kind == "debian" else "build-orig"
        yield {
            "basename": stage, "name": name,
            "doc": ("prepare Debian's source tree (modules_prepare, no kernel build) of "
                    if stage == "prepare" else "build in full the original kernel of ") + name,
            "actions": [_reporting_errors(item.make_original)],
            "file_dep": [str(item.fetch_record), str(item.config_file)],
            "targets": [str(item.original_record)],
            "uptodate": [item.original_still_there,
                         config_changed({"stage_format": original.STAGE_FORMAT})],
            "verbosity": 2,
        }
        yield {
            "basename": "check-patches", "name": name,
            "doc": f"check that the recipe's patches apply to {name}",
            "actions": [_reporting_errors(item.check_patches)],
            "file_dep": [str(item.original_record), *map(str, item.recipe.patches)],
            "targets": [str(item.patches_record)],
            "verbosity": 2,
        }
        yield {
            "basename": "patched-objects", "name": name,
            "doc": f"compile the objects the patches of {name} change, before and after",
            "actions": [_reporting_errors(item.build_patched_objects)],
            "file_dep": [str(item.original_record), str(item.patches_record),
                         *map(str, item.recipe.patches)],
            "targets": [str(item.objects_record)],
            "verbosity": 2,
        }
        yield {
            "basename": "module", "name": name,
            "doc": f"link the livepatch module of {name}",
            "actions": [_reporting_errors(item.link)],
            "task_dep": [f"diff:{name}"],
            "file_dep": [str(item.diffs_record), *map(str, module_inputs()),
                         *map(str, item.recipe.sources), module.__file__],
            "targets": [str(item.module_record)],
            "verbosity": 2,
        }
        yield {
            "basename": "prove", "name": name,
            "doc": f"prove the module of {name} in its original kernel under qemu",
            "actions": [_reporting_errors(item.prove)],
            "file_dep": [str(item.module_record), str(item.recipe.path)],
            "targets": [str(item.proof_record)],
            "verbosity": 2,
        }
        finals.append(f"prove:{name}")
    yield {
        "basename": "build",
        "doc": "run the pipeline for every recipe (or one: doit build recipe=NAME)",
        "actions": None,
        "task_dep": finals,
    }
