"""One cell's result and a run's report, as values with a JSON form that merges."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from kpatchbuild.base.errors import KpbError

Status = Literal["passed", "refused", "not-applicable", "failed"]
# What counts as passed: a refusal the recipe expects is the cell doing its job.
PASSING: tuple[Status, ...] = ("passed", "refused")


@dataclass(frozen=True)
class CellResult:
    """How one (recipe, kernel) cell ended in a run.

    ``reason`` is the one-line failure, the expected refusal's words or why the change does
    not apply. ``build_seconds`` counts this run's steps up to the module; ``proof_seconds``
    is None when the proof was not run again (its module and kernel had passed before).
    """

    recipe: str
    target: str
    status: Status
    reason: str = ""
    step: str | None = None  # the step that failed
    release: str | None = None
    previous_release: str | None = None  # when Debian moved on since the last run
    changed_functions: tuple[str, ...] = ()
    build_seconds: float = 0.0
    proof_seconds: float | None = None
    console_log: str | None = None
    compiler: str | None = None  # what compiled the cell's objects
    compiler_override: str | None = None  # set when the recipe accepted another gcc
    signer: str | None = None  # who signed the module (verified against the certificate)
    signature_hash: str | None = None
    unsigned: str | None = None  # why the module is not signed, when it is not

    @property
    def signature(self) -> str | None:
        """The module's signature in words: its signer and hash, or why it has none."""
        if self.signer is not None:
            return f"signed by '{self.signer}' ({self.signature_hash})"
        return self.unsigned

    @property
    def cell(self) -> str:
        return f"{self.recipe}/{self.target}"

    @property
    def passed(self) -> bool:
        return self.status in PASSING

    def to_json(self) -> dict[str, Any]:
        return {"cell": self.cell, "recipe": self.recipe, "target": self.target,
                "status": self.status, "reason": self.reason, "step": self.step,
                "release": self.release, "previous_release": self.previous_release,
                "changed_functions": list(self.changed_functions),
                "build_seconds": round(self.build_seconds, 3),
                "proof_seconds": None if self.proof_seconds is None
                else round(self.proof_seconds, 3),
                "console_log": self.console_log, "compiler": self.compiler,
                "compiler_override": self.compiler_override, "signer": self.signer,
                "signature_hash": self.signature_hash, "unsigned": self.unsigned}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellResult:
        return cls(data["recipe"], data["target"], data["status"], data["reason"],
                   data["step"], data["release"], data["previous_release"],
                   tuple(data["changed_functions"]), data["build_seconds"],
                   data["proof_seconds"], data["console_log"], data.get("compiler"),
                   data.get("compiler_override"), data.get("signer"),
                   data.get("signature_hash"), data.get("unsigned"))


@dataclass(frozen=True)
class MatrixReport:
    """The cells of one run (or of several runs' reports, merged), in cell order."""

    FORMAT: ClassVar[int] = 1

    cells: tuple[CellResult, ...]
    seconds: float = 0.0  # the run's wall time
    notes: tuple[str, ...] = field(default=())  # e.g. cells on a new release

    def __post_init__(self) -> None:
        object.__setattr__(self, "cells", tuple(sorted(self.cells, key=lambda c: c.cell)))

    @property
    def failed(self) -> list[CellResult]:
        return [cell for cell in self.cells if not cell.passed
                and cell.status != "not-applicable"]

    def counts(self) -> Counter[str]:
        return Counter(cell.status for cell in self.cells)

    def summary(self) -> str:
        """``3 passed, 1 failed`` (with the refusals and not-applicable cells, when any)."""
        counts = self.counts()
        parts = [f"{counts['passed'] + counts['refused']} passed", f"{len(self.failed)} failed"]
        if counts["refused"]:
            parts.append(f"{counts['refused']} of the passed refused as expected")
        if counts["not-applicable"]:
            parts.append(f"{counts['not-applicable']} not applicable")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "summary": self.summary(),
                "seconds": round(self.seconds, 3), "notes": list(self.notes),
                "cells": [cell.to_json() for cell in self.cells]}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "report") -> MatrixReport:
        if data.get("format") != cls.FORMAT:
            raise KpbError(f"{where}: report format {data.get('format')!r}, this kpatchbuild "
                           f"reads {cls.FORMAT}; make it again with this version")
        return cls(tuple(CellResult.from_json(c) for c in data["cells"]), data["seconds"],
                   tuple(data["notes"]))

    def write(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_json(), indent=2) + "\n")


def read_report(path: Path) -> MatrixReport:
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise KpbError(f"{path}: cannot read the report: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise KpbError(f"{path}: not a JSON report ({error.msg} at line {error.lineno})") \
            from None
    return MatrixReport.from_json(data, str(path))


def merge(reports: Sequence[MatrixReport]) -> MatrixReport:
    """The cells of several reports in one (a CI matrix job's cells); a cell reported twice
    keeps its later result, as a re-run job's report replaces the first."""
    cells: dict[str, CellResult] = {}
    notes: list[str] = []
    for report in reports:
        for cell in report.cells:
            cells[cell.cell] = cell
        notes += [note for note in report.notes if note not in notes]
    return MatrixReport(tuple(cells.values()), max((r.seconds for r in reports), default=0.0),
                        tuple(notes))


def write_text(path: Path, text: str) -> None:
    """Whole or not at all: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)
