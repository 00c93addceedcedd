"""Exported symbols' versions (genksyms CRCs), before and after the patch.

With CONFIG_MODVERSIONS every exported symbol carries a CRC of its type, as genksyms
expands it from the preprocessed source: every struct it takes or returns, field by field.
Modules of the running kernel were linked against those CRCs. A patch that changes such a
type (a field added to a struct an exported function takes, or only a header included
that completes a struct genksyms saw as opaque) changes the CRC: the patched code then
disagrees with the running kernel's callers about the layout of what they pass, even when
no instruction of the exported function changed. Such a patch is refused, naming the
symbol, both CRCs and the types whose expansion changed; kpatch refuses the same patches
by comparing Module.symvers before and after its full build.

The CRCs are computed as kbuild computes them when it compiles an object with exports
(scripts/Makefile.build, ``gen_symversions``): the object's own compile command, made to
preprocess with ``-D__GENKSYMS__``, piped into the tree's ``scripts/genksyms/genksyms``
(``-T`` keeps the type expansions, which name what changed). Kernels whose config uses
gendwarfksyms instead (CONFIG_GENDWARFKSYMS, Linux 6.14+) compute the CRCs from the
compiled object's DWARF: the object's ``__export_symbol_*`` names piped into the tree's
``scripts/gendwarfksyms/gendwarfksyms OBJ``, as kbuild does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base import kbuild
from kpatchbuild.base.commands import Runner, run_step
from kpatchbuild.base.errors import BuildError
from kpatchbuild.elf.read import iter_symbol_records

GENKSYMS = "scripts/genksyms/genksyms"
GENDWARFKSYMS = "scripts/gendwarfksyms/gendwarfksyms"
_SYMVER = re.compile(r"^#SYMVER (\S+) (0x[0-9a-f]+)$", re.M)
_COMPILE_OUTPUT = re.compile(r"\s-c\s+-o\s+\S+")
_DEPENDENCY_FILE = re.compile(r"\s-Wp,-MM?D,\S+")
# A type reference in genksyms' expansions: s#name (struct), u# (union), e# (enum), t#.
_TYPE_REFERENCE = re.compile(r"\b[sute]#\w+")


@dataclass(frozen=True)
class SymbolVersions:
    """The CRCs of an object's exported symbols, and genksyms' expansion of each type."""

    crcs: dict[str, str]
    types: dict[str, str]  # "get_device" or "s#device" -> its expansion


def exports_symbols(obj: Path) -> bool:
    """Whether the object exports anything (kbuild's test: a ``__ksymtab`` symbol)."""
    return any(record.name.startswith("__ksymtab") for record in iter_symbol_records(obj))


def versioning_tool(config_text: str) -> str | None:
    """The tool that versions the config's exports: GENKSYMS, GENDWARFKSYMS, or None when
    exports are not versioned."""
    if not re.search(r"^CONFIG_MODVERSIONS=y$", config_text, re.M):
        return None
    if re.search(r"^CONFIG_GENDWARFKSYMS=y$", config_text, re.M):
        return GENDWARFKSYMS
    return GENKSYMS


def genksyms_command(record: kbuild.ObjectRecord, symtypes: str) -> str:
    """kbuild's ``cmd_gensymtypes_c`` for the object recorded in ``record``: its compile
    command made to preprocess (with ``-D__GENKSYMS__``) into genksyms."""
    compile_command = record.shell_command.split(";")[0]
    if not _COMPILE_OUTPUT.search(compile_command):
        raise BuildError(f"{record.target}: its recorded command is not a compile "
                         "(no `-c -o`); cannot compute its exports' versions")
    preprocess = _COMPILE_OUTPUT.sub(" -E -D__GENKSYMS__ -o -",
                                     _DEPENDENCY_FILE.sub("", compile_command), count=1)
    return f"{preprocess} | {GENKSYMS} -T {symtypes} -r /dev/null"


def gendwarfksyms_command(obj: str, symtypes: str) -> str:
    """kbuild's gendwarfksyms step (Linux 6.14+) for the compiled object ``obj``."""
    exported = rf"nm {obj} | sed -n 's/.* __export_symbol_\(.*\)/\1/p'"
    return f"{exported} | {GENDWARFKSYMS} --symtypes {symtypes} {obj}"


def symbol_versions(tree: Path, record: kbuild.ObjectRecord, tool: str, *, obj: Path,
                    log: Path, runner: Runner) -> SymbolVersions:
    """The versions ``tool`` gives the exports of ``record``'s object: genksyms reads the
    tree's current sources, gendwarfksyms the compiled object ``obj``."""
    scratch = tree / f"{record.target}.kpb-symversions"
    symtypes = scratch.with_suffix(".symtypes")
    try:
        if tool == GENDWARFKSYMS:
            command = gendwarfksyms_command(str(obj), str(symtypes.relative_to(tree)))
        else:
            command = genksyms_command(record, str(symtypes.relative_to(tree)))
        run_step(["sh", "-c", f"{command} > {scratch.relative_to(tree)}"],
                 step=f"genksyms {record.target}", log=log, cwd=tree, runner=runner)
        crcs = dict(_SYMVER.findall(scratch.read_text()))
        types = _read_symtypes(symtypes.read_text()) if symtypes.is_file() else {}
    finally:
        scratch.unlink(missing_ok=True)
        symtypes.unlink(missing_ok=True)
    return SymbolVersions(crcs, types)


def version_changes(before: SymbolVersions, after: SymbolVersions) -> str | None:
    """What the patch does to the versions of the exports, in one line (None: nothing):
    the symbols with both CRCs, and the types whose expansion changed under them."""
    changed = [name for name in sorted(before.crcs.keys() & after.crcs.keys())
               if before.crcs[name] != after.crcs[name]]
    if not changed:
        return None
    shown = ", ".join(f"{name} {before.crcs[name]} -> {after.crcs[name]}"
                      for name in changed[:3])
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    counts: dict[str, int] = {}
    for name in changed:
        for type_name in _changed_types(name, before.types, after.types):
            counts[type_name] = counts.get(type_name, 0) + 1
    types = sorted(counts, key=lambda t: (-counts[t], t))
    because = (f"; the types whose expansion changed: {', '.join(types[:4])}"
               f"{f' and {len(types) - 4} more' if len(types) > 4 else ''}" if types else "")
    noun = "symbol changes its version" if len(changed) == 1 else \
        f"{len(changed)} exported symbols change their versions"
    return f"{'exported ' + noun if len(changed) == 1 else noun} ({shown}{more}){because}"


def _changed_types(symbol: str, before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The types reachable from ``symbol`` whose genksyms expansion differs, nearest first."""
    seen: list[str] = []
    changed: list[str] = []
    queue = [symbol]
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.append(name)
        old, new = before.get(name), after.get(name)
        if name != symbol and old != new:
            changed.append(name)
        for text in (old, new):
            if text:
                queue += [t for t in _TYPE_REFERENCE.findall(text) if t not in seen]
    return changed


def _read_symtypes(text: str) -> dict[str, str]:
    types = {}
    for line in text.splitlines():
        name, _, expansion = line.partition(" ")
        if name:
            types[name] = expansion
    return types
