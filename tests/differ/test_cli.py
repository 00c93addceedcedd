"""The diff command: exit codes, one-line errors, decision lines, the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.differ.cfixtures import build_pair as build_plain_pair
from tests.differ.test_c_fixtures import BASE


def build_pair(tmp_path: Path, original: str, patched: str):  # noqa: ANN201
    """Built for ftrace, as kernel objects are: the command checks every function's call."""
    return build_plain_pair(tmp_path, original, patched, extra=("-pg", "-mfentry"))


ROOT = Path(__file__).resolve().parents[2]


def run_diff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kpatchbuild", "diff", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def _args(pair, tmp_path: Path, *extra: str) -> list[str]:  # noqa: ANN001
    return [str(pair.orig), str(pair.patched), "-o", str(tmp_path / "out.o"),
            "--symbols", str(pair.orig), "--target", "vmlinux", *extra]


def test_written_with_report(tmp_path: Path) -> None:
    pair = build_pair(tmp_path, BASE, BASE.replace("value %d", "new value %d"))
    report = tmp_path / "report.json"
    result = run_diff(*_args(pair, tmp_path, "--json", str(report)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["unit.o: changed function: report"]
    data = json.loads(report.read_text())
    assert data["status"] == "written"
    assert [f["name"] for f in data["changed_functions"]] == ["report"]
    how = {s["target_name"]: s["resolution"] for s in data["symbols"]}
    assert how["report"] == "included" and how["scale"] == "klp"
    assert (tmp_path / "out.o").exists()


def test_no_change_exit_3(tmp_path: Path) -> None:
    pair = build_pair(tmp_path, BASE, BASE)
    result = run_diff(*_args(pair, tmp_path))
    assert result.returncode == 3
    assert not (tmp_path / "out.o").exists()


def test_refusal_exit_2_one_line(tmp_path: Path) -> None:
    pair = build_pair(tmp_path, BASE, BASE.replace("{1, 2, 3, 4}", "{1, 2, 3, 9}"))
    result = run_diff(*_args(pair, tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "table" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "damage",
    ["missing", "not_elf", "truncated", "executable", "bad_machine"],
)
def test_bad_input_one_line(tmp_path: Path, damage: str) -> None:
    pair = build_pair(tmp_path, BASE, BASE)
    bad = tmp_path / "bad.o"
    raw = pair.patched.read_bytes()
    if damage == "not_elf":
        bad.write_text("not an object\n")
    elif damage == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "executable":
        source = tmp_path / "main.c"
        source.write_text("int main(void) { return 0; }\n")
        subprocess.run(["gcc", "-o", str(bad), str(source)], check=True)
    elif damage == "bad_machine":
        bad.write_bytes(raw[:18] + (183).to_bytes(2, "little") + raw[20:])
    result = run_diff(str(pair.orig), str(bad), "-o", str(tmp_path / "out.o"),
                      "--symbols", str(pair.orig), "--target", "vmlinux")
    assert result.returncode not in (0, 2, 3)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "bad.o" in lines[0] and "Traceback" not in result.stderr


def test_function_of_a_file_built_without_ftrace_refused(tmp_path: Path) -> None:
    """CFLAGS_REMOVE_x.o = -pg: the kernel could never redirect its functions."""
    pair = build_plain_pair(tmp_path, BASE, BASE.replace("value %d", "new value %d"))
    result = subprocess.run(
        [sys.executable, "-m", "kpatchbuild", "diff", str(pair.orig), str(pair.patched),
         "-o", str(tmp_path / "out.o"), "--symbols", str(pair.orig), "--target", "vmlinux"],
        capture_output=True, text=True)
    assert result.returncode == 2
    assert "changed function report has no __fentry__ call (its file is built without " \
        "ftrace" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.o").exists()


def test_provided_by_patch_names_file(tmp_path: Path) -> None:
    """A call to a global another object of the patch adds resolves inside the patch."""
    source = BASE + "extern int kpb_added(int);\nint caller(int v) { return v; }\n"
    pair = build_pair(tmp_path, source, source.replace("return v; }", "return kpb_added(v); }"))
    symvers = tmp_path / "Module.symvers"
    symvers.write_text("0x00000000\t__fentry__\tvmlinux\tEXPORT_SYMBOL\t\n")
    refused = run_diff(*_args(pair, tmp_path, "--symvers", str(symvers)))
    assert refused.returncode == 2 and "kpb_added" in refused.stderr
    names_file = tmp_path / "provided.txt"
    names_file.write_text("kpb_added\n")
    report = tmp_path / "report.json"
    result = run_diff(*_args(pair, tmp_path, "--symvers", str(symvers), "--json", str(report),
                             "--provided-by-patch", str(names_file)))
    assert result.returncode == 0, result.stderr
    how = {s["target_name"]: s for s in json.loads(report.read_text())["symbols"]}
    assert how["kpb_added"]["resolution"] == "provided" and how["kpb_added"]["object"] == "patch"
