"""The doit task graph: the only module that knows doit.

Per recipe and kernel target (task names ``<step>:<recipe>/<target>``), one task per step of
``pipeline.TargetPipeline``, each named as its stage:

    fetch -> config -> original -> patches -> patched -> diff:<recipe>/<target>/<object> (each
    changed object, created once they are known) -> diff -> module -> prove

and ``build``, which runs the whole pipeline for every recipe, or for one with
``doit build recipe=NAME``. ``test`` runs the same tasks for every cell of the matrix
(``test:<recipe>/<target>`` each), goes on past a failed cell, and the reporter writes the
matrix's report at the end. ``package`` packages each recipe's proven modules, and the
kpatch command, into the local apt repository (``graph/packages.py``). The steps' records
are the targets and file dependencies doit tracks, by xxhash of their contents
(XxhashChecker), not by their times.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import xxhash
from doit import create_after, get_var
from doit.dependency import FileChangedChecker
from doit.exceptions import BaseFail, TaskFailed, UnmetDependency
from doit.reporter import ConsoleReporter
from doit.tools import config_changed

from kpatchbuild.base import kbuild, locks
from kpatchbuild.base.commands import say
from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.store import Store, default_root
from kpatchbuild.graph import matrix, packages, records
from kpatchbuild.graph.pipeline import TargetPipeline, module_inputs, pipelines
from kpatchbuild.stages.diff import objdiff
from kpatchbuild.stages.fetch.suites import DebianRelease
from kpatchbuild.stages.module import module, sign
from kpatchbuild.stages.original import original
from kpatchbuild.stages.package import repository

__all__ = ["DOIT_CONFIG", "diff_task_creators", "generate_tasks", "lock_database",
           "pipelines"]


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


def _one_line(fail: BaseFail) -> str:
    return (fail.message.strip() if fail.message else fail.get_msg().strip()).splitlines()[0]


class OneLineReporter(ConsoleReporter):
    """doit's console reporter, printing a failed task as one line instead of a traceback.

    It also watches the run from the cells' side: the first failure of each cell and how
    long each step took; when the run is a ``test`` run, it writes the matrix's report
    last, whatever failed (a task that ran after a failure could not be relied on to).
    """

    desc = "one line per failure"

    def initialize(self, tasks: dict[str, Any], selected_tasks: list[str]) -> None:
        super().initialize(tasks, selected_tasks)
        self.started = time.monotonic()
        self.task_started: dict[str, float] = {}
        self.cells: dict[str, matrix.CellRun] = {}
        selected = {name for name in selected_tasks if name.startswith("test:")}
        if "test" in selected_tasks:
            selected |= {f"test:{label}" for label in _MATRIX}
        self.tested = [_MATRIX[name.removeprefix("test:")] for name in sorted(selected)
                       if name.removeprefix("test:") in _MATRIX]

    def execute_task(self, task: Any) -> None:
        super().execute_task(task)
        self.task_started[task.name] = time.monotonic()

    def _cell_step(self, task: Any) -> tuple[matrix.CellRun, str] | None:
        step, _, rest = task.name.partition(":")
        label = "/".join(rest.split("/")[:2])
        if label not in _MATRIX or step == "test":
            return None
        run = self.cells.setdefault(label, matrix.CellRun())
        if task.name in self.task_started:
            seconds = time.monotonic() - self.task_started[task.name]
            run.seconds[step] = run.seconds.get(step, 0.0) + seconds
        return run, step

    def add_success(self, task: Any) -> None:
        super().add_success(task)
        self._cell_step(task)

    def add_failure(self, task: Any, fail: BaseFail) -> None:
        found = self._cell_step(task)
        if found is not None:
            found[0].failed(found[1], _one_line(fail))
        if isinstance(fail, UnmetDependency):
            return  # what could not run after a failure: that failure's line says it all
        super().add_failure(task, fail)

    def _write_failure(self, result: dict, write_exception: bool = True) -> None:
        self.write(f"kpatchbuild: error: {result['task'].name}: "
                   f"{_one_line(result['exception'])}\n")

    def complete_run(self) -> None:
        if self.runtime_errors:
            self.write("kpatchbuild: error: " + "; ".join(self.runtime_errors) + "\n")
        if self.tested:
            report = matrix.matrix_report(self.tested, self.cells,
                                          time.monotonic() - self.started)
            self.write(matrix.write_reports(report, default_root() / "reports",
                                            json_copy=get_var("json"),
                                            junit_copy=get_var("junit")))


DOIT_DB_ENV = "KPATCHBUILD_DOIT_DB"
# ``doit build module_key=.. module_cert=..``: the module signing key for this run, over the
# environment's (which a recipe's ``signing`` gives way to).
KEY_VARIABLES = {"module_key": sign.KEY_ENV, "module_cert": sign.CERT_ENV}


def command_line_signing_key() -> None:
    """Put the command line's signing key where :func:`pipelines` reads it."""
    for variable, environment in KEY_VARIABLES.items():
        value = get_var(variable)
        if value:
            os.environ[environment] = value


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
    # One cell's failure stops neither the other cells nor the other recipes (make -k);
    # what depends on a failed step does not run, and doit still exits non-zero.
    "continue": True,
    # `-n N` runs tasks in threads: the work is in make, qemu and the compiler, and the
    # delayed diff tasks could not be sent to other processes (their actions are closures).
    "par_type": "thread",
}


