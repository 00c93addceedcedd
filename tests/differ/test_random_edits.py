"""Random single-function edits on Debian's 6.1 (tests/differ/random_edits.py): a subset of
the cases bench/random_edits.py runs, each judged by the rules there and compared with the
outcome kept for this release."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.differ.symbols import load_module_symvers, load_symbol_table
from tests.conftest import KernelTree
from tests.differ.kernel_corpus import CorpusBuilder
from tests.differ.random_edits import generate, load_expectations, problems, run_case

pytestmark = pytest.mark.kernel

CI_CASES = 16  # of the bench's 120: what CI's time allows (about two minutes)


def test_random_edits(debian_kernel_tree: KernelTree, tmp_path: Path) -> None:
    tree = debian_kernel_tree
    builder = CorpusBuilder(tree.path, tree.release, tmp_path / "objects")
    symbols = load_symbol_table(tree.symbols)
    exports = load_module_symvers(tree.module_symvers)
    expected = load_expectations(tree.release)
    found, compared, outcomes = [], 0, set()
    for case, corpus_case in generate(CI_CASES, tree.path):
        run_case(case, corpus_case, builder, symbols, exports, tree.release, tmp_path)
        found += problems(case)
        outcomes.add(case.exit_code)
        kept = expected.get(case.index)
        if kept is not None and kept["function"] == case.function:
            compared += 1
            assert (case.exit_code, case.changed, case.new) == (
                kept["exit_code"], kept["changed"], kept["new"]), case
    assert not found, "\n".join(found)
    assert 0 in outcomes  # the subset exercises written patches, not only refusals
    if expected:
        assert compared >= CI_CASES // 2
