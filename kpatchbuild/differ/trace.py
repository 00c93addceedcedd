"""What each pass of the differ decided, for `diff --debug PASS`.

The passes, in the order diff_objects runs them: correlate (pair symbols), compare (which
functions changed), select-functions (what code the patch carries), select-entries (which
special-section entries come with it), check (safety checks on the selection), emit (the
patch object). A pass says what it decided; the trace keeps the lines of the passes asked
for, and nothing when none was.
"""

from __future__ import annotations

from collections.abc import Iterable

PASSES = ("correlate", "compare", "select-functions", "select-entries", "check", "emit")


class Trace:
    """Lines of the passes named in ``passes`` ("all" for every one)."""

    def __init__(self, passes: Iterable[str] = ()) -> None:
        wanted = set(passes)
        unknown = wanted - set(PASSES) - {"all"}
        if unknown:
            raise ValueError(f"unknown pass {sorted(unknown)[0]!r}; the passes are "
                             f"{', '.join(PASSES)} (or all)")
        self.passes = set(PASSES) if "all" in wanted else wanted
        self.lines: list[str] = []

    def wants(self, name: str) -> bool:
        return name in self.passes

    def say(self, name: str, text: str) -> None:
        if name in self.passes:
            self.lines.append(f"[{name}] {text}")
