"""Following the references of carried code and data, for the selection passes.

Every range the selection takes is walked once: new functions, `.cold` parts, new data,
string literals and read-only constants it reaches come along; whatever exists in the
running kernel is left to be referenced (emit resolves it); whatever can be neither carried
nor referenced safely becomes a refusal naming the section and the reason.
"""

from __future__ import annotations

import re

from kpatchbuild.differ.compare import Status
from kpatchbuild.differ.include.selection import Selection
from kpatchbuild.differ.index import (
    AnonymousTarget,
    StringTarget,
    Target,
    padded_function_name,
    parent_function_name,
    relocation_place,
)
from kpatchbuild.differ.special import DYNDBG_TABLE, SectionRole, role_of
from kpatchbuild.elf.model import SHF_WRITE, Relocation, Section, Symbol


class ReferenceFollower:
    """Grows a Selection along the relocations of what it holds."""

    def __init__(self, selection: Selection, pass_name: str) -> None:
        self.selection = selection
        self.pass_name = pass_name  # the pass that asked, for the trace
        self.patched = selection.patched
        self._walked: set[tuple[int, int, int]] = set()

    def carry_function(self, section: Section, because: Symbol) -> None:
        """Carry the section of function ``because``, with its aliases and padding."""
        selection = self.selection
        if selection.carries(section):
            return
        selection.trace.say(self.pass_name, f"carry {section.name} (for {because.name})")
        functions = [s for s in self.patched.symbols_in(section) if s.is_function]
        # Aliases (SYSCALL_DEFINE0's __x64_sys_x for __do_sys_x) are one function, and the
        # padding in front of a function (__pfx_x) is part of it.
        others = {(s.value, s.size) for s in functions
                  if parent_function_name(s.name) is None and not _pads(s, functions)}
        if len(others) > 1:
            selection.refusals.append(
                f"function {because.name} shares section {section.name} with "
                f"{len(others) - 1} other function(s) (not built with -ffunction-sections?): "
                "cannot be cut out safely"
            )
            return
        for symbol in functions:
            if symbol not in selection.functions:
                selection.functions.append(symbol)
        selection.include_whole(section, self.pass_name)

    def carry_new_data(self, symbol: Symbol, section: Section, source: Section) -> None:
        """Carry the section of new variable ``symbol``, unless it holds existing ones."""
        selection = self.selection
        if selection.carries(section):
            return
        existing = sorted(
            s.name for s in self.patched.symbols_in(section)
            if selection.correlation.orig_of(s) is not None
        )
        if existing and section.flags & SHF_WRITE:
            # Sections are carried whole: the copy would detach the carried code from the
            # running kernel's variables (`__read_mostly` and other named sections).
            selection.refusals.append(
                f"{source.name}: new variable {symbol.name} shares section {section.name} "
                f"with existing variable(s) {', '.join(existing[:3])}: carrying it would "
                "copy them; use a shadow variable"
            )
            return
        selection.include_whole(section, self.pass_name)

    def follow(self) -> None:
        """Walk every pending range once, until nothing new is selected."""
        selection = self.selection
        while selection.pending:
            section, start, end = selection.pending.pop()
            key = (id(section), start, end)
            if key in self._walked:
                continue
            self._walked.add(key)
            in_code = section.is_text
            for relocation in self.patched.relocations_between(section, start, end):
                self._need(self.patched.target_of(relocation, in_code), relocation, section)

    def _need(self, target: Target, relocation: Relocation, source: Section) -> None:
        selection = self.selection
        if isinstance(target, StringTarget):
            selection.include_whole(target.section, self.pass_name)
            return
        if isinstance(target, AnonymousTarget):
            self._need_anonymous(target, relocation, source)
            return
        symbol = target.symbol
        section = symbol.section
        if section is None:
            return
        role = role_of(section)
        piece = selection.slices.get(id(section))
        if piece is not None and role is not SectionRole.REFERENCED_ENTRIES:
            if piece.map(symbol.value, allow_end=True) is not None:
                return
        if symbol.is_function or section.is_text:
            verdict = selection.comparison.verdict(symbol)
            changed = verdict is not None and verdict.status is not Status.SAME
            if changed or parent_function_name(symbol.name) is not None:
                self.carry_function(section, symbol)
            elif selection.correlation.orig_of(symbol) is None:
                selection.refusals.append(
                    f"{source.name}: reference to {symbol.name}, which has no original "
                    "and is not a function the patch can carry"
                )
            return
        if role is SectionRole.REFERENCED_ENTRIES:
            # A dynamic-debug descriptor belongs to the code that uses it: copy the entry.
            size = symbol.size or DYNDBG_TABLE.default_size
            selection.include_range(section, symbol.value, symbol.value + size)
            return
        if selection.correlation.orig_of(symbol) is not None:
            return  # existing data: referenced in the running kernel
        if role is SectionRole.DATA:
            self.carry_new_data(symbol, section, source)
            return
        selection.refusals.append(
            f"{source.name}: reference to {symbol.name} in section {section.name}, "
            "which the differ does not know how to carry"
        )

    def _need_anonymous(
        self, target: AnonymousTarget, relocation: Relocation, source: Section
    ) -> None:
        selection = self.selection
        section = target.section
        role = role_of(section)
        if role is SectionRole.CODE_PIECES:
            start, end = self.patched.piece_bounds(section,
                                                   relocation_place(relocation, source))
            selection.include_range(section, start, end)
            return
        if selection.carries(section):
            return
        if role is SectionRole.DATA and not section.flags & SHF_WRITE:
            # Read-only constants: a copy is the same value.
            selection.include_whole(section, self.pass_name)
            return
        if role is SectionRole.CODE:
            owner = self._subfunction_section_owner(section)
            if owner is not None and source.is_text:
                # `.text.unlikely.fn`, reached from fn by an annotation (R_X86_64_NONE) or a
                # jump label only: fn's out-of-line part travels with it, as kpatch does.
                self.carry_function(section, owner)
                return
            selection.refusals.append(
                f"{source.name}: jump into unnamed code of section {section.name} "
                "that the patch does not carry"
            )
            return
        selection.refusals.append(
            f"{source.name}: reference to unnamed writable data at "
            f"{section.name}+{target.addend:#x}: cannot be shared or copied safely"
        )

    def _subfunction_section_owner(self, section: Section) -> Symbol | None:
        """The carried function whose out-of-line section this is: `.text.unlikely.<fn>` (or
        `.text.<fn>.cold`...) holding only fn's `.cold`/`.part` pieces, or no symbol at all."""
        functions = [s for s in self.patched.symbols_in(section) if s.is_function]
        if any(parent_function_name(s.name) is None for s in functions):
            return None
        for prefix in (".text.unlikely.", ".text.hot.", ".text."):
            if section.name.startswith(prefix):
                name = re.sub(r"\.(cold|part)(\.\d+)?$", "", section.name[len(prefix):])
                parent = self.patched.by_name.get(name)
                if parent is not None and parent in self.selection.functions:
                    return functions[0] if functions else parent
        return None


def _pads(symbol: Symbol, functions: list[Symbol]) -> bool:
    """Whether ``symbol`` is the padding that ends where its function, in ``functions``,
    begins (`__pfx_x` right before `x`)."""
    name = padded_function_name(symbol.name)
    return name is not None and any(
        f.name == name and f.value == symbol.value + symbol.size for f in functions)
