"""The test matrix: every (recipe, kernel target) cell, and how each ended in a run.

A cell's steps are the pipeline's own (``doit test`` runs the same tasks as ``doit build``);
what this adds is the view of a run from the cells' side: which step of a cell failed and
why, what its records say it built and proved, how long its steps took. The report room
renders that; doit's reporter (in ``tasks.py``) tells which tasks ran and failed.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.store import content_key, file_hash
from kpatchbuild.graph.pipeline import TargetPipeline
from kpatchbuild.graph.records import (
    DiffRecord,
    FetchRecord,
    ModuleRecord,
    OriginalRecord,
    PatchesRecord,
    ProveRecord,
    read_record,
)
from kpatchbuild.report import junit, table
from kpatchbuild.report.results import CellResult, MatrixReport, Status, write_text
from kpatchbuild.stages.fetch.debian import newest_release_known


def select(items: list[TargetPipeline], kernel: str | None) -> list[TargetPipeline]:
    """The cells whose target name matches ``kernel``: shell patterns, comma-separated
    (``debian12-6.1-*,tiny-6.1``); all cells without one."""
    if not kernel:
        return items
    patterns = [pattern.strip() for pattern in kernel.split(",") if pattern.strip()]
    chosen = [item for item in items
              if any(fnmatch.fnmatchcase(item.target.name, p) for p in patterns)]
    if not chosen:
        names = ", ".join(sorted({item.target.name for item in items}))
        renamed = next((p for p in patterns if p.startswith("debian-")), None)
        hint = (f"; Debian targets are named after their Debian release now: "
                f"{renamed.replace('debian-', 'debian12-', 1)} for Debian 12's"
                if renamed else "")
        raise KpbError(f"kernel={kernel}: no target matches (targets: {names}){hint}",
                       exit_code=2)
    return chosen


def recipe_hash(item: TargetPipeline) -> str:
    """The content of the recipe's directory (recipe, patches, fragments, sources): what a CI
    cache of the cell is keyed by, beside its kernel."""
    files = sorted(path for path in item.recipe.directory.rglob("*") if path.is_file())
    return content_key([(str(p.relative_to(item.recipe.directory)), file_hash(p))
                        for p in files])[:16]


def kernel_release(item: TargetPipeline) -> str:
    """The release the cell builds for now: Debian's newest of its series (from Debian's
    index), its pinned image, or a built kernel's target name."""
    debian = item.target.debian
    if debian is None:
        return item.target.name
    if debian.image:
        return debian.image.removeprefix("linux-image-")
    return newest_release_known(debian, item.store)[0]


def cell_list(items: list[TargetPipeline], *, resolve: bool = False) -> list[dict[str, Any]]:
    """The cells as a CI job generates its matrix from them (``cells --json``); with
    ``resolve``, each with the kernel release it builds for now."""
    cells = []
    for item in items:
        cell: dict[str, Any] = {
            "cell": item.label, "recipe": item.recipe.name, "target": item.target.name,
            "kind": item.target.kind,
            "kernel": item.target.debian.label if item.target.debian else item.target.name,
            "not_applicable": item.target.not_applicable, "task": f"test:{item.label}",
            "recipe_hash": recipe_hash(item)}
        if resolve:
            cell["release"] = kernel_release(item)
        cells.append(cell)
    return cells


@dataclass
class CellRun:
    """What doit did with one cell's tasks in this run: the first failure, step times."""

    failure: tuple[str, str] | None = None  # (step, one-line reason)
    seconds: dict[str, float] = field(default_factory=dict)  # the steps that ran

    def failed(self, step: str, reason: str) -> None:
        if self.failure is None:  # the first: the rest only could not run after it
            self.failure = (step, reason)


def _record(path: Path, kind: Any) -> Any:
    """A record if the cell has a readable one, else None: a report never fails on it."""
    try:
        return read_record(path, kind) if path.is_file() else None
    except KpbError:
        return None


def changed_functions(item: TargetPipeline) -> tuple[str, ...]:
    diffs: DiffRecord | None = _record(item.diff_record, DiffRecord)
    names: list[str] = []
    for diff in diffs.with_code() if diffs else ():
        try:
            report = json.loads(diff.report.read_text())
        except (OSError, ValueError):
            continue
        names += [f["name"] for f in report.get("changed_functions", ())]
    return tuple(names)


