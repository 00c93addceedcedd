"""Pass 1: pair each symbol and section of the patched object with its original.

Names are the first evidence, but not all names survive a rebuild: gcc numbers static locals
(`counter.3`) and clones (`foo.isra.0`, `foo.constprop.1`, `foo.part.0`, `foo.cold`) with a
per-file counter that moves when anything is added above them. Numbered names are paired by
their un-numbered form when that is one-to-one; otherwise a static local is paired by the
functions that use it, and a clone by identical contents. What stays ambiguous is reported
so the caller can refuse, rather than guessing a pairing that would patch the wrong function.
Some statics are never paired (``is_fresh_static``: lockdep keys, once-flags, ratelimit
states, compiler-made data): the patch carries fresh copies of them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import xxhash

from kpatchbuild.differ.index import (
    AnonymousTarget,
    ObjectIndex,
    StringTarget,
    SymbolTarget,
    base_function_name,
    is_fresh_static,
    is_numbered,
    normalized_name,
)
from kpatchbuild.differ.special import SectionRole, role_of
from kpatchbuild.elf.model import SHF_WRITE, STT_FILE, STT_SECTION, Section, Symbol


@dataclass
class Correlation:
    """Symbol and section pairs between the original (``orig``) and patched objects."""

    orig: ObjectIndex
    patched: ObjectIndex
    partner: dict[int, Symbol] = field(default_factory=dict)  # id(patched) -> orig
    reverse: dict[int, Symbol] = field(default_factory=dict)  # id(orig) -> patched
    section_partner: dict[int, Section] = field(default_factory=dict)
    # Clone groups that could not be paired safely: normalized name -> reason.
    ambiguous_functions: dict[str, str] = field(default_factory=dict)
    # Numbered static locals of the patched object whose original could not be told.
    unpaired_locals: list[Symbol] = field(default_factory=list)

    def orig_of(self, symbol: Symbol) -> Symbol | None:
        return self.partner.get(id(symbol))

    def patched_of(self, symbol: Symbol) -> Symbol | None:
        return self.reverse.get(id(symbol))

    def pair(self, patched: Symbol, orig: Symbol) -> None:
        self.partner[id(patched)] = orig
        self.reverse[id(orig)] = patched


def correlate_symbols(orig: ObjectIndex, patched: ObjectIndex) -> Correlation:
    """Pair symbols, then sections; see the module docstring for the evidence used."""
    result = Correlation(orig, patched)
    orig_groups = _candidates(orig)
    patched_groups = _candidates(patched)
    orig_refs = _referencing_functions(orig)
    patched_refs = _referencing_functions(patched)

    for key, patched_list in patched_groups.items():
        orig_list = orig_groups.get(key, [])
        if not orig_list:
            continue
        numbered, kind = key[0], key[1]
        if not numbered:
            # Plain names are unique within an object: pair them directly.
            result.pair(patched_list[0], orig_list[0])
            continue
        if len(patched_list) == 1 and len(orig_list) == 1:
            result.pair(patched_list[0], orig_list[0])
            continue
        if kind == "function":
            _pair_clones(result, key[2], orig_list, patched_list)
        else:
            _pair_locals(result, orig_list, patched_list, orig_refs, patched_refs)
    _pair_sections(result)
    return result


def _kind(symbol: Symbol) -> str:
    if symbol.section is None:
        return "undefined"
    return "function" if symbol.is_function else "data"


def _candidates(index: ObjectIndex) -> dict[tuple[bool, str, str], list[Symbol]]:
    groups: dict[tuple[bool, str, str], list[Symbol]] = defaultdict(list)
    for symbol in index.obj.symbols:
        if not symbol.name or symbol.type in (STT_SECTION, STT_FILE) or is_fresh_static(symbol):
            continue
        kind = _kind(symbol)
        if kind == "undefined" or not symbol.is_local or not is_numbered(symbol.name):
            groups[(False, kind, symbol.name)].append(symbol)
        else:
            groups[(True, kind, normalized_name(symbol.name))].append(symbol)
    return groups


def _referencing_functions(index: ObjectIndex) -> dict[int, dict[str, int]]:
    """id(data symbol) -> {normalized name of a function or variable using it: offset of its
    first use}. A variable counts: a table pointing at compound literals is what tells them
    apart when two hold the same value."""
    refs: dict[int, dict[str, int]] = defaultdict(dict)
    for section in index.obj.sections:
        if role_of(section) not in (SectionRole.CODE, SectionRole.DATA):
            continue
        for relocation in index.relocations.get(id(section), ()):
            target = index.target_of(relocation, in_code=section.is_text)
            if not isinstance(target, SymbolTarget) or target.symbol.is_function:
                continue
            user = index.containing(section, relocation.offset)
            if user is not None and user is not target.symbol:
                uses = refs[id(target.symbol)]
                # A static used by foo.part.0 or foo.cold (after a split) is still foo's.
                name = (base_function_name(user.name) if user.is_function
                        else normalized_name(user.name))
                offset = relocation.offset - user.value
                if name not in uses or offset < uses[name]:
                    uses[name] = offset
    return refs


def _pair_clones(
    result: Correlation, name: str, orig_list: list[Symbol], patched_list: list[Symbol]
) -> None:
    """Pair compiler clones by identical contents; one changed leftover on each side pairs too."""
    orig_left = list(orig_list)
    patched_left = []
    by_print: dict[str, list[Symbol]] = defaultdict(list)
    for symbol in orig_left:
        by_print[_loose_fingerprint(result.orig, symbol)].append(symbol)
    for symbol in patched_list:
        same = by_print.get(_loose_fingerprint(result.patched, symbol))
        if same:
            match = same.pop(0)
            orig_left.remove(match)
            result.pair(symbol, match)
        else:
            patched_left.append(symbol)
    if len(orig_left) == 1 and len(patched_left) == 1:
        result.pair(patched_left[0], orig_left[0])
    elif orig_left and patched_left:
        names = ", ".join(sorted(s.name for s in orig_left))
        result.ambiguous_functions[name] = (
            f"compiler clones of {name} changed ({names} in the original) and cannot be paired"
        )


def _loose_fingerprint(index: ObjectIndex, symbol: Symbol) -> str:
    """Contents with references by un-numbered name: equal for a clone that did not change."""
    section = symbol.section
    assert section is not None
    digest = xxhash.xxh3_64(index.symbol_bytes(symbol))
    for relocation in index.relocations_between(section, symbol.value, symbol.value + symbol.size):
        target = index.target_of(relocation, in_code=section.is_text)
        digest.update(repr((relocation.offset - symbol.value, relocation.type,
                            _loose_key(target))).encode())
    return digest.hexdigest()


def _loose_key(target: SymbolTarget | StringTarget | AnonymousTarget) -> tuple[Any, ...]:
    if isinstance(target, SymbolTarget):
        return ("sym", normalized_name(target.symbol.name), target.delta)
    if isinstance(target, StringTarget):
        return ("str", target.text, target.delta)
    return ("anon", target.section.name, target.addend)


def _pair_locals(
    result: Correlation,
    orig_list: list[Symbol],
    patched_list: list[Symbol],
    orig_refs: dict[int, dict[str, int]],
    patched_refs: dict[int, dict[str, int]],
) -> None:
    """Pair numbered static locals by the functions that use them.

    Several statics of one name used by the same functions (lockdep keys, once-flags of
    two WARN_ONCEs) pair in the order the code first uses them, when both sides have as many.
    """

    def by_users(
        symbols: list[Symbol], refs: dict[int, dict[str, int]]
    ) -> dict[frozenset[str], list[Symbol]]:
        groups: dict[frozenset[str], list[Symbol]] = defaultdict(list)
        for symbol in symbols:
            groups[frozenset(refs.get(id(symbol), {}))].append(symbol)
        for users, members in groups.items():
            first = sorted(users)[0] if users else ""
            members.sort(key=lambda s: (refs.get(id(s), {}).get(first, 0), s.name))
        return groups

    orig_groups = by_users(orig_list, orig_refs)
    for users, symbols in by_users(patched_list, patched_refs).items():
        originals = orig_groups.get(users, [])
        if users and len(symbols) == len(originals):
            for patched_symbol, original in zip(symbols, originals, strict=True):
                result.pair(patched_symbol, original)
            continue
        # As many as the patch added or removed: pair those whose contents (size, initial
        # bytes, what they point to) say which they are, one to one.
        left = _pair_by_contents(result, symbols, originals)
        result.unpaired_locals.extend(left)


def _pair_by_contents(result: Correlation, symbols: list[Symbol],
                      originals: list[Symbol]) -> list[Symbol]:
    """Pair statics whose loose fingerprint is unique on both sides; return the rest."""
    def prints(index: ObjectIndex, group: list[Symbol]) -> dict[str, list[Symbol]]:
        found: dict[str, list[Symbol]] = defaultdict(list)
        for symbol in group:
            found[_loose_fingerprint(index, symbol) + f":{symbol.size}"].append(symbol)
        return found

    mine, theirs = prints(result.patched, symbols), prints(result.orig, originals)
    left = []
    for key, group in mine.items():
        match = theirs.get(key, [])
        if len(group) == 1 and len(match) == 1:
            result.pair(group[0], match[0])
        elif group and len(group) == len(match) and all(map(_constant, group + match)):
            # Constant twins (two `__compound_literal.N` of the same value): nothing can
            # tell them apart, and nothing needs to: any pairing holds the same bytes.
            for patched_symbol, original in zip(group, match, strict=True):
                result.pair(patched_symbol, original)
        else:
            left.extend(group)
    return left


def _constant(symbol: Symbol) -> bool:
    """Data no one writes: read-only sections, and `.data.rel.ro*` (written only by the
    relocations that fill it in; the kernel makes it read-only after init)."""
    section = symbol.section
    return section is not None and (not section.flags & SHF_WRITE
                                    or section.name.startswith(".data.rel.ro"))


def _pair_sections(result: Correlation) -> None:
    orig_sections = {section.name: section for section in result.orig.obj.sections}
    for section in result.patched.obj.sections:
        partner = None
        for symbol in result.patched.symbols_in(section):
            original = result.orig_of(symbol)
            if original is not None and original.section is not None:
                partner = original.section
                break
        if partner is None:
            partner = orig_sections.get(section.name)
        if partner is not None:
            result.section_partner[id(section)] = partner