def lock_database() -> None:
    """One doit run at a time per database: doit rewrites its whole JSON database when a
    run ends, so two concurrent runs on one cache would lose one run's records."""
    path = Path(doit_db_path()).with_suffix(".lock")
    locks.hold_for_process(path, waiting=f"kpatchbuild: waiting for another doit run on "
                           f"{path.parent} to finish")


# The cells of this run, by label: the reporter reads their records at the end.
_MATRIX: dict[str, TargetPipeline] = {}

# Steps that use every core (a kernel's configure, prepare or build): one at a time across
# the threads of `-n N` and the runs sharing the cache, so that two never starve the machine.
HEAVY_STEPS = ("config", "original")


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


Paths = Callable[[TargetPipeline], Sequence[object]]
Checks = Callable[[TargetPipeline], Sequence[Callable[[], str | None]]]
Names = Callable[[TargetPipeline], Sequence[str]]
Config = Callable[[TargetPipeline], dict[str, object]]


@dataclass(frozen=True)
class Step:
    """One stage as a doit task per pipeline: the table row ``generate_tasks`` reads.

    The task runs the pipeline method of the stage's name; ``inputs`` and ``outputs`` are
    the files doit tracks by content; ``stale`` are the pipeline's own checks, each saying
    why the step must run again (None when it need not); ``config`` are values whose change
    runs it again (with the records' formats, one doit config_changed: doit keeps a single
    saved value per task, so two of them would each see the other's and always run);
    ``after`` names tasks that must run first.
    """

    name: str
    doc: str
    inputs: Paths
    outputs: Paths
    stale: Checks = lambda item: ()
    config: Config = lambda item: {}
    after: Names = lambda item: ()

    def method(self, item: TargetPipeline) -> Callable[[], None]:
        method: Callable[[], None] = getattr(item, self.name)
        return method


STEPS = (
    Step("fetch", "fetch a target's Debian packages or kernel source",
         inputs=lambda i: [i.recipe.path], outputs=lambda i: [i.fetch_record],
         stale=lambda i: [i.fetch_stale]),
    Step("config", "produce and verify a target's kernel .config",
         inputs=lambda i: i.config_deps(), outputs=lambda i: [i.config_file],
         config=lambda i: {"tools": kbuild.toolchain_fingerprint(),
                           "trusted": i.signing.identity()
                           if i.signing and i.target.trusts_signing_key else None}),
    Step("original", "make the original stage: Debian's source prepared for its kernel "
         "(modules_prepare, no kernel build), or a configured kernel built in full",
         inputs=lambda i: [i.fetch_record, i.config_file], outputs=lambda i: [i.original_record],
         stale=lambda i: [i.original_gone],
         config=lambda i: {"stage_format": original.STAGE_FORMAT}),
    Step("patches", "check that a recipe's patches apply to its target's source",
         inputs=lambda i: [i.original_record, i.recipe.path, *i.patch_files],
         outputs=lambda i: [i.patches_record]),
    Step("patched", "compile the objects a recipe's patches change, before and after",
         inputs=lambda i: [i.original_record, i.patches_record, *i.patch_files],
         outputs=lambda i: [i.patched_record]),
    Step("module", "link the livepatch module of a recipe's target",
         inputs=lambda i: [i.diff_record, *module_inputs(), *i.recipe.sources,
                           module.__file__],
         outputs=lambda i: [i.module_record], after=lambda i: [f"diff:{i.label}"],
         config=lambda i: {"signing": i.signing.identity() if i.signing else None}),
    Step("prove", "boot the original kernel under qemu and prove the module patches it",
         inputs=lambda i: [i.module_record, i.recipe.path], outputs=lambda i: [i.prove_record]),
)
DIFF_DOC = "diff each changed object into a livepatch object"


