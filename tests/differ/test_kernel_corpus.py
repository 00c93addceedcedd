"""The differ on real Debian objects (6.1, 6.12, and 6.1 built with gcc 11): one edit per case."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kpatchbuild.__main__ import main
from kpatchbuild.differ.symbols import load_symbol_table
from kpatchbuild.elf import read_elf, read_elf_bytes, write_elf
from kpatchbuild.elf.model import STT_FILE
from tests.conftest import KernelTree, chroot_kernel_tree
from tests.differ.kernel_corpus import (
    CASES,
    SERIES,
    BuiltPair,
    Case,
    CorpusBuilder,
    dyndbg_descriptors,
)
from tests.elf.snapshot import snapshot
from tests.support.chroots import SUITE_TREES

pytestmark = pytest.mark.kernel


# Each tree with the compiler Debian built it with: Debian 12's 6.1 and 6.12 (gcc 12),
# Debian 13's 6.12 (gcc 14) and Debian 11's 5.10 (gcc 10), the last two prepared and
# compiled in chroots of their releases; and once more with the other compiler each of
# those releases ships: 6.1 with gcc 11, 5.10 with gcc 9, 6.12 with gcc 13.
_HOST_TREE_FIXTURES = {
    "6.1": "debian_kernel_tree",
    "6.12": "debian_6_12_kernel_tree",
    "6.1-gcc11": "debian_6_1_gcc11_kernel_tree",
}
TREES = [*_HOST_TREE_FIXTURES, *SUITE_TREES]
assert set(SERIES) <= set(TREES)


@pytest.fixture(scope="session", params=TREES)
def kernel_tree(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> KernelTree:
    """Each kernel tree in turn: every test below runs once per tree."""
    if request.param in SUITE_TREES:
        return chroot_kernel_tree(request.param, tmp_path_factory)
    return request.getfixturevalue(_HOST_TREE_FIXTURES[request.param])


@pytest.fixture(scope="session")
def corpus(kernel_tree: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> CorpusBuilder:
    return CorpusBuilder(
        kernel_tree.path, kernel_tree.release,
        tmp_path_factory.mktemp(f"corpus-{kernel_tree.name}"),
        kernel_tree.compiler, kernel_tree.chroot,
    )


def test_objects_come_from_the_tree_compiler(corpus: CorpusBuilder,
                                             kernel_tree: KernelTree) -> None:
    compiler = kernel_tree.compiler or "gcc"
    version = kernel_tree.run([compiler, "-dumpfullversion"]).stdout.strip()
    comment = read_elf(corpus.original("fs/proc/cmdline.c")).section_by_name(".comment")
    assert comment is not None and f") {version}".encode() in comment.data


@pytest.fixture(scope="session")
def entry_sizes(corpus: CorpusBuilder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Special-section entry sizes measured by compiling the probe against the tree."""
    sizes = corpus.entry_sizes()
    path = tmp_path_factory.mktemp("sizes") / "sizes.json"
    path.write_text(json.dumps(sizes))
    return path


EXPECTED_SIZES = {
    # Debian 11's 5.10 (5.10.223): the same sizes as 6.1; struct alt_instr lost its padlen
    # byte before 5.10 was released (13 -> 12 bytes, packed).
    "5.10": {
        "__bug_table": 12,
        "__ex_table": 12,
        ".altinstructions": 12,
        "__jump_table": 16,
        ".static_call_sites": 8,
        ".orc_unwind": 6,
        ".parainstructions": 16,
        "__dyndbg": 56,
    },
    "6.1": {
        "__bug_table": 12,
        "__ex_table": 12,
        ".altinstructions": 12,
        "__jump_table": 16,
        ".static_call_sites": 8,
        ".orc_unwind": 6,
        ".parainstructions": 16,
        "__dyndbg": 56,
    },
    # struct alt_instr grew a 32-bit ft_flags (6.3); paravirt patching went into
    # alternatives (6.8), taking .parainstructions with it.
    "6.12": {
        "__bug_table": 12,
        "__ex_table": 12,
        ".altinstructions": 14,
        "__jump_table": 16,
        ".static_call_sites": 8,
        ".orc_unwind": 6,
        "__dyndbg": 56,
    },
}


