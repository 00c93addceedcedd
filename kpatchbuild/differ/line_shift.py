"""What lines.py and its decoder share: which callees take `__LINE__`, and the verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


# Functions that take __LINE__, and the positions (0-based) of that argument: every callee
# Debian's 5.10, 6.1 and 6.12 sources pass __LINE__ to (line_arguments.txt says how it was
# made). Parameters called `line` that are not source lines (serial8250's port line) never
# receive __LINE__, so they are not there.
def _read_line_arguments() -> dict[str, frozenset[int]]:
    table: dict[str, set[int]] = {}
    text = (Path(__file__).with_name("line_arguments.txt")).read_text()
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, position = line.split()
            table.setdefault(name, set()).add(int(position))
    return {name: frozenset(positions) for name, positions in table.items()}


LINE_ARGUMENT = _read_line_arguments()


@dataclass(frozen=True)
class LineShift:
    """How two versions of a function differ when only line numbers do.

    ``deltas``: the line changes of arguments known to be lines (new minus old).
    ``unproven``: changes of immediates passed to printf-like functions (a line printed
    with "%d", as ext4's assertions do) or carried into the function's `.cold` part: lines
    only if the function, or its parent or `.cold` part, shows a known line argument moved
    by the same amount.
    """

    deltas: frozenset[int]
    unproven: frozenset[int] = frozenset()
