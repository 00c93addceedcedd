"""Special sections: the kernel's tables that describe code living elsewhere.

Each table (bug entries, exception fixups, alternatives, jump labels, static calls, ORC,
ftrace call sites, objtool's site lists...) is an array of fixed-size entries whose first
field points at an instruction. The patch object keeps exactly the entries whose instruction
lies in an included function. Entry sizes differ between kernel versions; they come from, in
order: the environment variables create-diff-object reads (``BUG_STRUCT_SIZE``...), sizes the
caller measured on the kernel being built (see PROBE_SOURCE), the section's own sh_entsize,
then the x86_64 defaults of Linux 5.10 to 6.x. A table whose size does not divide by its
entry size is refused rather than cut at the wrong places.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from kpatchbuild.elf.model import SHT_PROGBITS, ElfObject, Section


class SectionRole(Enum):
    """What the differ does with a section of the patched object."""

    CODE = "code"  # functions: compared and included one by one
    DATA = "data"  # data symbols: compared; new ones included when referenced
    ENTRIES = "entries"  # a table of entries, each anchored at an instruction
    ORC = "orc"  # .orc_unwind_ip, with .orc_unwind following it index for index
    ORC_DATA = "orc_data"  # .orc_unwind: handled with its ip table
    REFERENCED_ENTRIES = "referenced_entries"  # entries kept when included code uses them
    CODE_PIECES = "code_pieces"  # out-of-line code referenced piecewise (.altinstr_aux...)
    MODINFO = "modinfo"  # only `import_ns=` lines are kept
    EXPORTS = "exports"  # export tables: dropped; a new export is refused
    MARKS = "marks"  # the patch author's marks (kpatch-macros.h): read, never carried
    DROP = "drop"  # annotations for tools, debug info, notes


@dataclass(frozen=True, slots=True)
class TableKind:
    """An entry table: its environment override and default x86_64 entry size."""

    name: str
    env: str | None
    default_size: int
    # Relocations in kept entries may not become livepatch relocations (the kernel applies
    # them only after the table was processed at module load).
    loader_resolved_only: bool = False
    # Entries are aligned at their start but the assembler emits only their fields, so the
    # last one may lack the struct's tail padding (.parainstructions before 6.8: a pointer
    # and two bytes, or a pointer, two bytes and a short, in a 16-byte struct).
    short_last_entry: bool = False


ENTRY_TABLES: dict[str, TableKind] = {
    t.name: t
    for t in (
        TableKind("__bug_table", "BUG_STRUCT_SIZE", 12),
        TableKind("__ex_table", "EX_STRUCT_SIZE", 12),
        TableKind(".altinstructions", "ALT_STRUCT_SIZE", 12),
        TableKind("__jump_table", "JUMP_STRUCT_SIZE", 16, loader_resolved_only=True),
        TableKind(".static_call_sites", "STATIC_CALL_STRUCT_SIZE", 8, loader_resolved_only=True),
        TableKind(".parainstructions", "PARA_STRUCT_SIZE", 16, loader_resolved_only=True,
                  short_last_entry=True),
        TableKind(".orc_unwind_ip", None, 4),
        TableKind("__mcount_loc", None, 8),
        TableKind("__patchable_function_entries", None, 8),
        TableKind(".smp_locks", None, 4),
        TableKind(".retpoline_sites", None, 4),
        TableKind(".return_sites", None, 4),
        TableKind(".call_sites", None, 4),
        TableKind(".ibt_endbr_seal", None, 4),
        TableKind(".kcfi_traps", None, 4),
    )
}
ORC_TABLE = TableKind(".orc_unwind", "ORC_STRUCT_SIZE", 6)
DYNDBG_TABLE = TableKind("__dyndbg", None, 56)
# Dynamic-debug descriptors: `__dyndbg`, called `__verbose` in older kernels (RHEL 8's 4.18).
DYNDBG_SECTIONS = frozenset({"__dyndbg", "__verbose"})
# Class maps (`DECLARE_DYNDBG_CLASSMAP`, 6.1+) that descriptors with a class_id depend on.
DYNDBG_CLASSES_SECTION = "__dyndbg_classes"
PRINTK_INDEX_TABLE = TableKind(".printk_index", "PRINTK_INDEX_STRUCT_SIZE", 8)

# Boot-time constants (Linux 6.11+): each entry marks an instruction whose placeholder
# immediate the kernel rewrites in vmlinux at boot; modules are never fixed up.
RUNTIME_CONSTANT_PREFIXES = ("runtime_ptr_", "runtime_shift_")

# Out-of-line code reached from functions: kept piece by piece for the included functions.
CODE_PIECE_SECTIONS = frozenset({".altinstr_replacement", ".altinstr_aux", ".fixup"})

_DROP_PREFIXES = (
    ".discard",
    ".debug",
    ".note",
    ".comment",
    ".BTF",
    ".gnu.",
    ".llvm",
    ".printk_index",  # format catalogue for debugfs: informational, never needed for a patch
    "__dyndbg_classes",
    ".orc_header",
    "__tracepoints_ptrs",
    "__tracepoints_strings",
    ".static_call_tramp_key",
    ".init.klp",
)
_EXPORT_PREFIXES = ("__ksymtab", "___ksymtab", "__kcrctab", "___kcrctab", ".export_symbol")


# Sections kpatch-macros.h fills: `.kpatchbuild.pre_patch`, `.kpatchbuild.ignore_function`...
MARK_PREFIX = ".kpatchbuild."
# The sections kpatch's own kpatch-macros.h fills, for objects built against it: the same
# marks, spelled kpatch's way (`.kpatch.callbacks.pre_patch` holds {fn, objname} pairs).
KPATCH_MARK_SECTIONS = {
    ".kpatch.callbacks.pre_patch": "pre_patch",
    ".kpatch.callbacks.post_patch": "post_patch",
    ".kpatch.callbacks.pre_unpatch": "pre_unpatch",
    ".kpatch.callbacks.post_unpatch": "post_unpatch",
    ".kpatch.ignore.functions": "ignore_function",
    ".kpatch.ignore.sections": "ignore_section",
    ".kpatch.force": "force",
}


def mark_kind(section: Section) -> str | None:
    """The kind of mark a section holds (``pre_patch``, ``ignore_function``...), or None."""
    if section.name.startswith(MARK_PREFIX):
        return section.name[len(MARK_PREFIX):]
    return KPATCH_MARK_SECTIONS.get(section.name)


def role_of(section: Section) -> SectionRole:
    """Classify a section of a kernel object by name and flags."""
    name = section.name
    if mark_kind(section) is not None:
        return SectionRole.MARKS
    if name in ENTRY_TABLES:
        return SectionRole.ORC if name == ".orc_unwind_ip" else SectionRole.ENTRIES
    if name == ".orc_unwind":
        return SectionRole.ORC_DATA
    if name in DYNDBG_SECTIONS:
        return SectionRole.REFERENCED_ENTRIES
    if name in CODE_PIECE_SECTIONS:
        return SectionRole.CODE_PIECES
    if name == ".modinfo":
        return SectionRole.MODINFO
    if name.startswith(_EXPORT_PREFIXES):
        return SectionRole.EXPORTS
    if name.startswith(_DROP_PREFIXES) or not section.is_alloc:
        return SectionRole.DROP
    if section.is_text:
        return SectionRole.CODE
    return SectionRole.DATA


def whole_entries(kind: TableKind, section: Section, size: int) -> bool:
    """Does ``section`` hold whole entries of ``size`` bytes?

    A table whose last entry may be short (``short_last_entry``) holds whole entries when
    the padding its alignment would add completes the last one; its fields end before.
    """
    if size <= 0:
        return False
    if section.size % size == 0:
        return True
    if not kind.short_last_entry or section.addralign <= 1 or size % section.addralign:
        return False
    padded = -(-section.size // section.addralign) * section.addralign
    return padded % size == 0


def inferred_stride(kind: TableKind, section: Section, offsets: list[int]) -> int | None:
    """The entry size the table's own relocations show, or None if none fits.

    Every entry of a table carries its relocations at the same offsets (its pointer
    fields), the first at offset 0: the smallest size that divides the section (as
    ``whole_entries`` judges) and gives every entry the same pattern is the entry size.
    """
    if not offsets or section.size <= 0:
        return None
    present = set(offsets)
    for stride in range(4, 65):  # no kernel table has entries of more than 64 bytes
        if not whole_entries(kind, section, stride):
            continue
        count = -(-section.size // stride)
        pattern = {o for o in present if o < stride}
        if 0 not in pattern:
            continue
        if all({o - k * stride for o in present if k * stride <= o < (k + 1) * stride}
               == {p for p in pattern if k * stride + p < section.size}
               for k in range(count)):
            return stride
    return None


class EntrySizes:
    """Entry sizes per table name, resolved env > measured > sh_entsize > default."""

    def __init__(
        self,
        measured: Mapping[str, int] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.measured = dict(measured or {})
        self.environ = os.environ if environ is None else environ

    def size_of(self, kind: TableKind, section: Section) -> tuple[int, str]:
        """The entry size and where it came from (for the report)."""
        if kind.env and self.environ.get(kind.env):
            value = self.environ[kind.env]
            try:
                return int(value, 0), f"${kind.env}"
            except ValueError:
                raise ValueError(f"{kind.env}={value!r} is not a number") from None
        if kind.name in self.measured:
            return self.measured[kind.name], "measured"
        if section.entsize:
            return section.entsize, "sh_entsize"
        return kind.default_size, "default"


# C compiled against the configured kernel tree (with its own flags) to measure the entry
# sizes without debug info: each size becomes the value of a global, read back from the
# object's data (see sizes_from_probe). Fields missing from a kernel are guarded by #ifdef.
PROBE_SOURCE = r"""
#include <linux/bug.h>
#include <linux/extable.h>
#include <linux/jump_label.h>
#include <linux/static_call.h>
#include <linux/dynamic_debug.h>
#include <asm/extable.h>
#include <asm/alternative.h>
#include <asm/orc_types.h>
#ifdef CONFIG_PARAVIRT
#include <asm/paravirt_types.h>
#endif
#ifdef CONFIG_PRINTK_INDEX
#include <linux/printk.h>
#endif

