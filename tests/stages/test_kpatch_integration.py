"""kpatch's own integration patches for Linux 6.2, through kpatchbuild unchanged, on
Debian's generic 6.1 kernel: the ones kpatch builds build and prove, the two it refuses are
refused for the same reason.

The patches come from kpatch's source as Debian ships it (tests/support/kpatch_source.py);
each becomes a recipe with the check its `-LOADED.test` makes (those without one are proven
by loading, enabling, disabling and unloading). `#include "kpatch-macros.h"` finds the
project's kmod/kpatch-macros.h, which gives every macro the patches use.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from kpatchbuild.base.store import Store
from tests.conftest import run_doit
from tests.support.kpatch_source import integration_tests

KERNEL = "debian12-6.1-amd64"  # generic: joydev, pcspkr and USB are modules there


@dataclass(frozen=True)
class Expected:
    check: str = ""  # what the patch's -LOADED.test looks at
    refused: str = ""  # the words of the refusal, for the -FAIL patches


PATCHES = {
    "data-new": Expected(check='grep -q "kpatch:         5" /proc/meminfo'),
    "gcc-static-local-var-6": Expected(),
    "macro-callbacks": Expected(),
    # module-LOADED.test also reads xfs_stats.c's pr_debug() back from dmesg: a line that
    # stays after the patch is removed, so the check is the stats file alone.
    "module": Expected(check="grep -q kpatch /sys/fs/xfs/stats/stats"),
    "new-function": Expected(),
    "new-globals": Expected(),
    "shadow-newpid": Expected(check="grep -q newpid: /proc/$$/status"),
    "special-static": Expected(),
    "syscall": Expected(check="uname -s | grep -q kpatch"),
    # kpatch: "Version disagreement for symbol ..." after comparing Module.symvers.
    "symvers-disagreement-FAIL": Expected(refused="change their versions"),
    # kpatch: "no functional changes found" (a blank line moves WARN's line numbers only).
    "warn-detect-FAIL": Expected(refused="no functional change"),
}


def _recipe(name: str, expected: Expected) -> str:
    lines = [f"description: kpatch's integration patch {name} (Linux 6.2)",
             f"module: livepatch_kpatch_{name.replace('-', '_').lower()}",
             "targets:",
             "  - debian: {release: 12, series: \"6.1\", flavour: amd64}"]
    if expected.refused:
        lines.append(f"    refused: {expected.refused}")
    lines += ["patches:", f"  - {name}.patch"]
    if expected.check:
        lines.append(f"check: '{expected.check}'")
    return "\n".join(lines) + "\n"


@pytest.mark.kernel
def test_kpatchs_integration_patches(private_recipes, tmp_path: Path) -> None:  # noqa: ANN001
    recipes, env = private_recipes
    source = integration_tests(Store())
    for name, expected in PATCHES.items():
        (recipes / f"kpatch-{name}").mkdir()
        shutil.copyfile(source / f"{name}.patch", recipes / f"kpatch-{name}" / f"{name}.patch")
        (recipes / f"kpatch-{name}" / "recipe.yaml").write_text(_recipe(name, expected))
    assert sorted(p.stem for p in source.glob("*.patch")) == sorted(PATCHES)
    report = tmp_path / "test.json"
    # Two cells side by side: one builds while the other boots (one kernel prepare at once).
    result = run_doit("-n", "2", "test", f"kernel={KERNEL}", f"json={report}", env=env)
    cells = {cell["recipe"]: cell for cell in json.loads(report.read_text())["cells"]}
    summary = {name: (cell["status"], cell.get("reason", "")) for name, cell in cells.items()}
    assert all(cell["status"] in ("passed", "refused") for cell in cells.values()), \
        (summary, result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-3000:]
    assert {name for name, cell in cells.items() if cell["status"] == "refused"} == {
        "kpatch-symvers-disagreement-FAIL", "kpatch-warn-detect-FAIL"}
