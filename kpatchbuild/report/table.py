"""The report as the terminal shows it: one row per cell, the summary line last."""

from __future__ import annotations

from kpatchbuild.report.results import CellResult, MatrixReport

COLUMNS = ("cell", "kernel release", "result", "changed functions", "build s", "proof s")
FUNCTIONS_WIDTH = 40


def _result(cell: CellResult) -> str:
    return {"passed": "passed", "refused": "refused (expected)",
            "not-applicable": "not applicable", "failed": f"FAILED ({cell.step or 'cell'})"}[
        cell.status]


def _functions(cell: CellResult) -> str:
    text = ", ".join(cell.changed_functions) or "-"
    return text if len(text) <= FUNCTIONS_WIDTH else text[:FUNCTIONS_WIDTH - 3] + "..."


def _row(cell: CellResult) -> tuple[str, ...]:
    proof = "cached" if cell.proof_seconds is None and cell.status == "passed" \
        else "-" if cell.proof_seconds is None else f"{cell.proof_seconds:.1f}"
    return (cell.cell, cell.release or "-", _result(cell), _functions(cell),
            f"{cell.build_seconds:.1f}", proof)


def render(report: MatrixReport) -> str:
    """The table, then a line per failure (its reason and console log) and notes, then the
    summary: what a developer reads first is the last line."""
    rows = [COLUMNS, *(_row(cell) for cell in report.cells)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True))
             .rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    for cell in report.failed:
        console = f"; console log: {cell.console_log}" if cell.console_log else ""
        lines.append(f"FAILED {cell.cell} at {cell.step or 'cell'}: {cell.reason}{console}")
    for cell in report.cells:
        if cell.status == "not-applicable":
            lines.append(f"not applicable: {cell.cell}: {cell.reason}")
    lines += list(report.notes)
    lines.append(report.summary())
    return "\n".join(lines) + "\n"