# The compiler does not change the layouts: Debian 13's 6.12 (gcc 14 or 13) measures as
# Debian 12's (gcc 12), 6.1 configured with gcc 11 as 6.1, 5.10 with gcc 9 as with gcc 10.
EXPECTED_SIZES["6.12-gcc14"] = EXPECTED_SIZES["6.12"]
EXPECTED_SIZES["6.1-gcc11"] = EXPECTED_SIZES["6.1"]
EXPECTED_SIZES["6.12-gcc13"] = EXPECTED_SIZES["6.12"]
EXPECTED_SIZES["5.10-gcc9"] = EXPECTED_SIZES["5.10"]


def test_probe_measures_the_tree_sizes(entry_sizes: Path, kernel_tree: KernelTree) -> None:
    assert json.loads(entry_sizes.read_text()) == EXPECTED_SIZES[kernel_tree.name]


@pytest.mark.parametrize("source", ["fs/proc/cmdline.c", "fs/proc/base.c", "fs/readdir.c"])
def test_round_trip_real_objects(corpus: CorpusBuilder, source: str, tmp_path: Path) -> None:
    original_path = corpus.original(source)
    original = read_elf(original_path)
    written = write_elf(original)
    assert snapshot(read_elf_bytes(written)) == snapshot(original)
    rewritten = tmp_path / "rewritten.o"
    rewritten.write_bytes(written)
    readelf = subprocess.run(["readelf", "-a", "-W", str(rewritten)], capture_output=True,
                             text=True)
    assert readelf.returncode == 0 and readelf.stderr == ""
    subprocess.run(["ld", "-r", "-o", str(tmp_path / "linked.o"), str(rewritten)], check=True)


