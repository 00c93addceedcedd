"""Pass 3: choose what the patch object carries and build it.

Starting from the changed and new functions, follow relocations: new functions, `.cold`
parts, new data, string literals and read-only constants come along; everything that exists
in the running kernel is referenced instead, through a Resolution. Special-section entries
follow the code they describe, and out-of-line code (alternative replacements, `.altinstr_aux`)
is cut into the pieces the included code uses. Whatever cannot be carried or referenced safely
is collected as a refusal naming the function or section and the reason.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

from kpatchbuild.differ.compare import Comparison, Status
from kpatchbuild.differ.correlate import Correlation
from kpatchbuild.differ.index import (
    AnonymousTarget,
    StringTarget,
    SymbolTarget,
    Target,
    padded_function_name,
    parent_function_name,
)
from kpatchbuild.differ.resolve import Resolution, ResolveError, Resolver
from kpatchbuild.differ.special import (
    DYNDBG_CLASSES_SECTION,
    DYNDBG_TABLE,
    ENTRY_TABLES,
    ORC_TABLE,
    RUNTIME_CONSTANT_PREFIXES,
    EntrySizes,
    SectionRole,
    TableKind,
    inferred_stride,
    role_of,
    whole_entries,
)
from kpatchbuild.differ.trace import Trace
from kpatchbuild.elf.model import (
    PC_RELATIVE_TYPES,
    SHF_GROUP,
    SHF_WRITE,
    SHT_NOBITS,
    SHT_PROGBITS,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FILE,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Symbol,
)

_LOADER_ONLY = frozenset(
    {".altinstr_replacement"} | {k.name for k in ENTRY_TABLES.values() if k.loader_resolved_only}
)
# Keys of tracepoints and dynamic-debug prints: a jump site left as compiled is disabled.
_INERT_KEY_PREFIXES = ("__tracepoint_", "__UNIQUE_ID_ddebug", "descriptor")
_INIT_PREFIXES = (".init", ".exit", ".head.text", ".ref.text", ".meminit", ".cpuinit")


@dataclass
class _Slice:
    """An output section made of kept ranges of one patched section."""

    source: Section
    ranges: list[tuple[int, int]] = field(default_factory=list)  # (old start, old end)
    out: Section | None = None
    _starts: list[int] = field(default_factory=list)
    _new_starts: list[int] = field(default_factory=list)

    def finish(self) -> None:
        merged: list[tuple[int, int]] = []
        for start, end in sorted(set(self.ranges)):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self.ranges = merged
        self._starts = [start for start, _ in merged]
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


@dataclass
class Inclusion:
    """The outcome of the inclusion pass."""

    output: ElfObject | None
    included_functions: list[Symbol]
    resolutions: dict[str, Resolution]
    kept_sections: list[tuple[str, int]]
    refusals: list[str]
    notes: list[str]
    old_sympos: dict[str, int]


class PatchBuilder:
    """Collects what the patch needs from the patched object, then writes it out."""

    def __init__(
        self,
        correlation: Correlation,
        comparison: Comparison,
        resolver: Resolver,
        sizes: EntrySizes,
        trace: Trace | None = None,
    ) -> None:
        self.trace = trace or Trace()
        self.current = "select-functions"  # the pass running, for the trace
        self.correlation = correlation
        self.comparison = comparison
        self.resolver = resolver
        self.sizes = sizes
        self.patched = correlation.patched
        self.slices: dict[int, _Slice] = {}
        self.whole: list[Section] = []
        self.queue: list[tuple[Section, int, int]] = []  # ranges whose relocations to follow
        self.refusals: list[str] = []
        self.notes: list[str] = []
        self.resolutions: dict[str, Resolution] = {}
        self.functions: list[Symbol] = []
        self._walked: set[tuple[int, int, int]] = set()
        self._dropped_entries: set[tuple[int, int]] = set()  # (id(table), entry start)
        self._piece_starts_by_section: dict[int, list[int]] = {}
        self._undefined_by_name: dict[str, Symbol] = {}

    # -- selection -----------------------------------------------------------------------------

    def select_functions(self) -> None:
        """Pass: the changed and new functions, and the code and data they reference."""
        self.current = "select-functions"
        for verdict in self.comparison.functions.values():
            if verdict.status is Status.SAME:
                continue
            symbol = verdict.patched
            section = symbol.section
            assert section is not None
            original_section = verdict.orig.section if verdict.orig is not None else None
            if section.name.startswith(_INIT_PREFIXES) or (
                original_section is not None and original_section.name.startswith(_INIT_PREFIXES)
            ):
                what = "changed" if verdict.status is Status.CHANGED else "new"
                self.refusals.append(
                    f"{what} __init/__exit function {symbol.name} (section {section.name}): "
                    "init and exit code cannot be live-patched"
                )
                continue
            if parent_function_name(symbol.name) is not None:
                continue  # `.cold` parts come with their parent
            assert symbol.section is not None  # a defined function
            self._include_code(symbol.section, symbol)
        for symbol in self.comparison.new_data:
            if symbol.bind != STB_LOCAL and symbol.section is not None:
                # Another object of the patch may use it: carried whether or not this one does.
                self._include_new_data(symbol, symbol.section, symbol.section)
        self._drain()

    def select_table_entries(self) -> None:
        """Pass: the special-section entries of the carried code, and what they reference in
        turn (a jump label's target in a `.cold` part), until nothing more comes."""
        self.current = "select-entries"
        while True:
            self._select_table_entries()
            if not self.queue:
                break
            self._drain()
        for piece in self.slices.values():
            if role_of(piece.source) in (SectionRole.ENTRIES, SectionRole.ORC):
                self.trace.say(self.current, f"{piece.source.name}: {len(piece.ranges)} "
                                             "entries kept")

    def check(self) -> None:
        """Pass: safety checks on what was selected."""
        self.current = "check"
        before = len(self.refusals)
        self._check_dyndbg_classes()
        self._check_unknown_code_tables()
        for refusal in self.refusals[before:]:
            self.trace.say(self.current, f"refused: {refusal}")
        if len(self.refusals) == before:
            self.trace.say(self.current, "nothing refused")

    def _check_dyndbg_classes(self) -> None:
        """Carried descriptors may name a class whose map (`__dyndbg_classes`) stays behind.

        The map points at the module's parameters and names; copying it would register a
        second class map, and dropping it leaves classed descriptors unreachable: refuse.
        """
        classes = self.patched.obj.section_by_name(DYNDBG_CLASSES_SECTION)
        if classes is None or not classes.size:
            return
        carried = [
            piece.source.name
            for piece in self.slices.values()
            if role_of(piece.source) is SectionRole.REFERENCED_ENTRIES
        ]
        if carried:
            self.refusals.append(
                f"{carried[0]}: dynamic-debug descriptors of an object with class maps "
                f"({DYNDBG_CLASSES_SECTION}) cannot be carried without their map"
            )

    def _check_unknown_code_tables(self) -> None:
        """Refuse carried code that a table the differ does not know points into.

        A pointer to a function's first byte is a function pointer: the running kernel's
        copy is the one livepatch redirects. A pointer into the middle of a function marks
        an instruction for someone to act on (as the known special sections do); dropping
        such an entry could leave the carried copy wrong, so it is refused. Boot-time
        constants (`runtime_ptr_*`, `runtime_shift_*`, Linux 6.11+) are the case met on real
        kernels: the kernel patches their placeholders into vmlinux's code at boot and never
        into a module's.
        """
        for section in self.patched.obj.sections:
            if id(section) in self.slices or role_of(section) is not SectionRole.DATA:
                continue
            for relocation in self.patched.relocations.get(id(section), ()):
                target = self.patched.target_of(relocation, in_code=False)
                if not isinstance(target, SymbolTarget) or target.delta <= 0:
                    continue
                function = target.symbol
                if not function.is_function or function.section is None:
                    continue
                if id(function.section) not in self.slices:
                    continue
                if section.name.startswith(RUNTIME_CONSTANT_PREFIXES):
                    constant = section.name.split("_", 2)[2]
                    self.refusals.append(
                        f"function {function.name} uses the boot-time constant {constant} "
                        f"(section {section.name}): the kernel patches it into vmlinux's code "
                        "at boot, never into a module's, so the copy would keep a placeholder"
                    )
                else:
                    self.refusals.append(
                        f"section {section.name} points into carried function "
                        f"{function.name}+{target.delta:#x}: a table the differ does not know; "
                        "its entry cannot be kept or dropped safely"
                    )
                break

    def _include_code(self, section: Section, because: Symbol) -> None:
        if id(section) in self.slices:
            return
        self.trace.say(self.current, f"carry {section.name} (for {because.name})")
        functions = [s for s in self.patched.symbols_in(section) if s.is_function]
        # Aliases (SYSCALL_DEFINE0's __x64_sys_x for __do_sys_x) are one function, and the
        # padding in front of a function (__pfx_x) is part of it.
        others = {(s.value, s.size) for s in functions
                  if parent_function_name(s.name) is None and not _pads(s, functions)}
        if len(others) > 1:
            self.refusals.append(
                f"function {because.name} shares section {section.name} with "
                f"{len(others) - 1} other function(s) (not built with -ffunction-sections?): "
                "cannot be cut out safely"
            )
            return
        for symbol in functions:
            if symbol not in self.functions:
                self.functions.append(symbol)
        self._include_whole(section)

    def _include_whole(self, section: Section) -> None:
        if id(section) in self.slices:
            return
        if not section.is_text:
            self.trace.say(self.current, f"carry {section.name}")
        piece = _Slice(section, [(0, section.size)])
        self.slices[id(section)] = piece
        self.whole.append(section)
        self.queue.append((section, 0, section.size))

    def _include_range(self, section: Section, start: int, end: int) -> None:
        piece = self.slices.get(id(section))
        if piece is None:
            piece = self.slices[id(section)] = _Slice(section)
        if (start, end) not in piece.ranges:
            piece.ranges.append((start, end))
            self.queue.append((section, start, end))

    def _drain(self) -> None:
        while self.queue:
            section, start, end = self.queue.pop()
            key = (id(section), start, end)
            if key in self._walked:
                continue
            self._walked.add(key)
            in_code = section.is_text
            for relocation in self.patched.relocations_between(section, start, end):
                self._need(self.patched.target_of(relocation, in_code), relocation, section)

    def _need(self, target: Target, relocation: Relocation, source: Section) -> None:
        if isinstance(target, StringTarget):
            self._include_whole(target.section)
            return
        if isinstance(target, AnonymousTarget):
            self._need_anonymous(target, relocation, source)
            return
        symbol = target.symbol
        section = symbol.section
        if section is None:
            return
        role = role_of(section)
        if id(section) in self.slices and role is not SectionRole.REFERENCED_ENTRIES:
            if self.slices[id(section)].map(symbol.value, allow_end=True) is not None:
                return
        if symbol.is_function or section.is_text:
            verdict = self.comparison.verdict(symbol)
            changed = verdict is not None and verdict.status is not Status.SAME
            if changed or parent_function_name(symbol.name) is not None:
                self._include_code(section, symbol)
            elif self.correlation.orig_of(symbol) is None:
                self.refusals.append(
                    f"{source.name}: reference to {symbol.name}, which has no original "
                    "and is not a function the patch can carry"
                )
            return
        if role is SectionRole.REFERENCED_ENTRIES:
            # A dynamic-debug descriptor belongs to the code that uses it: copy the entry.
            size = symbol.size or DYNDBG_TABLE.default_size
            self._include_range(section, symbol.value, symbol.value + size)
            return
        if self.correlation.orig_of(symbol) is not None:
            return  # existing data: referenced in the running kernel
        if role is SectionRole.DATA:
            self._include_new_data(symbol, section, source)
            return
        self.refusals.append(
            f"{source.name}: reference to {symbol.name} in section {section.name}, "
            "which the differ does not know how to carry"
        )

    def _include_new_data(self, symbol: Symbol, section: Section, source: Section) -> None:
        if id(section) in self.slices:
            return
        existing = sorted(
            s.name for s in self.patched.symbols_in(section)
            if self.correlation.orig_of(s) is not None
        )
        if existing and section.flags & SHF_WRITE:
            # Sections are carried whole: the copy would detach the carried code from the
            # running kernel's variables (`__read_mostly` and other named sections).
            self.refusals.append(
                f"{source.name}: new variable {symbol.name} shares section {section.name} "
                f"with existing variable(s) {', '.join(existing[:3])}: carrying it would "
                "copy them; use a shadow variable"
            )
            return
        self._include_whole(section)

    def _need_anonymous(
        self, target: AnonymousTarget, relocation: Relocation, source: Section
    ) -> None:
        section = target.section
        role = role_of(section)
        if role is SectionRole.CODE_PIECES:
            place = _place(relocation, source)
            start, end = self._piece_bounds(section, place)
            self._include_range(section, start, end)
            return
        if id(section) in self.slices:
            return
        if role is SectionRole.DATA and not section.flags & SHF_WRITE:
            self._include_whole(section)  # read-only constants: a copy is the same value
            return
        if role is SectionRole.CODE:
            owner = self._subfunction_section_owner(section)
            if owner is not None and source.is_text:
                # `.text.unlikely.fn`, reached from fn by an annotation (R_X86_64_NONE) or a
                # jump label only: fn's out-of-line part travels with it, as kpatch does.
                self._include_code(section, owner)
                return
            self.refusals.append(
                f"{source.name}: jump into unnamed code of section {section.name} "
                "that the patch does not carry"
            )
            return
        self.refusals.append(
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
                if parent is not None and parent in self.functions:
                    return functions[0] if functions else parent
        return None

    def _piece_bounds(self, section: Section, place: int) -> tuple[int, int]:
        """A piece of out-of-line code runs from a referenced offset to the next one."""
        starts = self._piece_starts(section)
        index = bisect_right(starts, place) - 1
        start = starts[max(index, 0)]
        end = starts[index + 1] if index + 1 < len(starts) else section.size
        return start, end

    def _piece_starts(self, section: Section) -> list[int]:
        cache = self._piece_starts_by_section
        starts = cache.get(id(section))
        if starts is None:
            found = {0}
            for other in self.patched.obj.sections:
                for relocation in self.patched.relocations.get(id(other), ()):
                    if relocation.symbol.section is section:
                        if relocation.symbol.type == STT_SECTION:
                            found.add(_place(relocation, other))
                        else:
                            found.add(relocation.symbol.value)
            starts = cache[id(section)] = sorted(p for p in found if 0 <= p < section.size)
        return starts

    # -- special tables ------------------------------------------------------------------------

    def _select_table_entries(self) -> None:
        for section in self.patched.obj.sections:
            role = role_of(section)
            if role not in (SectionRole.ENTRIES, SectionRole.ORC):
                continue
            kind = ENTRY_TABLES[section.name]
            size = self._entry_size(kind, section)
            if size is None:
                continue
            for start in range(0, section.size, size):
                if (id(section), start) in self._dropped_entries:
                    continue
                # A short last entry (short_last_entry) ends with the section.
                end = min(start + size, section.size)
                piece = self.slices.get(id(section))
                if piece is not None and (start, end) in piece.ranges:
                    continue
                anchor = next(
                    (
                        r
                        for r in self.patched.relocations_between(section, start, start + 1)
                        if r.offset == start
                    ),
                    None,
                )
                if anchor is None or not self._anchored_in_patch(anchor):
                    continue
                if kind.loader_resolved_only and not self._loader_can_resolve(
                    section, start, size
                ):
                    continue
                self._include_range(section, start, end)
                if role is SectionRole.ORC:
                    self._keep_orc_data(start // size)

    def _anchored_in_patch(self, anchor: Relocation) -> bool:
        target_section = anchor.symbol.section
        if target_section is None:
            return False
        piece = self.slices.get(id(target_section))
        if piece is None:
            return False
        place = anchor.addend if anchor.symbol.type == STT_SECTION else anchor.symbol.value
        if target_section in self.whole:
            return True
        return piece.map(place) is not None

    def _loader_can_resolve(self, section: Section, start: int, size: int) -> bool:
        """Entries the loader processes before livepatch relocations exist need loader symbols."""
        for relocation in self.patched.relocations_between(section, start, start + size):
            target = self.patched.target_of(relocation, in_code=False)
            if not isinstance(target, SymbolTarget):
                continue
            symbol = target.symbol
            if symbol.section is not None and (
                id(symbol.section) in self.slices
                or self.correlation.orig_of(symbol) is None
                or role_of(symbol.section) is SectionRole.REFERENCED_ENTRIES
            ):
                # Carried by the patch; a dynamic-debug descriptor only a jump entry uses
                # (print_hex_dump_debug) comes along when the kept entry is walked.
                continue
            resolution = self._resolution_for(symbol, record=False)
            if resolution is None or self.resolver.known_at_load(resolution):
                continue
            self._dropped_entries.add((id(section), start))
            self._refuse_or_drop_entry(section, start, resolution)
            return False
        return True

    def _refuse_or_drop_entry(self, section: Section, start: int, resolution: Resolution) -> None:
        """An entry whose symbol the loader cannot know yet: dropped where that is inert."""
        key = resolution.target_name
        user = self._user_of_entry(section, start)
        if section.name == ".static_call_sites":
            # Without its site entry the call goes through the trampoline: still correct.
            self.notes.append(f"static call site for key {key} left to its trampoline "
                              f"(key not exported from {resolution.objname})")
            return
        late = ("livepatch applies relocations against a module only after the loader has "
                "read the module's tables") if self.resolver.early_vmlinux else (
                "kernels before 5.8 apply livepatch relocations only after the loader has "
                "read the module's tables")
        if section.name == "__jump_table" and self.resolver.early_vmlinux and key.startswith(
            _INERT_KEY_PREFIXES
        ):
            # The site stays the compiler's default: a disabled tracepoint or pr_debug().
            what = "tracepoint" if key.startswith("__tracepoint_") else "dynamic debug print"
            self.notes.append(f"{what} {key.removeprefix('__tracepoint_')} in {user} is inert "
                              f"in the patched function: its key lives in module "
                              f"{resolution.objname}, bound only after the loader reads the "
                              "jump table, so its entry is dropped")
            return
        if section.name == "__jump_table":
            self.refusals.append(
                f"__jump_table entry in {user} uses static key {key} of {resolution.objname}, "
                f"which is not exported: {late}; test the key with static_key_enabled() "
                "instead of a static branch in the patched code"
            )
            return
        self.refusals.append(
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
        self._include_range(orc, index * size, index * size + size)

    def _entry_size(self, kind: TableKind, section: Section) -> int | None:
        """The table's entry size: given (environment, measured, sh_entsize) when it divides
        the section, else the stride the table's relocations show, checked against it."""
        try:
            size, origin = self.sizes.size_of(kind, section)
        except ValueError as error:
            self.refusals.append(str(error))
            return None
        if origin != "default" and whole_entries(kind, section, size):
            return size
        offsets = [r.offset for r in self.patched.relocations.get(id(section), ())]
        stride = inferred_stride(kind, section, offsets)
        if stride is not None:
            if stride != size:
                self.notes.append(f"section {section.name}: entries of {stride} bytes, as its "
                                  f"relocations show ({origin} size {size} does not fit)")
            return stride
        if origin == "default" and whole_entries(kind, section, size):
            return size  # entries without relocations at fixed places: the known layout
        hint = f"; set {kind.env}" if kind.env else ""
        self.refusals.append(
            f"section {section.name}: size {section.size} is not a multiple of the entry "
            f"size {size} ({origin}), and its relocations show no other{hint}"
        )
        return None

    # -- resolution ----------------------------------------------------------------------------

    def _resolution_for(self, symbol: Symbol, *, record: bool = True) -> Resolution | None:
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

    # -- output --------------------------------------------------------------------------------

    def build(self) -> ElfObject:
        """Pass (emit): the patch object, from what the other passes selected."""
        self.current = "emit"
        patched = self.patched
        out = ElfObject(name="patch")
        file_symbol = next((s for s in patched.obj.symbols if s.type == STT_FILE), None)
        if file_symbol is not None:
            out.symbols.append(Symbol(file_symbol.name, type=STT_FILE, shndx=file_symbol.shndx))
        for piece in self.slices.values():
            piece.finish()
        section_symbols: dict[int, Symbol] = {}
        symbol_map: dict[int, Symbol] = {}
        ordered = [s for s in patched.obj.sections if id(s) in self.slices]
        for source in ordered:
            piece = self.slices[id(source)]
            section = Section(
                name=source.name,
                type=source.type,
                flags=source.flags & ~SHF_GROUP,
                data=piece.data(),
                addralign=source.addralign,
                entsize=source.entsize,
                nobits_size=piece.size() if source.type == SHT_NOBITS else 0,
                info=source.info,
            )
            piece.out = section
            out.sections.append(section)
            section_symbol = Symbol(source.name, type=STT_SECTION, section=section)
            section_symbols[id(source)] = section_symbol
            out.symbols.append(section_symbol)
            for symbol in patched.symbols_in(source):
                mapped = piece.map(symbol.value, allow_end=symbol.size == 0)
                if mapped is None:
                    continue
                copy = Symbol(
                    symbol.name,
                    mapped,
                    symbol.size,
                    symbol.bind,
                    symbol.type,
                    symbol.other,
                    section=section,
                )
                symbol_map[id(symbol)] = copy
                out.symbols.append(copy)
        for source in ordered:
            piece = self.slices[id(source)]
            relocations = []
            for start, end in piece.ranges:
                for relocation in patched.relocations_between(source, start, end):
                    moved = self._retarget(relocation, source, piece, section_symbols, symbol_map,
                                           out)
                    if moved is not None:
                        relocations.append(moved)
            assert piece.out is not None  # every slice was given its output section above
            if relocations:
                piece.out.relocations = relocations
            if source.link is not None:
                piece.out.link = self._link_order_partner(source, relocations)
        modinfo = self._modinfo()
        if modinfo is not None:
            out.sections.append(modinfo)
        for section in out.sections:
            self.trace.say(self.current, f"section {section.name}: {section.size} bytes, "
                                         f"{len(section.relocations or ())} relocations")
        out.sections.append(Section(".note.GNU-stack", SHT_PROGBITS, 0, b""))
        return out

    def _link_order_partner(self, source: Section, relocations: list[Relocation]
                            ) -> Section | None:
        """The output section a SHF_LINK_ORDER section is ordered with.

        Its own partner when that was included. Some gcc versions put the entries of several
        functions in one ``__patchable_function_entries`` linked to the first function only
        (often ``.init.text``, never included): then the function its kept entries point to.
        ld refuses to mix ordered and unordered input sections of one name, so a partner is
        needed whenever one exists.
        """
        linked = self.slices.get(id(source.link))
        if linked is not None:
            return linked.out
        for relocation in relocations:
            target = relocation.symbol.section
            if target is not None and target.is_text:
                return target
        return None

    def _retarget(
        self,
        relocation: Relocation,
        source: Section,
        piece: _Slice,
        section_symbols: dict[int, Symbol],
        symbol_map: dict[int, Symbol],
        out: ElfObject,
    ) -> Relocation | None:
        offset = piece.map(relocation.offset)
        assert offset is not None
        symbol = relocation.symbol
        where = f"{source.name}+{relocation.offset:#x}"
        if symbol.type == STT_SECTION and symbol.section is not None:
            target_piece = self.slices.get(id(symbol.section))
            if target_piece is not None:
                place = _place(relocation, source)
                mapped = target_piece.map(place, allow_end=True)
                if mapped is None:
                    self.refusals.append(
                        f"{where}: refers to {symbol.section.name}+{place:#x}, "
                        "which the patch does not carry"
                    )
                    return None
                return Relocation(offset, relocation.type, section_symbols[id(symbol.section)],
                                  relocation.addend + mapped - place)
            target = self.patched.target_of(relocation, source.is_text)
            if not isinstance(target, SymbolTarget):
                self.refusals.append(f"{where}: refers to unnamed {symbol.section.name} data")
                return None
            return self._external(target.symbol, target.delta, offset, relocation, out, where,
                                  source)
        copy = symbol_map.get(id(symbol))
        if copy is not None:
            return Relocation(offset, relocation.type, copy, relocation.addend)
        if symbol.section is not None and id(symbol.section) in self.slices:
            self.refusals.append(f"{where}: refers to {symbol.name}, outside the carried part")
            return None
        return self._external(symbol, relocation.addend, offset, relocation, out, where, source)

    def _external(
        self,
        symbol: Symbol,
        addend: int,
        offset: int,
        relocation: Relocation,
        out: ElfObject,
        where: str,
        source: Section,
    ) -> Relocation | None:
        resolution = self._resolution_for(symbol)
        if resolution is None:
            if symbol.section is not None and self.correlation.orig_of(symbol) is None:
                self.refusals.append(f"{where}: refers to new symbol {symbol.name} not carried")
            return None
        if source.name in _LOADER_ONLY and not self.resolver.known_at_load(resolution):
            # Alternatives are copied into place at module load, before livepatch relocations
            # are applied: the copy would keep an unresolved address.
            self.refusals.append(
                f"{where}: uses {resolution.target_name}, which is not exported, in code the "
                "module loader patches in before livepatch relocations are applied"
            )
            return None
        undefined = self._undefined(resolution.name, out)
        return Relocation(offset, relocation.type, undefined, addend)

    def _undefined(self, name: str, out: ElfObject) -> Symbol:
        cache = self._undefined_by_name
        symbol = cache.get(name)
        if symbol is None:
            symbol = cache[name] = Symbol(name, bind=STB_GLOBAL)
            out.symbols.append(symbol)
        return symbol

    def _modinfo(self) -> Section | None:
        """Namespace imports the patched code needs (`import_ns=`); other modinfo stays home."""
        source = self.patched.obj.section_by_name(".modinfo")
        if source is None:
            return None
        imports = [
            entry
            for entry in source.data.split(b"\0")
            if entry.startswith(b"import_ns=")
        ]
        if not imports:
            return None
        data = b"\0".join(dict.fromkeys(imports)) + b"\0"
        return Section(".modinfo", source.type, source.flags, data, addralign=1)


def _place(relocation: Relocation, source: Section) -> int:
    """The offset a relocation designates in its symbol's section (addend minus the PC bias)."""
    base = relocation.addend
    if relocation.symbol.type != STT_SECTION:
        base += relocation.symbol.value
    if source.is_text and relocation.type in PC_RELATIVE_TYPES:
        return base + 4
    return base


def include_and_build(
    correlation: Correlation,
    comparison: Comparison,
    resolver: Resolver,
    sizes: EntrySizes,
    trace: Trace | None = None,
) -> Inclusion:
    """Run the passes in order (select functions, select table entries, safety checks)
    and, when nothing was refused, the last one: emit the patch object."""
    builder = PatchBuilder(correlation, comparison, resolver, sizes, trace)
    for selection_pass in (builder.select_functions, builder.select_table_entries,
                           builder.check):
        selection_pass()
    refusals = list(builder.refusals)
    output = None
    if not refusals:
        output = builder.build()
        refusals = list(builder.refusals)
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
    kept = [(piece.source.name, piece.size()) for piece in builder.slices.values()]
    return Inclusion(
        output=None if refusals else output,
        included_functions=builder.functions,
        resolutions=builder.resolutions,
        kept_sections=kept,
        refusals=refusals,
        notes=builder.notes,
        old_sympos=old_sympos,
    )


def _pads(symbol: Symbol, functions: list[Symbol]) -> bool:
    """Whether ``symbol`` is the padding that ends where its function, in ``functions``,
    begins (`__pfx_x` right before `x`)."""
    name = padded_function_name(symbol.name)
    return name is not None and any(
        f.name == name and f.value == symbol.value + symbol.size for f in functions)
