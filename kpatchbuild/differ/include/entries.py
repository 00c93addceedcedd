"""Pass select-entries: the special-section entries of the carried code.

An entry comes with the patch when its first relocation (its anchor) points into carried
code; what the entry references is followed in turn (a jump label's target in a `.cold`
part), until nothing more comes. Tables the module loader reads before livepatch binds the
patch's relocations keep an entry only when the loader can resolve its symbols; otherwise
the entry is dropped where the site stays inert, or refused by name.
"""

from __future__ import annotations

from kpatchbuild.differ.include.references import ReferenceFollower
from kpatchbuild.differ.include.selection import Selection
from kpatchbuild.differ.index import SymbolTarget
from kpatchbuild.differ.resolve import Resolution
from kpatchbuild.differ.special import (
    ENTRY_TABLES,
    ORC_TABLE,
    EntrySizes,
    SectionRole,
    TableKind,
    inferred_stride,
    role_of,
    whole_entries,
)
from kpatchbuild.elf.model import STT_SECTION, Relocation, Section

PASS = "select-entries"
# Keys of tracepoints and dynamic-debug prints: a jump site left as compiled is disabled.
INERT_KEY_PREFIXES = ("__tracepoint_", "__UNIQUE_ID_ddebug", "descriptor")


def select_table_entries(selection: Selection, sizes: EntrySizes) -> None:
    """Keep the entries of carried code, and what they reference, until nothing more comes."""
    entries = _EntrySelector(selection, sizes)
    follower = ReferenceFollower(selection, PASS)
    while True:
        entries.select()
        if not selection.pending:
            break
        follower.follow()
    for piece in selection.slices.values():
        if role_of(piece.source) in (SectionRole.ENTRIES, SectionRole.ORC):
            selection.trace.say(PASS, f"{piece.source.name}: {len(piece.ranges)} entries kept")