def _functions_in(path: Path) -> set[str]:
    text = subprocess.run(["objdump", "-dr", str(path)], capture_output=True, text=True,
                          check=True).stdout
    import re

    # objdump also labels code sections that have no symbol (.altinstr_replacement), and
    # the padding before a function (CONFIG_CALL_PADDING, 6.2+) as `name-0x10`.
    labels = set(re.findall(r"^[0-9a-f]+ <([^>]+)>:$", text, re.M))
    return {re.sub(r"-0x[0-9a-f]+$", "", label) for label in labels
            if not label.startswith(".")}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(
    case: Case,
    corpus: CorpusBuilder,
    kernel_tree: KernelTree,
    entry_sizes: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = case.for_series(kernel_tree.series, kernel_tree.name)
    pair: BuiltPair = corpus.build(case)
    out = tmp_path / "out.o"
    report = tmp_path / "report.json"
    code = main([
        "diff", str(pair.orig), str(pair.patched), "-o", str(out),
        "--symbols", str(kernel_tree.symbols), "--target", "vmlinux",
        "--symvers", str(kernel_tree.module_symvers),
        "--entry-sizes", str(entry_sizes), "--json", str(report),
        "--kernel-version", kernel_tree.release,
    ])
    captured = capsys.readouterr()
    assert code == case.exit_code, captured.err
    if case.exit_code == 2:
        assert case.refusal in captured.err
        assert len(captured.err.strip().splitlines()) == 1
        assert not out.exists()
        return
    data = json.loads(report.read_text())
    assert {f["name"] for f in data["changed_functions"]} == case.changed
    assert {f["name"] for f in data["new_functions"]} == case.new
    if case.exit_code == 3:
        assert data["status"] == "no-change" and not out.exists()
        return
    lines = [line for line in captured.out.splitlines() if " function: " in line]
    assert sorted(lines) == sorted(
        [f"{Path(pair.patched).name}: changed function: {n}" for n in case.changed]
        + [f"{Path(pair.patched).name}: new function: {n}" for n in case.new]
    )
    kept = {s["name"] for s in data["sections"]}
    assert case.kept_sections <= kept, kept
    for note in case.notes:
        assert any(note in n for n in data["notes"]), data["notes"]
    # The output is a valid object: readelf is silent, ld -r links it, objdump shows exactly
    # the carried functions.
    readelf = subprocess.run(["readelf", "-a", "-W", str(out)], capture_output=True, text=True)
    assert readelf.returncode == 0 and readelf.stderr == ""
    subprocess.run(["ld", "-r", "-o", str(tmp_path / "linked.o"), str(out)], check=True)
    assert _functions_in(out) == case.changed | case.new | case.carried
    # Dynamic-debug descriptors follow their functions: all of theirs come, no others.
    expected_descriptors = [d for d in dyndbg_descriptors(pair.patched) if d[0] in case.dyndbg]
    assert dyndbg_descriptors(out) == expected_descriptors
    assert bool(expected_descriptors) == bool(case.dyndbg)
    # Every undefined symbol of the output has a resolution in the report.
    resolved = {s["name"] for s in data["symbols"] if s["resolution"] != "included"}
    undefined = {s.name for s in read_elf(out).symbols if s.is_undefined and s.name}
    assert undefined == resolved
    assert case.references <= resolved, resolved
    for symbol in data["symbols"]:
        if symbol["resolution"] == "klp":
            assert symbol["name"] == (
                f".klp.sym.vmlinux.{symbol['target_name']},{symbol['sympos']}"
            )
    _check_local_positions(data, pair, kernel_tree, case)
    defined = {s.name for s in read_elf(out).symbols if s.section is not None}
    for prefix in case.fresh_locals:
        assert any(name.startswith(f"{prefix}.") for name in defined), defined


def _check_local_positions(report: dict, pair: BuiltPair, kernel_tree: KernelTree,
                           case: Case) -> None:
    """Each duplicated local the output references is its own file's one, counted as
    kallsyms counts (checked against vmlinux's own symbol table, file symbols included)."""
    local_klp = [s for s in report["symbols"] if s["resolution"] == "klp" and s["sympos"]]
    for prefix in case.klp_locals:
        assert any(s["target_name"].startswith(prefix) for s in local_klp), local_klp
    if kernel_tree.compact_symbols is None:
        return
    table = load_symbol_table(kernel_tree.compact_symbols)
    source_file = next(s.name for s in read_elf(pair.orig).symbols if s.type == STT_FILE)
    for symbol in local_klp:
        chosen = table.named(symbol["target_name"])[symbol["sympos"] - 1]
        if not chosen.is_global:
            assert chosen.source_file == source_file, (symbol, chosen)


def test_a_tracepoint_entry_is_dropped_for_a_kernel_before_5_8(
        corpus: CorpusBuilder, kernel_tree: KernelTree, entry_sizes: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Real objects of this tree, judged as for a kernel whose loader binds livepatch
    # relocations after reading the jump table (`--kernel-version 5.4`): the tracepoint's
    # entry goes, the site stays as compiled (disabled), and a note says so.
    case = next(c for c in CASES if c.name == "tracepoint_vmlinux_key")
    pair = corpus.build(case.for_series(kernel_tree.series, kernel_tree.name))
    out, report = tmp_path / "out.o", tmp_path / "report.json"
    code = main(["diff", str(pair.orig), str(pair.patched), "-o", str(out),
                 "--symbols", str(kernel_tree.symbols), "--target", "vmlinux",
                 "--symvers", str(kernel_tree.module_symvers),
                 "--entry-sizes", str(entry_sizes), "--json", str(report),
                 "--kernel-version", "5.4"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert {f["name"] for f in data["changed_functions"]} == {"__set_task_comm"}
    assert any(n.startswith("tracepoint task_rename in ") and "before 5.8" in n
               for n in data["notes"]), data["notes"]
    # Its only jump entry was the tracepoint's (kept on 5.8+: test_corpus_case).
    assert "__jump_table" not in {s["name"] for s in data["sections"]}
