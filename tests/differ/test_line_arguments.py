"""The table of line-taking functions (kpatchbuild/differ/line_arguments.txt) covers every
function a real kernel tree passes __LINE__ to."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.differ.lines import LINE_ARGUMENT
from tests.conftest import KernelTree
from tests.differ.line_arguments import scan_line_arguments

pytestmark = pytest.mark.kernel

TABLE = Path(__file__).resolve().parents[2] / "kpatchbuild" / "differ" / "line_arguments.txt"


def test_table_covers_the_tree(debian_kernel_tree: KernelTree) -> None:
    scanned = scan_line_arguments(debian_kernel_tree.path)
    table = LINE_ARGUMENT
    missing = {name: sorted(positions - table.get(name, set()))
               for name, positions in scanned.items() if positions - table.get(name, set())}
    assert not missing, f"add to {TABLE.name}: {missing}"
    assert {"__might_sleep", "__ext4_journal_stop", "__btrfs_abort_transaction"} <= set(scanned)
    assert "printk" not in scanned and "dev_err" not in scanned  # variadic; a macro