def _runs_again_when(check: Callable[[], str | None], task: str) -> Callable[[], bool]:
    """A doit up-to-date callable from a check that says why a step must run again: the
    reason is printed before the task runs, so ``doit build`` shows it."""

    def uptodate() -> bool:
        reason = check()
        if reason is not None:
            say(f"  {task}: runs again: {reason}")
        return reason is None

    return uptodate


def _config(values: dict[str, object]) -> config_changed:
    """The one config_changed of a task: its own values and the records' formats."""
    return config_changed({**values, "records": records.formats()})


def _one_heavy_at_a_time(function: Callable[[], None], task: str) -> Callable[[], None]:
    def run() -> None:
        with locks.exclusive(default_root() / "locks" / "heavy.lock",
                             waiting=f"  {task}: waiting for another kernel build or prepare"):
            function()

    run.__name__ = getattr(function, "__name__", "run")
    return run


def step_task(step: Step, item: TargetPipeline, *, force_proof: bool = False) -> dict:
    """The doit task of ``step`` for one pipeline (``force_proof``: prove again even when
    the module and kernel passed before)."""
    task = f"{step.name}:{item.label}"
    action = step.method(item)
    if step.name in HEAVY_STEPS:
        action = _one_heavy_at_a_time(action, task)
    forced = [False] if force_proof and step.name == "prove" else []
    return {
        "basename": step.name, "name": item.label,
        "doc": f"{step.doc}: {item.label}",
        "actions": [_reporting_errors(action)],
        "file_dep": [str(path) for path in step.inputs(item)],
        "targets": [str(path) for path in step.outputs(item)],
        "uptodate": [*(_runs_again_when(check, task) for check in step.stale(item)),
                     _config(step.config(item)), *forced],
        "task_dep": list(step.after(item)),
        "verbosity": 2,
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
            "uptodate": [_config({"differ": objdiff.differ_version()})],
            "targets": [str(item.object_diff_record(pair.object))],
            "verbosity": 2,
        }
    yield {
        "basename": f"diff:{item.label}",
        "doc": f"collect the diffs of {item.label}",
        "actions": [_reporting_errors(item.diff)],
        "file_dep": [str(item.patched_record), str(item.recipe.path),
                     *(str(item.object_diff_record(p.object))
                       for p in item.changed_pairs())],
        "task_dep": names,
        "uptodate": [_config({})],
        "targets": [str(item.diff_record)],
        "verbosity": 2,
    }


def diff_task_creators(items: list[TargetPipeline]) -> dict[str, Callable[[], Iterator[dict]]]:
    """doit task creators, one per target, each run once that target's objects are built.

    Which objects changed is known only then, so their diff tasks cannot be declared with
    the rest; doit's delayed creation (``create_after``) makes them when they can be.
    """
    creators = {}
    for index, item in enumerate(items):
        if item.last_step != "prove":
            continue  # a target the change does not apply to compiles nothing

        def create(item: TargetPipeline = item) -> Iterator[dict]:
            yield from object_diff_tasks(item)

        create.__doc__ = f"diff the changed objects of {item.label}"
        delayed = create_after(executed=f"patched:{item.label}",
                               creates=[f"diff:{item.label}"])
        creators[f"task_diff_{index}"] = delayed(create)
    return creators


def steps_of(item: TargetPipeline) -> list[Step]:
    """The item's steps, up to its last (a target marked not-applicable ends at patches)."""
    names = [step.name for step in STEPS]
    return list(STEPS[:names.index(item.last_step) + 1])


TEST_DOC = ("build and prove every cell of the matrix, go on past failures, and report "
            "(doit test recipe=NAME kernel=PATTERN force=1 json=PATH junit=PATH)")


