"""The matrix's report: what a developer reads on the terminal and what CI systems parse."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from kpatchbuild.base.errors import KpbError
from kpatchbuild.report import junit, table
from kpatchbuild.report.results import CellResult, MatrixReport, merge, read_report

PROJECT = Path(__file__).resolve().parents[2]


def sample(tmp_path: Path) -> MatrixReport:
    console = tmp_path / "console.log"
    console.write_text("[    0.000] Linux version 6.1\x1b[0m\x07\nKPB-STEP check-patched fail\n")
    return MatrixReport((
        CellResult("cmdline", "debian12-6.1-cloud-amd64", "passed", release="6.1.0-57-cloud-amd64",
                   changed_functions=("cmdline_proc_show",), build_seconds=12.3,
                   proof_seconds=3.2, console_log=str(console)),
        CellResult("cmdline", "debian12-6.12-cloud-amd64", "not-applicable",
                   reason="the 6.12 file moved", release="6.12.117+deb12-cloud-amd64"),
        CellResult("broken", "debian12-6.1-cloud-amd64", "failed",
                   reason="VM proof of livepatch_broken: check-patched: the check failed",
                   step="prove", release="6.1.0-57-cloud-amd64",
                   previous_release="6.1.0-56-cloud-amd64", build_seconds=1.0,
                   proof_seconds=2.5, console_log=str(console)),
        CellResult("refused-data", "debian12-6.1-cloud-amd64", "refused",
                   reason="data layout changed", release="6.1.0-57-cloud-amd64"),
        CellResult("cmdline", "tiny-6.1", "passed", release="6.1.192", build_seconds=0.4),
    ), seconds=20.0, notes=("broken/debian12-6.1-cloud-amd64 now runs on 6.1.0-57-cloud-amd64 "
                            "(was 6.1.0-56-cloud-amd64)",))


def test_the_summary_counts_what_passed_failed_and_did_not_apply(tmp_path: Path) -> None:
    report = sample(tmp_path)
    assert report.summary() == ("3 passed, 1 failed, 1 of the passed refused as expected, "
                                "1 not applicable")
    assert [c.cell for c in report.failed] == ["broken/debian12-6.1-cloud-amd64"]


def test_the_table_names_each_cell_and_ends_with_the_summary(tmp_path: Path) -> None:
    text = table.render(sample(tmp_path))
    lines = text.splitlines()
    assert lines[0].split() == ["cell", "kernel", "release", "result", "changed", "functions",
                                "build", "s", "proof", "s"]
    row = next(line for line in lines if line.startswith("cmdline/debian12-6.1-cloud-amd64"))
    assert row.split() == ["cmdline/debian12-6.1-cloud-amd64", "6.1.0-57-cloud-amd64", "passed",
                           "cmdline_proc_show", "12.3", "3.2"]
    tiny = next(line for line in lines if line.startswith("cmdline/tiny-6.1"))
    assert tiny.split()[-1] == "cached"
    assert any(line.startswith("FAILED broken/debian12-6.1-cloud-amd64 at prove: VM proof")
               and line.endswith(f"console log: {tmp_path / 'console.log'}") for line in lines)
    assert "not applicable: cmdline/debian12-6.12-cloud-amd64: the 6.12 file moved" in lines
    assert lines[-2].startswith("broken/debian12-6.1-cloud-amd64 now runs on")
    assert lines[-1] == sample(tmp_path).summary()


def test_json_round_trips_and_checks_its_format(tmp_path: Path) -> None:
    report = sample(tmp_path)
    report.write(tmp_path / "test.json")
    assert read_report(tmp_path / "test.json") == report
    data = json.loads((tmp_path / "test.json").read_text())
    data["format"] = 99
    (tmp_path / "test.json").write_text(json.dumps(data))
    with pytest.raises(KpbError, match="report format 99, this kpatchbuild reads 1"):
        read_report(tmp_path / "test.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(KpbError, match="bad.json: not a JSON report"):
        read_report(tmp_path / "bad.json")


def test_junit_validates_against_the_published_schema(tmp_path: Path,
                                                      junit_schema: Path) -> None:
    data = junit.to_junit(sample(tmp_path))
    (tmp_path / "junit.xml").write_bytes(data)
    xmlschema.XMLSchema(str(junit_schema)).validate(str(tmp_path / "junit.xml"))
    suite = ET.fromstring(data).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "1", "1")
    cases = {(c.get("classname"), c.get("name")): c for c in suite.iter("testcase")}
    failed = cases[("broken", "debian12-6.1-cloud-amd64")]
    failure = failed.find("failure")
    assert failure is not None and failure.get("type") == "prove"
    assert failure.get("message") == \
        "VM proof of livepatch_broken: check-patched: the check failed"
    out = failed.findtext("system-out") or ""
    assert "KPB-STEP check-patched fail" in out and "previous release: 6.1.0-56" in out
    assert "\x1b" not in out  # the console's escape characters have no place in XML
    skipped = cases[("cmdline", "debian12-6.12-cloud-amd64")].find("skipped")
    assert skipped is not None and skipped.get("message") == "the 6.12 file moved"
    assert cases[("cmdline", "debian12-6.1-cloud-amd64")].get("time") == "15.500"


def test_merge_keeps_every_cell_and_the_later_result(tmp_path: Path) -> None:
    report = sample(tmp_path)
    first = MatrixReport(report.cells[:3], 10.0)
    rerun = CellResult("broken", "debian12-6.1-cloud-amd64", "passed", release="6.1.0-57")
    second = MatrixReport((*report.cells[3:], rerun), 12.0, report.notes)
    merged = merge([first, second])
    assert [c.cell for c in merged.cells] == sorted(c.cell for c in report.cells)
    assert next(c for c in merged.cells if c.recipe == "broken").status == "passed"
    assert merged.seconds == 12.0 and merged.notes == report.notes


def test_merge_reports_command_writes_one_report_and_fails_when_a_cell_did(
        tmp_path: Path, junit_schema: Path) -> None:
    report = sample(tmp_path)
    MatrixReport(report.cells[:2]).write(tmp_path / "a" / "test.json")
    MatrixReport(report.cells[2:]).write(tmp_path / "b" / "test.json")
    result = subprocess.run([sys.executable, "-m", "kpatchbuild", "merge-reports",
                             str(tmp_path / "a/test.json"), str(tmp_path / "b/test.json"),
                             "-o", str(tmp_path / "all")],
                            capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[-1] == MatrixReport(report.cells).summary()
    assert read_report(tmp_path / "all/test.json").cells == report.cells
    xmlschema.XMLSchema(str(junit_schema)).validate(str(tmp_path / "all/junit.xml"))
    missing = subprocess.run([sys.executable, "-m", "kpatchbuild", "merge-reports",
                              str(tmp_path / "none.json"), "-o", str(tmp_path / "x")],
                             capture_output=True, text=True, cwd=PROJECT)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith(f"kpatchbuild: error: {tmp_path / 'none.json'}: cannot read")
