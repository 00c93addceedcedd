"""The report as JUnit XML, the format CI systems read: one testcase per cell.

Written to the schema Jenkins' xunit plugin publishes (junit-10.xsd), which GitHub's, GitLab's
and Jenkins' readers all accept: a failed cell's ``<failure>`` carries the one-line reason as
its message, and its console log (or the tail of it) as ``<system-out>``; a cell that does not
apply is ``<skipped>`` with the recipe's reason.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from kpatchbuild.report.results import CellResult, MatrixReport

# A CI page shows the end of a console; a boot's log is some 50 KB, a stuck one more.
CONSOLE_TAIL_BYTES = 256 * 1024
# XML 1.0 has no place for most control characters, which a kernel console can print.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _console(cell: CellResult) -> str | None:
    if not cell.console_log:
        return None
    try:
        data = Path(cell.console_log).read_bytes()
    except OSError:
        return f"(console log {cell.console_log} is not on this machine)"
    cut = data[-CONSOLE_TAIL_BYTES:]
    head = f"console log {cell.console_log}" + (" (its end)" if len(cut) < len(data) else "")
    return f"{head}:\n{cut.decode(errors='replace')}"


def _testcase(cell: CellResult) -> ET.Element:
    seconds = cell.build_seconds + (cell.proof_seconds or 0.0)
    case = ET.Element("testcase", name=cell.target, classname=cell.recipe,
                      time=_seconds(seconds))
    if cell.status == "failed":
        failure = ET.SubElement(case, "failure", type=cell.step or "cell",
                                message=_clean(cell.reason))
        failure.text = _clean(f"{cell.cell}: {cell.step or 'cell'} failed: {cell.reason}")
    elif cell.status == "not-applicable":
        ET.SubElement(case, "skipped", type="not-applicable", message=_clean(cell.reason))
    details = [f"kernel release: {cell.release or 'unknown'}"]
    if cell.compiler:
        details.append(f"compiler: {cell.compiler}")
    if cell.compiler_override:
        details.append(f"compiler override: {cell.compiler_override}")
    if cell.signature:
        details.append(f"module: {cell.signature}")
    if cell.previous_release:
        details.append(f"previous release: {cell.previous_release}")
    if cell.changed_functions:
        details.append(f"changed functions: {', '.join(cell.changed_functions)}")
    if cell.status == "refused":
        details.append(f"refused as the recipe expects: {cell.reason}")
    console = _console(cell)
    if console:
        details.append(console)
    ET.SubElement(case, "system-out").text = _clean("\n".join(details))
    return case


def to_junit(report: MatrixReport) -> bytes:
    suites = ET.Element("testsuites", name="kpatchbuild test", tests=str(len(report.cells)),
                        failures=str(len(report.failed)), errors="0",
                        time=_seconds(report.seconds))
    suite = ET.SubElement(suites, "testsuite", name="kpatchbuild", tests=str(len(report.cells)),
                          failures=str(len(report.failed)), errors="0",
                          skipped=str(report.counts()["not-applicable"]),
                          time=_seconds(report.seconds))
    suite.extend(_testcase(cell) for cell in report.cells)
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"
