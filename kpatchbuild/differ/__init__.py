"""The per-object differ: original and patched object in, patch object and report out.

Passes, each in its own module: index (lookup tables over one object) -> correlate (pair
symbols and sections) -> compare (which functions changed; refuse data changes) -> include
(what the patch carries, what it references and how) -> report. Knows ELF objects and a
target symbol table only: no kernel tree, recipe or cache.
"""

from kpatchbuild.differ.diff import (
    CannotPatch,
    DiffResult,
    FunctionChange,
    IncludedSymbol,
    diff_objects,
)
from kpatchbuild.differ.resolve import Resolution

__all__ = [
    "CannotPatch",
    "DiffResult",
    "FunctionChange",
    "IncludedSymbol",
    "Resolution",
    "diff_objects",
]
