"""The differ against kpatch's create-diff-object on a fixed sample of random edits of
Debian's 6.1 (the whole run: bench/differential.py).

Every pair must compile the same way for both, and each disagreement must be one the
harness classifies as ours being right (kpatch's known over-inclusions); a disagreement
left "to review" is a bug of one side or the other until someone classifies it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.base.store import Store
from tests.conftest import KernelTree
from tests.differ.differential import (
    CI_TARGET,
    generate,
    harness_for,
    pipeline_symtab,
    run_pair,
)
from tests.support.kpatch_reference import kpatch_reference

SAMPLE = 8  # the first pairs of the fixed seed: five edit kinds, several files


@pytest.mark.kernel
def test_both_differs_agree_or_ours_is_right(debian_kernel_tree: KernelTree,
                                             tmp_path: Path) -> None:
    store = Store()
    reference = kpatch_reference(store)
    builder, kernel = harness_for(debian_kernel_tree, pipeline_symtab(store, CI_TARGET),
                                  tmp_path / "objects")
    sample = generate(SAMPLE, builder.tree)
    assert len({comparison.kind for comparison, _ in sample}) >= 4
    compared = [run_pair(comparison, case, builder, kernel, reference, tmp_path)
                for comparison, case in sample]
    compiled = [c for c in compared if c.compiled]
    assert len(compiled) >= SAMPLE - 2
    assert sum(c.agree for c in compiled) >= len(compiled) - 2
    for comparison in compiled:
        if not comparison.agree:
            assert comparison.classification.startswith("ours right"), comparison