class _EntrySelector:
    def __init__(self, selection: Selection, sizes: EntrySizes) -> None:
        self.selection = selection
        self.sizes = sizes
        self.patched = selection.patched
        self._dropped: set[tuple[int, int]] = set()  # (id(table), entry start)

    def select(self) -> None:
        selection = self.selection
        for section in self.patched.obj.sections:
            role = role_of(section)
            if role not in (SectionRole.ENTRIES, SectionRole.ORC):
                continue
            kind = ENTRY_TABLES[section.name]
            size = self._entry_size(kind, section)
            if size is None:
                continue
            for start in range(0, section.size, size):
                if (id(section), start) in self._dropped:
                    continue
                # A short last entry (short_last_entry) ends with the section.
                end = min(start + size, section.size)
                piece = selection.slices.get(id(section))
                if piece is not None and (start, end) in piece.ranges:
                    continue
                anchor = next(
                    (r for r in self.patched.relocations_between(section, start, start + 1)
                     if r.offset == start),
                    None,
                )
                if anchor is None or not self._anchored_in_patch(anchor):
                    continue
                if kind.loader_resolved_only and not self._loader_can_resolve(
                    section, start, size
                ):
                    continue
                selection.include_range(section, start, end)
                if role is SectionRole.ORC:
                    self._keep_orc_data(start // size)

    def _anchored_in_patch(self, anchor: Relocation) -> bool:
        target_section = anchor.symbol.section
        if target_section is None:
            return False
        piece = self.selection.slices.get(id(target_section))
        if piece is None:
            return False
        if target_section in self.selection.whole:
            return True
        place = anchor.addend if anchor.symbol.type == STT_SECTION else anchor.symbol.value
        return piece.map(place) is not None

    def _loader_can_resolve(self, section: Section, start: int, size: int) -> bool:
        """Entries the loader processes before livepatch relocations exist need loader symbols."""
        selection = self.selection
        for relocation in self.patched.relocations_between(section, start, start + size):
            target = self.patched.target_of(relocation, in_code=False)
            if not isinstance(target, SymbolTarget):
                continue
            symbol = target.symbol
            if symbol.section is not None and (
                selection.carries(symbol.section)
                or selection.correlation.orig_of(symbol) is None
                or role_of(symbol.section) is SectionRole.REFERENCED_ENTRIES
            ):
                # Carried by the patch; a dynamic-debug descriptor only a jump entry uses
                # (print_hex_dump_debug) comes along when the kept entry is walked.
                continue
            resolution = selection.resolution_for(symbol, record=False)
            if resolution is None or selection.resolver.known_at_load(resolution):
                continue
            self._dropped.add((id(section), start))
            self._refuse_or_drop(section, start, resolution)
            return False
        return True

    def _refuse_or_drop(self, section: Section, start: int, resolution: Resolution) -> None:
        """An entry whose symbol the loader cannot know yet: dropped where that is inert."""
        selection = self.selection
        key = resolution.target_name
        user = self._user_of_entry(section, start)
        if section.name == ".static_call_sites":
            # Without its site entry the call goes through the trampoline: still correct.
            selection.notes.append(f"static call site for key {key} left to its trampoline "
                                   f"(key not exported from {resolution.objname})")
            return
        early = selection.resolver.early_vmlinux
        late = ("livepatch applies relocations against a module only after the loader has "
                "read the module's tables") if early else (
                "kernels before 5.8 apply livepatch relocations only after the loader has "
                "read the module's tables")
        if section.name == "__jump_table" and key.startswith(INERT_KEY_PREFIXES):
            # The site stays the compiler's default: a disabled tracepoint or pr_debug(), as
            # kpatch leaves it. Any other key decides what the code does: refused below.
            what = "tracepoint" if key.startswith("__tracepoint_") else "dynamic debug print"
            where = (f"module {resolution.objname}" if resolution.objname != "vmlinux"
                     else "vmlinux, and this kernel (before 5.8) binds livepatch relocations")
            selection.notes.append(
                f"{what} {key.removeprefix('__tracepoint_')} in {user} is inert in the "
                f"patched function: its key lives in {where} only after the loader reads "
                "the jump table, so its entry is dropped")
            return
        if section.name == "__jump_table":
            selection.refusals.append(
                f"__jump_table entry in {user} uses static key {key} of {resolution.objname}, "
                f"which is not exported: {late}; test the key with static_key_enabled() "
                "instead of a static branch in the patched code"
            )
            return
        selection.refusals.append(
            f"{section.name} entry in {user} uses {key} of {resolution.objname}, which is not "
            f"exported: {late}"
        )

    def _user_of_entry(self, section: Section, start: int) -> str:
        for relocation in self.patched.relocations_between(section, start, start + 1):
            target = self.patched.target_of(relocation, in_code=False)
            if isinstance(target, SymbolTarget):
                return f"{target.symbol.name}+{target.delta:#x}"
        return f"{section.name}+{start:#x}"

    def _keep_orc_data(self, index: int) -> None:
        orc = self.patched.obj.section_by_name(ORC_TABLE.name)
        if orc is None:
            return
        size, _ = self.sizes.size_of(ORC_TABLE, orc)
        self.selection.include_range(orc, index * size, index * size + size)

    def _entry_size(self, kind: TableKind, section: Section) -> int | None:
        """The table's entry size: given (environment, measured, sh_entsize) when it divides
        the section, else the stride the table's relocations show, checked against it."""
        selection = self.selection
        try:
            size, origin = self.sizes.size_of(kind, section)
        except ValueError as error:
            selection.refusals.append(str(error))
            return None
        if origin != "default" and whole_entries(kind, section, size):
            return size
        offsets = [r.offset for r in self.patched.relocations.get(id(section), ())]
        stride = inferred_stride(kind, section, offsets)
        if stride is not None:
            if stride != size:
                selection.notes.append(
                    f"section {section.name}: entries of {stride} bytes, as its relocations "
                    f"show ({origin} size {size} does not fit)")
            return stride
        if origin == "default" and whole_entries(kind, section, size):
            return size  # entries without relocations at fixed places: the known layout
        hint = f"; set {kind.env}" if kind.env else ""
        selection.refusals.append(
            f"section {section.name}: size {section.size} is not a multiple of the entry "
            f"size {size} ({origin}), and its relocations show no other{hint}"
        )
        return None
