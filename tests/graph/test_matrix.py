"""The matrix's cells: selection, and each cell's result read from its records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.store import Store
from kpatchbuild.graph import matrix
from kpatchbuild.graph.pipeline import TargetPipeline
from kpatchbuild.graph.recipe import load_recipe
from kpatchbuild.graph.records import (
    DiffRecord,
    FetchRecord,
    ModuleRecord,
    OriginalRecord,
    PatchesRecord,
    ProveRecord,
    write_record,
)
from kpatchbuild.report.results import read_report
from kpatchbuild.stages.diff.objdiff import DiffFiles
from kpatchbuild.stages.fetch.debian import KernelRelease
from kpatchbuild.stages.fetch.source import SourceTree

PROJECT = Path(__file__).resolve().parents[2]
RECIPE = """targets:
  - debian: {release: 12, series: ["6.1", "6.12"], flavour: cloud-amd64}
  - debian: {release: 12, series: "6.12", flavour: amd64}
    expect: not-applicable
    reason: moved in 6.12
patches: [fix.patch]
"""


def cells(tmp_path: Path) -> list[TargetPipeline]:
    directory = tmp_path / "recipes" / "fix"
    directory.mkdir(parents=True)
    (directory / "fix.patch").write_text("--- a/x.c\n+++ b/x.c\n")
    (directory / "recipe.yaml").write_text(RECIPE)
    recipe = load_recipe(directory)
    store = Store(tmp_path / "cache")
    items = [TargetPipeline(store, recipe, target) for target in recipe.targets]
    for item in items:
        item.work.mkdir(parents=True)
    return items


def fetched(item: TargetPipeline, release: str, previous: str | None = None) -> None:
    kernel = KernelRelease(release, "6.1.192-3", {})
    write_record(item.fetch_record, FetchRecord("debian", SourceTree(Path("/s"), "k", {}),
                                                kernel, Path("/f"), previous_release=previous))


def test_kernel_patterns_select_cells(tmp_path: Path) -> None:
    items = cells(tmp_path)
    assert [i.target.name for i in matrix.select(items, "*6.12*")] == [
        "debian12-6.12-cloud-amd64", "debian12-6.12-amd64"]
    assert matrix.select(items, None) == items
    with pytest.raises(KpbError, match=r"kernel=5\.10\*: no target matches \(targets: "
                                       r"debian12-6.1-cloud-amd64, "):
        matrix.select(items, "5.10*")
    # Yesterday's names say what they are called now.
    with pytest.raises(KpbError, match=r"Debian targets are named after their Debian release "
                                       r"now: debian12-6.1-cloud-amd64 for Debian 12's$"):
        matrix.select(items, "debian-6.1-cloud-amd64")


def test_a_proven_cell_passed_with_its_functions_and_times(tmp_path: Path) -> None:
    item = cells(tmp_path)[0]
    fetched(item, "6.1.0-57-cloud-amd64", previous="6.1.0-56-cloud-amd64")
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"changed_functions": [{"name": "cmdline_proc_show"}]}))
    write_record(item.diff_record, DiffRecord((DiffFiles("fs/proc/cmdline.o", "vmlinux", report,
                                                         tmp_path / "out.o"),)))
    write_record(item.prove_record, ProveRecord(tmp_path / "m.ko", tmp_path / "console.log",
                                                ("insmod",), True, 3.0, "tcg"))
    run = matrix.CellRun(seconds={"patched": 2.0, "module": 1.5, "prove": 3.2})
    result = matrix.cell_result(item, run)
    assert (result.status, result.release, result.previous_release) == (
        "passed", "6.1.0-57-cloud-amd64", "6.1.0-56-cloud-amd64")
    assert result.changed_functions == ("cmdline_proc_show",)
    assert (result.build_seconds, result.proof_seconds) == (3.5, 3.2)
    assert result.console_log == str(tmp_path / "console.log")
    report_of_run = matrix.matrix_report([item], {item.label: run}, 9.0)
    assert report_of_run.notes == ("fix/debian12-6.1-cloud-amd64 now runs on 6.1.0-57-cloud-amd64 "
                                   "(was 6.1.0-56-cloud-amd64)",)


def test_a_compiler_override_is_in_every_report_of_the_cell(tmp_path: Path) -> None:
    item = cells(tmp_path)[1]
    override = ("built with gcc 12.2.0-15, not the kernel's own 'gcc-12 (Debian "
                "12.2.0-14+deb12u1) 12.2.0' (the recipe's accept_compiler)")
    write_record(item.original_record, OriginalRecord(
        "prepared", "k", tmp_path, "6.12.117", "gcc (Debian 12.2.0-15) 12.2.0", override))
    result = matrix.cell_result(item, matrix.CellRun())
    assert (result.compiler, result.compiler_override) == ("gcc (Debian 12.2.0-15) 12.2.0",
                                                           override)
    report = matrix.matrix_report([item], {}, 1.0)
    assert f"compiler override: fix/debian12-6.12-cloud-amd64: {override}" in report.notes
    matrix.write_reports(report, tmp_path / "reports")
    table = (tmp_path / "reports/table.txt").read_text()
    assert f"compiler override: fix/debian12-6.12-cloud-amd64: {override}" in table
    junit = (tmp_path / "reports/junit.xml").read_text()
    assert "compiler override: built with gcc 12.2.0-15" in junit
    data = json.loads((tmp_path / "reports/test.json").read_text())
    assert data["cells"][0]["compiler_override"] == override
    assert read_report(tmp_path / "reports/test.json").cells[0].compiler_override \
        == override


def proven(item: TargetPipeline, tmp_path: Path, **module: object) -> None:
    write_record(item.module_record, ModuleRecord(tmp_path / "m.ko", "k", tmp_path / "log",
                                                  "x", **module))  # type: ignore[arg-type]
    write_record(item.prove_record, ProveRecord(tmp_path / "m.ko", tmp_path / "console.log",
                                                ("insmod",), True, 3.0, "tcg"))


def test_every_report_names_the_signer_and_the_hash(tmp_path: Path) -> None:
    signed, unsigned = cells(tmp_path)[:2]
    proven(signed, tmp_path, signature={"signer": "Team key", "hash": "sha256",
                                        "key_id": "0f18", "certificate_sha256": "ab"})
    proven(unsigned, tmp_path, unsigned="unsigned: a kernel in lockdown (Secure Boot) "
                                        "refuses it")
    result = matrix.cell_result(signed, matrix.CellRun())
    assert (result.signer, result.signature_hash, result.unsigned) == ("Team key", "sha256",
                                                                       None)
    report = matrix.matrix_report([signed, unsigned], {}, 1.0)
    assert report.notes == (
        "signed by 'Team key' (sha256): fix/debian12-6.1-cloud-amd64",
        "unsigned: a kernel in lockdown (Secure Boot) refuses it: "
        "fix/debian12-6.12-cloud-amd64")
    matrix.write_reports(report, tmp_path / "reports")
    table = (tmp_path / "reports/table.txt").read_text()
    assert "signed by 'Team key' (sha256): fix/debian12-6.1-cloud-amd64" in table
    junit = (tmp_path / "reports/junit.xml").read_text()
    assert "module: signed by 'Team key' (sha256)" in junit
    assert "module: unsigned: a kernel in lockdown (Secure Boot) refuses it" in junit
    data = json.loads((tmp_path / "reports/test.json").read_text())
    assert [(c["signer"], c["signature_hash"], c["unsigned"]) for c in data["cells"]] == [
        ("Team key", "sha256", None),
        (None, None, "unsigned: a kernel in lockdown (Secure Boot) refuses it")]
    again = read_report(tmp_path / "reports/test.json").cells
    assert [c.signature for c in again] == [
        "signed by 'Team key' (sha256)",
        "unsigned: a kernel in lockdown (Secure Boot) refuses it"]


def test_a_failed_cell_names_its_first_failure_and_keeps_the_console(tmp_path: Path) -> None:
    item = cells(tmp_path)[1]
    write_record(item.original_record, OriginalRecord("prepared", "k", tmp_path, "6.12.117"))
    (item.work / "prove").mkdir()
    (item.work / "prove" / "console.log").write_text("boot\n")
    run = matrix.CellRun()
    run.failed("prove", "VM proof of m: check-patched: the check failed")
    run.failed("test", "prove:fix/debian12-6.12-cloud-amd64")  # what could not run after it
    result = matrix.cell_result(item, run)
    assert (result.status, result.step, result.release) == ("failed", "prove", "6.12.117")
    assert result.reason == "VM proof of m: check-patched: the check failed"
    assert result.console_log == str(item.work / "prove" / "console.log")
    written = matrix.write_reports(matrix.MatrixReport((result,)), tmp_path / "reports")
    kept = tmp_path / "reports/console/fix--debian12-6.12-cloud-amd64.log"
    assert kept.read_text() == "boot\n"
    assert written.splitlines()[-2:] == [
        f"reports: {tmp_path / 'reports'}/test.json, junit.xml, table.txt",
        "0 passed, 1 failed"]
    assert json.loads((tmp_path / "reports/test.json").read_text())["cells"][0][
        "console_log"] == str(kept)


def test_not_applicable_holds_only_when_the_patches_did_not_apply(tmp_path: Path) -> None:
    item = cells(tmp_path)[2]
    assert item.last_step == "patches"
    assert matrix.cell_result(item, matrix.CellRun()).status == "failed"
    write_record(item.patches_record, PatchesRecord(("fix.patch",), 1, (),
                                                    not_applicable="hunk #1 does not apply"))
    result = matrix.cell_result(item, matrix.CellRun())
    assert (result.status, result.reason) == ("not-applicable", "moved in 6.12")


def test_an_expected_refusal_passes(tmp_path: Path) -> None:
    item = cells(tmp_path)[0]
    write_record(item.prove_record, ProveRecord(refused="data layout changed"))
    result = matrix.cell_result(item, matrix.CellRun())
    assert (result.status, result.reason, result.passed) == (
        "refused", "data layout changed", True)


def test_cells_command_lists_the_matrix_as_json(tmp_path: Path) -> None:
    cells(tmp_path)
    result = subprocess.run([sys.executable, "-m", "kpatchbuild", "cells", "--json",
                             "--kernel", "*6.12*"], capture_output=True, text=True, cwd=PROJECT,
                            env={"KPATCHBUILD_RECIPES": str(tmp_path / "recipes"),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [(c["cell"], c["task"], c["not_applicable"]) for c in listed] == [
        ("fix/debian12-6.12-cloud-amd64", "test:fix/debian12-6.12-cloud-amd64", None),
        ("fix/debian12-6.12-amd64", "test:fix/debian12-6.12-amd64", "moved in 6.12")]
