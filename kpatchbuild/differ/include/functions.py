"""Pass select-functions: the changed and new functions, and the code and data they reach."""

from __future__ import annotations

from kpatchbuild.differ.compare import Status
from kpatchbuild.differ.include.references import ReferenceFollower
from kpatchbuild.differ.include.selection import Selection
from kpatchbuild.differ.index import parent_function_name
from kpatchbuild.elf.model import STB_LOCAL

PASS = "select-functions"
INIT_PREFIXES = (".init", ".exit", ".head.text", ".ref.text", ".meminit", ".cpuinit")


def select_functions(selection: Selection) -> None:
    """Carry every changed or new function, refusing init and exit code, and every new
    global variable (another object of the patch may use it), with what they reference."""
    follower = ReferenceFollower(selection, PASS)
    for verdict in selection.comparison.functions.values():
        if verdict.status is Status.SAME:
            continue
        symbol = verdict.patched
        section = symbol.section
        assert section is not None  # a compared function is defined
        original_section = verdict.orig.section if verdict.orig is not None else None
        if section.name.startswith(INIT_PREFIXES) or (
            original_section is not None and original_section.name.startswith(INIT_PREFIXES)
        ):
            what = "changed" if verdict.status is Status.CHANGED else "new"
            selection.refusals.append(
                f"{what} __init/__exit function {symbol.name} (section {section.name}): "
                "init and exit code cannot be live-patched"
            )
            continue
        if parent_function_name(symbol.name) is not None:
            continue  # `.cold` parts come with their parent
        follower.carry_function(section, symbol)
    for symbol in selection.comparison.new_data:
        if symbol.bind != STB_LOCAL and symbol.section is not None:
            follower.carry_new_data(symbol, symbol.section, symbol.section)
    follower.follow()