#define KPB_SIZE(name, type) const unsigned long kpb_size_##name = sizeof(type)

#ifdef CONFIG_GENERIC_BUG
KPB_SIZE(bug_table, struct bug_entry);
#endif
KPB_SIZE(ex_table, struct exception_table_entry);
KPB_SIZE(altinstructions, struct alt_instr);
#ifdef CONFIG_JUMP_LABEL
KPB_SIZE(jump_table, struct jump_entry);
#endif
#ifdef CONFIG_HAVE_STATIC_CALL_INLINE
KPB_SIZE(static_call_sites, struct static_call_site);
#endif
#ifdef CONFIG_UNWINDER_ORC
KPB_SIZE(orc_unwind, struct orc_entry);
#endif
/* Linux 6.8 folded paravirt patching into alternatives: PARAVIRT_PATCH and
   struct paravirt_patch_site (and the .parainstructions table) went away together. */
#if defined(CONFIG_PARAVIRT) && defined(CONFIG_PARAVIRT_XXL) && defined(PARAVIRT_PATCH)
KPB_SIZE(parainstructions, struct paravirt_patch_site);
#endif
#ifdef CONFIG_DYNAMIC_DEBUG_CORE
KPB_SIZE(dyndbg, struct _ddebug);
#endif
"""

_PROBE_NAMES = {
    "bug_table": "__bug_table",
    "ex_table": "__ex_table",
    "altinstructions": ".altinstructions",
    "jump_table": "__jump_table",
    "static_call_sites": ".static_call_sites",
    "orc_unwind": ".orc_unwind",
    "parainstructions": ".parainstructions",
    "dyndbg": "__dyndbg",
}


def sizes_from_probe(probe: ElfObject) -> dict[str, int]:
    """Read the sizes PROBE_SOURCE compiled into ``probe``: {section name: entry size}."""
    sizes: dict[str, int] = {}
    for symbol in probe.symbols:
        if not symbol.name.startswith("kpb_size_") or symbol.section is None:
            continue
        key = _PROBE_NAMES.get(symbol.name[len("kpb_size_") :])
        if key is None or symbol.section.type != SHT_PROGBITS or symbol.size != 8:
            continue
        data = symbol.section.data[symbol.value : symbol.value + 8]
        sizes[key] = int.from_bytes(data, "little")
    return sizes
