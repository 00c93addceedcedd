"""What the patch object will carry: the hand-off between the include passes.

The passes (select functions, select table entries, check, emit) share one Selection: the
ranges of patched sections kept so far, the functions carried, and the refusals, notes and
resolutions each pass adds. A pass reads what earlier passes selected and adds to it; only
emit turns it into an object.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from kpatchbuild.differ.compare import Comparison
from kpatchbuild.differ.correlate import Correlation
from kpatchbuild.differ.index import ObjectIndex
from kpatchbuild.differ.resolve import Resolution, ResolveError, Resolver
from kpatchbuild.differ.trace import Trace
from kpatchbuild.elf.model import (
    SHT_NOBITS,
    STB_LOCAL,
    Section,
    Symbol,
)


@dataclass
class Slice:
    """An output section made of kept ranges of one patched section."""

    source: Section
    ranges: list[tuple[int, int]] = field(default_factory=list)  # (old start, old end)
    out: Section | None = None
    _starts: list[int] = field(default_factory=list)
    _new_starts: list[int] = field(default_factory=list)

    def finish(self) -> None:
        """Merge the kept ranges; offsets can be mapped only after this."""
        merged: list[tuple[int, int]] = []
        for start, end in sorted(set(self.ranges)):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self.ranges = merged
        self._starts = [start for start, _ in merged]
        self._new_starts = []
        position = 0
        for start, end in merged:
            self._new_starts.append(position)
            position += end - start

    def map(self, offset: int, *, allow_end: bool = False) -> int | None:
        """New offset of ``offset``; None when it falls outside the kept ranges.

        A section carried whole keeps every offset, even one just outside it (an addend
        biased by the instruction length, or a label at its end).
        """
        if self.ranges == [(0, self.source.size)]:
            return offset
        index = bisect_right(self._starts, offset) - 1
        if index < 0:
            return None
        start, end = self.ranges[index]
        if offset < end or (allow_end and offset == end):
            return self._new_starts[index] + offset - start
        return None

    def data(self) -> bytes:
        if self.source.type == SHT_NOBITS:
            return b""
        return b"".join(self.source.data[start:end] for start, end in self.ranges)

    def size(self) -> int:
        return sum(end - start for start, end in self.ranges)


class Selection:
    """The patched sections and ranges the patch carries, and what the passes said of them."""

    def __init__(
        self,
        correlation: Correlation,
        comparison: Comparison,
        resolver: Resolver,
        trace: Trace | None = None,
    ) -> None:
        self.correlation = correlation
        self.comparison = comparison
        self.resolver = resolver
        self.trace = trace or Trace()
        self.patched: ObjectIndex = correlation.patched
        self.slices: dict[int, Slice] = {}  # id(patched section) -> its kept ranges
        self.whole: list[Section] = []  # sections carried whole, in the order chosen
        self.pending: list[tuple[Section, int, int]] = []  # ranges whose references to follow
        self.functions: list[Symbol] = []  # carried functions (with aliases and padding)
        self.refusals: list[str] = []
        self.notes: list[str] = []
        self.resolutions: dict[str, Resolution] = {}

    def carries(self, section: Section) -> bool:
        return id(section) in self.slices

    def include_whole(self, section: Section, pass_name: str) -> None:
        if id(section) in self.slices:
            return
        if not section.is_text:
            self.trace.say(pass_name, f"carry {section.name}")
        self.slices[id(section)] = Slice(section, [(0, section.size)])
        self.whole.append(section)
        self.pending.append((section, 0, section.size))

    def include_range(self, section: Section, start: int, end: int) -> None:
        piece = self.slices.get(id(section))
        if piece is None:
            piece = self.slices[id(section)] = Slice(section)
        if (start, end) not in piece.ranges:
            piece.ranges.append((start, end))
            self.pending.append((section, start, end))

    def resolution_for(self, symbol: Symbol, *, record: bool = True) -> Resolution | None:
        """How a symbol outside the patch is found; None (with a refusal) when it cannot be."""
        if symbol.section is None:
            original = self.correlation.orig.by_name.get(symbol.name)
            if original is not None and original.bind == STB_LOCAL:
                # The patched code calls a global of that name elsewhere (the static it had
                # was removed): the original's static namesake is another symbol.
                original = None
            name = symbol.name
        else:
            original = self.correlation.orig_of(symbol)
            if original is None:
                return None
            name = original.name
        defined = original is not None and original.section is not None
        local = defined and original is not None and original.bind == STB_LOCAL
        try:
            resolution = self.resolver.resolve(name, defined=defined, local=local)
        except ResolveError as error:
            self.refusals.append(error.message)
            return None
        if record:
            self.resolutions[resolution.name] = resolution
        return resolution
