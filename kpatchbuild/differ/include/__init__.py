"""Choosing what the patch object carries, and writing it: the include passes.

After correlate and compare, four passes run over one Selection, each in its own module:
select-functions (the changed and new functions and what they reach, `functions.py`),
select-entries (the special-section entries of that code, `entries.py`), check (safety
checks on the whole, `checks.py`) and, when nothing was refused, emit (the patch object,
`emit.py`). Everything that exists in the running kernel is referenced, through a
Resolution, rather than copied; whatever can be neither is a refusal naming the function
or section and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from kpatchbuild.differ.compare import Comparison
from kpatchbuild.differ.correlate import Correlation
from kpatchbuild.differ.include.checks import check
from kpatchbuild.differ.include.emit import emit
from kpatchbuild.differ.include.entries import select_table_entries
from kpatchbuild.differ.include.functions import select_functions
from kpatchbuild.differ.include.selection import Selection
from kpatchbuild.differ.index import parent_function_name
from kpatchbuild.differ.resolve import Resolution, ResolveError, Resolver
from kpatchbuild.differ.special import EntrySizes
from kpatchbuild.differ.trace import Trace
from kpatchbuild.elf.model import STB_LOCAL, ElfObject, Symbol

__all__ = ["Inclusion", "Selection", "check", "emit", "include_and_build",
           "select_functions", "select_table_entries"]


@dataclass
class Inclusion:
    """The outcome of the include passes."""

    output: ElfObject | None
    included_functions: list[Symbol]
    resolutions: dict[str, Resolution]
    kept_sections: list[tuple[str, int]]
    refusals: list[str]
    notes: list[str]
    old_sympos: dict[str, int]


def include_and_build(
    correlation: Correlation,
    comparison: Comparison,
    resolver: Resolver,
    sizes: EntrySizes,
    trace: Trace | None = None,
) -> Inclusion:
    """Run the passes in order and, when nothing was refused, emit the patch object."""
    selection = Selection(correlation, comparison, resolver, trace)
    select_functions(selection)
    select_table_entries(selection, sizes)
    check(selection)
    output = None if selection.refusals else emit(selection)
    refusals = list(selection.refusals)
    old_sympos: dict[str, int] = {}
    for verdict in comparison.changed:
        original = verdict.orig
        if original is None or parent_function_name(original.name) is not None:
            continue
        try:
            old_sympos[original.name] = resolver.old_sympos(
                original.name, local=original.bind == STB_LOCAL
            )
        except ResolveError as error:
            refusals.append(error.message)
    kept = [(piece.source.name, piece.size()) for piece in selection.slices.values()]
    return Inclusion(
        output=None if refusals else output,
        included_functions=selection.functions,
        resolutions=selection.resolutions,
        kept_sections=kept,
        refusals=refusals,
        notes=selection.notes,
        old_sympos=old_sympos,
    )