def generate_tasks(items: list[TargetPipeline], *, force_proof: bool = False,
                   unsigned: bool = False) -> Iterator[dict]:
    """Every step of every pipeline, as doit task dicts, from the STEPS table; the build and
    the test of them all; one test task per cell."""
    _MATRIX.clear()
    _MATRIX.update((item.label, item) for item in items)
    for step in STEPS:
        yield {"basename": step.name, "name": None, "doc": step.doc}
    # The diff tasks are created later, named in full (no group): this one runs them all.
    yield {"basename": "diff", "doc": DIFF_DOC, "actions": None,
           "task_dep": [f"diff:{item.label}" for item in items if item.last_step == "prove"]}
    for item in items:
        for step in steps_of(item):
            yield step_task(step, item, force_proof=force_proof)
    last = [f"{item.last_step}:{item.label}" for item in items]
    yield {
        "basename": "build",
        "doc": "run the pipeline for every recipe (or one: doit build recipe=NAME)",
        "actions": None,
        "task_dep": last,
    }
    for item, last_task in zip(items, last, strict=True):
        expect = "its patches must not apply" if item.target.not_applicable else \
            "refused as the recipe expects" if item.recipe.refused_on(item.target) \
            else "built and proven"
        yield {"basename": f"test:{item.label}", "doc": f"cell: {expect}", "actions": None,
               "task_dep": [last_task]}
    yield {"basename": "test", "doc": TEST_DOC, "actions": None,
           "task_dep": [f"test:{item.label}" for item in items]}
    yield from package_tasks(items, unsigned=unsigned)


PACKAGE_DOC = ("build the kpatch package and each recipe's kpatch-patch package from its "
               "proven modules, into a local apt repository per Debian release, signed "
               "(doit package recipe=NAME kernel=PATTERN unsigned=1)")


def package_tasks(items: list[TargetPipeline], *, unsigned: bool = False) -> Iterator[dict]:
    """Per Debian release of the cells (``bookworm``, ``trixie``): ``package:<codename>/
    kpatch``, ``package:<codename>/<recipe>`` per recipe with modules for that release
    (after every cell's proof), and ``package:<codename>/repository`` indexing them (signed
    unless ``unsigned``)."""
    if not items:
        return
    store = items[0].store
    yield {"basename": "package", "name": None, "doc": PACKAGE_DOC}
    for release in packages.releases_of(items):
        yield from _release_package_tasks(store, release, items, unsigned=unsigned)


def _release_package_tasks(store: Store, release: DebianRelease, items: list[TargetPipeline],
                           *, unsigned: bool) -> Iterator[dict]:
    where = release.codename
    made = [packages.TOOL]
    yield {"basename": "package", "name": f"{where}/{packages.TOOL}",
           "doc": f"the kpatch command's package for {release.label}",
           "actions": [_reporting_errors(partial(packages.package_tool, store, release))],
           "file_dep": [str(p) for p in packages.tool_sources()],
           "targets": [str(packages.record_path(store, release, packages.TOOL))],
           "uptodate": [_config({"package": PACKAGE_FORMAT})], "verbosity": 2}
    for name, cells in packages.packaged_recipes(items, release).items():
        made.append(name)
        yield {"basename": "package", "name": f"{where}/{name}",
               "doc": f"kpatch-patch-{name} for {release.label}: its module for every "
                      "kernel of that release in its matrix",
               "actions": [_reporting_errors(partial(packages.package_recipe, store, release,
                                                     cells))],
               "file_dep": [str(cells[0].recipe.path),
                            *(str(p) for item in cells for p in (item.module_record,
                                                                 item.prove_record))],
               "targets": [str(packages.record_path(store, release, name))],
               "uptodate": [_config({"package": PACKAGE_FORMAT})], "verbosity": 2}
    repo = packages.repository(store, release)
    signed = not unsigned
    yield {"basename": "package", "name": f"{where}/repository",
           "doc": f"index {release.label}'s packages as a local apt repository",
           "actions": [_reporting_errors(partial(packages.write_index, store, release,
                                                 signed=signed))],
           "file_dep": [str(packages.record_path(store, release, name)) for name in made],
           "targets": [str(path) for path in repo.index_files(signed=signed)],
           # The key is found (or made) by the action: here only what names it. A Release
           # past half its validity is written and signed again, though nothing changed.
           "uptodate": [_config({"package": PACKAGE_FORMAT,
                                 "signed by": (os.environ.get(repository.SIGNING_KEY_ENV)
                                               or str(repository.key_home()))
                                 if signed else None,
                                 "valid days": os.environ.get(repository.VALID_DAYS_ENV)}),
                        partial(repo.index_fresh, signed=signed)],
           "verbosity": 2}


# Raised when what the packages hold or say changes: they are made again.
PACKAGE_FORMAT = 1