def cell_result(item: TargetPipeline, run: CellRun) -> CellResult:
    """The cell's result from what ran now and what its records hold."""
    fetched: FetchRecord | None = _record(item.fetch_record, FetchRecord)
    release = fetched.kernel.release if fetched and fetched.kernel else None
    made: OriginalRecord | None = _record(item.original_record, OriginalRecord)
    if release is None and made is not None:
        release = made.release
    base = CellResult(
        item.recipe.name, item.target.name, "failed", release=release,
        compiler=(made.compiler or None) if made else None,
        compiler_override=made.compiler_override if made else None,
        previous_release=fetched.previous_release if fetched else None,
        build_seconds=sum(s for step, s in run.seconds.items() if step != "prove"),
        proof_seconds=run.seconds.get("prove"))
    console = item.work / "prove" / "console.log"
    if run.failure is not None:
        step, reason = run.failure
        return _with(base, "failed", reason, step=step,
                     console_log=str(console) if step == "prove" and console.is_file() else None)
    patches: PatchesRecord | None = _record(item.patches_record, PatchesRecord)
    if item.target.not_applicable is not None:
        if patches and patches.not_applicable:
            return _with(base, "not-applicable", item.target.not_applicable)
        return _with(base, "failed", "its steps did not run", step="patches")
    linked: ModuleRecord | None = _record(item.module_record, ModuleRecord)
    if linked is not None and linked.refused is None:
        base = replace(base, unsigned=linked.unsigned,
                       signer=linked.signature["signer"] if linked.signature else None,
                       signature_hash=linked.signature["hash"] if linked.signature else None)
    proof: ProveRecord | None = _record(item.prove_record, ProveRecord)
    if proof is None:
        return _with(base, "failed", "its steps did not run (not proven)", step="prove")
    if proof.refused is not None:
        return _with(base, "refused", proof.refused)
    return _with(base, "passed", "", changed_functions=changed_functions(item),
                 console_log=str(proof.console_log))


def _with(base: CellResult, status: Status, reason: str, **fields: Any) -> CellResult:
    return replace(base, status=status, reason=reason, **fields)


def matrix_report(items: list[TargetPipeline], runs: dict[str, CellRun],
                  seconds: float) -> MatrixReport:
    cells = [cell_result(item, runs.get(item.label, CellRun())) for item in items]
    notes = tuple(f"{cell.cell} now runs on {cell.release} (was {cell.previous_release})"
                  for cell in cells if cell.previous_release)
    notes += tuple(f"compiler override: {cell.cell}: {cell.compiler_override}"
                   for cell in cells if cell.compiler_override)
    notes += signature_notes(cells)
    return MatrixReport(tuple(cells), seconds, notes)


def signature_notes(cells: Sequence[CellResult]) -> tuple[str, ...]:
    """One line per signer, and one for the unsigned modules, each with its cells."""
    by_signature: dict[str, list[str]] = {}
    for cell in cells:
        if cell.signature and cell.status == "passed":
            by_signature.setdefault(cell.signature, []).append(cell.cell)
    return tuple(f"{signature}: {', '.join(named)}"
                 for signature, named in sorted(by_signature.items()))


def write_reports(report: MatrixReport, where: Path, *, json_copy: str | None = None,
                  junit_copy: str | None = None) -> str:
    """The report as ``test.json``, ``junit.xml`` and ``table.txt`` in ``where`` (and
    copies of the first two where a run's ``json=``/``junit=`` say), each failed cell's
    console log kept in ``where/console/``; returns the table and where the files are."""
    cells = []
    for cell in report.cells:
        if cell.status == "failed" and cell.console_log and Path(cell.console_log).is_file():
            kept = where / "console" / f"{cell.recipe}--{cell.target}.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cell.console_log, kept)
            cell = replace(cell, console_log=str(kept))
        cells.append(cell)
    report = MatrixReport(tuple(cells), report.seconds, report.notes)
    text = table.render(report)
    as_json = json.dumps(report.to_json(), indent=2) + "\n"
    as_junit = junit.to_junit(report).decode()
    files = {where / "test.json": as_json, where / "junit.xml": as_junit,
             where / "table.txt": text}
    if json_copy:
        files[Path(json_copy).resolve()] = as_json
    if junit_copy:
        files[Path(junit_copy).resolve()] = as_junit
    for path, content in files.items():
        write_text(path, content)
    copies = [str(path) for path in files if path.parent != where]
    body, summary = text.rstrip("\n").rsplit("\n", 1)
    return (f"\n{body}\nreports: {where}/test.json, junit.xml, table.txt"
            + (f"; copies: {', '.join(copies)}" if copies else "") + f"\n{summary}\n")
