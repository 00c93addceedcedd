"""Pass check: safety checks on what the selection passes chose."""

from __future__ import annotations

from kpatchbuild.differ.include.selection import Selection
from kpatchbuild.differ.index import SymbolTarget
from kpatchbuild.differ.special import (
    DYNDBG_CLASSES_SECTION,
    RUNTIME_CONSTANT_PREFIXES,
    SectionRole,
    role_of,
)

PASS = "check"


def check(selection: Selection) -> None:
    """Refuse selections that would be unsafe as a whole; say what was refused."""
    before = len(selection.refusals)
    _check_dyndbg_classes(selection)
    _check_unknown_code_tables(selection)
    for refusal in selection.refusals[before:]:
        selection.trace.say(PASS, f"refused: {refusal}")
    if len(selection.refusals) == before:
        selection.trace.say(PASS, "nothing refused")


def _check_dyndbg_classes(selection: Selection) -> None:
    """Carried descriptors may name a class whose map (`__dyndbg_classes`) stays behind.

    The map points at the module's parameters and names; copying it would register a
    second class map, and dropping it leaves classed descriptors unreachable: refuse.
    """
    classes = selection.patched.obj.section_by_name(DYNDBG_CLASSES_SECTION)
    if classes is None or not classes.size:
        return
    carried = [
        piece.source.name
        for piece in selection.slices.values()
        if role_of(piece.source) is SectionRole.REFERENCED_ENTRIES
    ]
    if carried:
        selection.refusals.append(
            f"{carried[0]}: dynamic-debug descriptors of an object with class maps "
            f"({DYNDBG_CLASSES_SECTION}) cannot be carried without their map"
        )


def _check_unknown_code_tables(selection: Selection) -> None:
    """Refuse carried code that a table the differ does not know points into.

    A pointer to a function's first byte is a function pointer: the running kernel's
    copy is the one livepatch redirects. A pointer into the middle of a function marks
    an instruction for someone to act on (as the known special sections do); dropping
    such an entry could leave the carried copy wrong, so it is refused. Boot-time
    constants (`runtime_ptr_*`, `runtime_shift_*`, Linux 6.11+) are the case met on real
    kernels: the kernel patches their placeholders into vmlinux's code at boot and never
    into a module's.
    """
    patched = selection.patched
    for section in patched.obj.sections:
        if selection.carries(section) or role_of(section) is not SectionRole.DATA:
            continue
        for relocation in patched.relocations.get(id(section), ()):
            target = patched.target_of(relocation, in_code=False)
            if not isinstance(target, SymbolTarget) or target.delta <= 0:
                continue
            function = target.symbol
            if not function.is_function or function.section is None:
                continue
            if not selection.carries(function.section):
                continue
            if section.name.startswith(RUNTIME_CONSTANT_PREFIXES):
                constant = section.name.split("_", 2)[2]
                selection.refusals.append(
                    f"function {function.name} uses the boot-time constant {constant} "
                    f"(section {section.name}): the kernel patches it into vmlinux's code "
                    "at boot, never into a module's, so the copy would keep a placeholder"
                )
            else:
                selection.refusals.append(
                    f"section {section.name} points into carried function "
                    f"{function.name}+{target.delta:#x}: a table the differ does not know; "
                    "its entry cannot be kept or dropped safely"
                )
            break
