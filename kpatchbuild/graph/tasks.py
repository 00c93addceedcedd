"""The doit task graph: the only module that knows doit.

Per recipe and kernel target (task names ``<step>:<recipe>/<target>``), one task per step of
``pipeline.TargetPipeline``:

    fetch -> config -> prepare (Debian kernel) | build-orig (built kernel) -> check-patches
    -> patched-objects -> diff:<recipe>/<target>/<object> (each changed object, created once
    they are known) -> diff -> module -> prove

and ``build``, which runs the whole pipeline for every recipe, or for one with
``doit build recipe=NAME``. The steps' records are the targets and file dependencies doit
tracks, by xxhash of their contents (XxhashChecker), not by their times.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import xxhash
from doit import create_after
from doit.dependency import FileChangedChecker
from doit.exceptions import TaskFailed
from doit.reporter import ConsoleReporter
from doit.tools import config_changed

from kpatchbuild.base import kbuild
from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.store import default_root
from kpatchbuild.graph.pipeline import TargetPipeline, module_inputs, pipelines
from kpatchbuild.stages.diff import objdiff
from kpatchbuild.stages.module import module
from kpatchbuild.stages.original import original

__all__ = ["DOIT_CONFIG", "diff_task_creators", "generate_tasks", "pipelines"]


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
    """Turn KpbError into doit's TaskFailed so the reporter prints its one line.

    Anything else is a bug of kpatchbuild's own: still one line, naming the exception, with
    its traceback kept in a log for the bug report (doit would print only "PythonAction
    Error").
    """

    def action() -> TaskFailed | None:
        try:
            function()
        except KpbError as error:
            return TaskFailed(error.message)
        except Exception as error:  # noqa: BLE001 - reported, with its traceback kept
            log = default_root() / "logs" / "internal-error.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            return TaskFailed(f"internal error, a bug in kpatchbuild: {type(error).__name__}: "
                              f"{error}; traceback: {log}")
        return None

    action.__name__ = getattr(function, "__name__", "action")
    return action


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


def object_diff_tasks(item: TargetPipeline) -> Iterator[dict]:
    """One task per changed object, then the target's collecting task.

    Created by doit once this target's patched objects are known (see dodo.py). The
    tasks are named in full (no group) so that each recipe's creator stands alone.
    """
    names = []
    for pair in item.changed_pairs():
        name = f"diff:{item.label}/{pair.object}"
        names.append(name)
        yield {
            "basename": name,
            "doc": f"diff {pair.object} of {item.label}",
            "actions": [_reporting_errors(partial(item.diff_object, pair))],
            # The fetch and original records name the symbol tables the diff resolves against.
            "file_dep": [pair.original, pair.patched, str(item.recipe.path),
                         str(item.fetch_record), str(item.original_record)],
            "uptodate": [config_changed(objdiff.differ_version())],
            "targets": [str(item.object_diff_record(pair.object))],
            "verbosity": 2,
        }
    yield {
        "basename": f"diff:{item.label}",
        "doc": f"collect the diffs of {item.label}",
        "actions": [_reporting_errors(item.collect_diffs)],
        "file_dep": [str(item.objects_record), str(item.recipe.path),
                     *(str(item.object_diff_record(p.object))
                       for p in item.changed_pairs())],
        "task_dep": names,
        "targets": [str(item.diffs_record)],
        "verbosity": 2,
    }


def diff_task_creators(items: list[TargetPipeline]) -> dict[str, Callable[[], Iterator[dict]]]:
    """doit task creators, one per target, each run once that target's objects are built.

    Which objects changed is known only then, so their diff tasks cannot be declared with
    the rest; doit's delayed creation (``create_after``) makes them when they can be.
    """
    creators = {}
    for index, item in enumerate(items):
        def create(item: TargetPipeline = item) -> Iterator[dict]:
            yield from object_diff_tasks(item)

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
            "file_dep": [str(item.original_record), str(item.recipe.path),
                         *map(str, item.recipe.patches)],
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
