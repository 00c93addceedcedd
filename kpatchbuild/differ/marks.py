"""What the patch author marked in the patched source with kpatch-macros.h.

Each macro leaves a pointer in a section of its own (`.kpatchbuild.<kind>` with the
project's header, `.kpatch.callbacks.<kind>`, `.kpatch.ignore.*` and `.kpatch.force` with
kpatch's): a callback for the object the file belongs to, a function or a section whose
changes do not count, a function its author forced through. The sections themselves never
reach the patch object; what they point at is read here.

KPATCH_FORCE_UNSAFE asked kpatch's own core module to switch a function without the
consistency check. Livepatch has had no such per-function mode since Linux 4.16, and kpatch
builds such patches for livepatch all the same, the mark without effect: so does kpatchbuild,
saying so in the notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kpatchbuild.differ.index import ObjectIndex, StringTarget, SymbolTarget
from kpatchbuild.differ.special import mark_kind
from kpatchbuild.elf.model import Symbol

CALLBACK_KINDS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")
IGNORE_FUNCTION = "ignore_function"
IGNORE_SECTION = "ignore_section"
FORCE = "force"


@dataclass
class Marks:
    """The marks of one patched object."""

    callbacks: dict[str, Symbol] = field(default_factory=dict)  # kind -> function
    ignored_functions: set[str] = field(default_factory=set)
    ignored_sections: set[str] = field(default_factory=set)
    forced_functions: set[str] = field(default_factory=set)  # KPATCH_FORCE_UNSAFE: no effect
    problems: list[str] = field(default_factory=list)


def read_marks(patched: ObjectIndex) -> Marks:
    """The marks of ``patched``; a mark that cannot be read is a problem to refuse."""
    marks = Marks()
    for section in patched.obj.sections:
        kind = mark_kind(section)
        if kind is None:
            continue
        for relocation in patched.relocations.get(id(section), ()):
            target = patched.target_of(relocation, in_code=False)
            if kind in CALLBACK_KINDS:
                _callback(marks, kind, target)
            elif kind == IGNORE_FUNCTION and isinstance(target, SymbolTarget):
                marks.ignored_functions.add(target.symbol.name)
            elif kind == IGNORE_SECTION and isinstance(target, StringTarget):
                marks.ignored_sections.add(target.text.decode(errors="replace"))
            elif kind == FORCE and isinstance(target, SymbolTarget):
                marks.forced_functions.add(target.symbol.name)
            else:
                marks.problems.append(f"section {section.name}: a mark kpatchbuild does not "
                                      "know (kmod/kpatch-macros.h lists the ones it does)")
    return marks


def _callback(marks: Marks, kind: str, target: object) -> None:
    if not isinstance(target, SymbolTarget) or not target.symbol.is_function or target.delta:
        marks.problems.append(f"{kind} callback: does not point at a function")
        return
    function = target.symbol
    previous = marks.callbacks.get(kind)
    if previous is not None and previous is not function:
        first, second = sorted((previous.name, function.name))
        marks.problems.append(f"two {kind} callbacks in one object ({first} and {second}): "
                              "livepatch runs one per object")
        return
    marks.callbacks[kind] = function
