"""Original/patched object pairs compiled from a prepared Debian kernel tree.

Each case edits one source file, compiles the object before and after with the kernel's own
flags plus -ffunction-sections -fdata-sections, and restores the source. Shared by the corpus
tests and bench/diff_corpus.py.

The cases run on every kernel series in SERIES. What differs between series is said per case
(``per_series``): the same edit yields the same decisions, but not always the same sections.
Debian's 6.12 is built with IBT, so objtool runs on vmlinux.o only and its objects carry no
ORC, static-call, retpoline/return/call-site tables; CONFIG_CALL_PADDING adds
`__patchable_function_entries`; and CONFIG_FUNCTION_ALIGNMENT=16 with gcc 12 empties the
kernel's `__cold` (compiler_types.h), so nothing is split into `.cold` parts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from kpatchbuild.elf import read_elf
from kpatchbuild.elf.model import STT_SECTION

KCFLAGS = "-ffunction-sections -fdata-sections"
# The Debian kernel series the corpus runs on (see tests/conftest.py for their trees).
SERIES = ("6.1", "6.12")


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # path in the tree
    edit: Callable[[str], str]
    exit_code: int  # 0 written, 2 refused, 3 no change
    changed: frozenset[str] = frozenset()
    new: frozenset[str] = frozenset()
    kept_sections: frozenset[str] = frozenset()  # sections the output must carry
    refusal: str = ""  # words the refusal must contain
    carried: frozenset[str] = frozenset()  # functions OUT.o must define besides changed/new
    notes: tuple[str, ...] = field(default=())
    # Functions whose dynamic-debug descriptors OUT.o must carry: all of theirs, no others.
    dyndbg: frozenset[str] = frozenset()
    # Symbols OUT.o must leave to the running kernel (names as the report resolves them).
    references: frozenset[str] = frozenset()
    # Per kernel series, fields that differ from the ones above: {"6.12": {"carried": ...}}.
    per_series: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def for_series(self, series: str) -> Case:
        """The case as it reads on ``series``."""
        return replace(self, **self.per_series.get(series, {}))


def replace_once(old: str, new: str, after: str = "") -> Callable[[str], str]:
    """An edit replacing the first ``old`` found after the text ``after``."""

    def edit(text: str) -> str:
        start = text.index(after) if after else 0
        position = text.index(old, start)
        return text[:position] + new + text[position + len(old) :]

    return edit


def insert_lines_after_includes(count: int) -> Callable[[str], str]:
    def edit(text: str) -> str:
        last = list(re.finditer(r"^#include .*$", text, re.M))[-1]
        return text[: last.end()] + "\n" * count + text[last.end() :]

    return edit


CMDLINE = "fs/proc/cmdline.c"
BASE = "fs/proc/base.c"
READDIR = "fs/readdir.c"
MACCESS = "mm/maccess.c"
FORK = "kernel/fork.c"
# Four pr_debug() calls in two functions, built in (CONFIG_DYNAMIC_DEBUG=y, jump labels).
ASYNC = "kernel/async.c"

CASES = [
    Case("no_op", CMDLINE, lambda t: t + "\n/* nothing but a comment */\n", 3),
    Case(
        "string_change",
        CMDLINE,
        replace_once("seq_putc(m, '\\n');", 'seq_puts(m, " kpatched\\n");'),
        0,
        changed=frozenset({"cmdline_proc_show"}),
        kept_sections=frozenset({".text.cmdline_proc_show", "__mcount_loc", ".orc_unwind_ip"}),
        per_series={"6.12": {"kept_sections": frozenset({
            ".text.cmdline_proc_show", "__mcount_loc", "__patchable_function_entries"})}},
    ),
    Case(
        "new_function",
        CMDLINE,
        lambda t: replace_once("seq_puts(m, saved_command_line);", "kpb_show_twice(m);",
                               after="static int cmdline_proc_show")(
            replace_once(
                "static int cmdline_proc_show",
                "static noinline void kpb_show_twice(struct seq_file *m)\n{\n"
                "\tseq_puts(m, saved_command_line);\n\tseq_puts(m, saved_command_line);\n}\n\n"
                "static int cmdline_proc_show",
            )(t)
        ),
        0,
        changed=frozenset({"cmdline_proc_show"}),
        new=frozenset({"kpb_show_twice"}),
    ),
    Case(
        "static_local",
        CMDLINE,
        replace_once(
            "seq_puts(m, saved_command_line);",
            "static unsigned long kpb_reads;\n\n\tkpb_reads++;\n\tseq_puts(m, saved_command_line);",
        ),
        0,
        changed=frozenset({"cmdline_proc_show"}),
    ),
    Case(
        "new_global",
        CMDLINE,
        lambda t: replace_once("seq_puts(m, saved_command_line);",
                               "kpb_cmdline_reads++;\n\tseq_puts(m, saved_command_line);")(
            replace_once("static int cmdline_proc_show",
                         "unsigned long kpb_cmdline_reads;\n\nstatic int cmdline_proc_show")(t)
        ),
        0,
        changed=frozenset({"cmdline_proc_show"}),
    ),
    Case(
        "warn_in_changed_function",
        CMDLINE,
        replace_once("seq_puts(m, saved_command_line);",
                     "WARN_ON_ONCE(!saved_command_line);\n\tseq_puts(m, saved_command_line);"),
        0,
        changed=frozenset({"cmdline_proc_show"}),
        kept_sections=frozenset({"__bug_table"}),
    ),
    Case(
        "init_change",
        CMDLINE,
        replace_once('proc_create_single("cmdline", 0,', 'proc_create_single("cmdline", 0444,'),
        2,
        refusal="proc_cmdline_init",
    ),
    Case(
        "cold_split_and_bug",
        BASE,
        replace_once("\t\treturn -ESRCH;\n\tret = get_task_cmdline",
                     "\t\treturn -ENOENT;\n\tret = get_task_cmdline"),
        0,
        changed=frozenset({"proc_pid_cmdline_read"}),
        carried=frozenset({"proc_pid_cmdline_read.cold"}),
        kept_sections=frozenset({"__bug_table"}),
        per_series={"6.12": {"carried": frozenset()}},  # no `.cold` parts on 6.12
    ),
    Case(
        "changed_inline_callee",
        BASE,
        replace_once(
            "return !proc_pid(inode)->tasks[PIDTYPE_PID].first;",
            "return !proc_pid(inode)->tasks[PIDTYPE_PID].first || !inode->i_nlink;",
        ),
        0,
        changed=frozenset({"pid_delete_dentry", "proc_task_readdir"}),
    ),
    Case("line_shift_only", BASE, insert_lines_after_includes(3), 3),
    Case(
        "jump_label",
        BASE,
        replace_once(
            "rc = dname_to_vma_addr(dentry, &vm_start, &vm_end);",
            "rc = dname_to_vma_addr(dentry, &vm_start, &vm_end);\n"
            "\tif (!rc && vm_start == vm_end)\n\t\trc = -EINVAL;",
        ),
        0,
        changed=frozenset({"map_files_get_link"}),
        kept_sections=frozenset({"__jump_table"}),
    ),
    Case(
        "static_call",
        BASE,
        replace_once("if (pos >= PID_MAX_LIMIT + TGID_OFFSET)\n\t\treturn 0;",
                     "if (pos >= PID_MAX_LIMIT + TGID_OFFSET - 1)\n\t\treturn 0;"),
        0,
        changed=frozenset({"proc_pid_readdir"}),
        notes=("cond_resched",),
        references=frozenset({"__SCT__cond_resched"}),
        # No `.static_call_sites` without objtool: the call stays on its trampoline.
        per_series={"6.12": {"notes": ()}},
    ),
    Case(
        "data_layout_change",
        BASE,
        replace_once('REG("environ",    S_IRUSR, proc_environ_operations),',
                     'REG("environ",    S_IRUSR|S_IRGRP, proc_environ_operations),'),
        2,
        refusal="tgid_base_stuff",
    ),
    Case(
        "exception_table",
        READDIR,
        replace_once("if (reclen > buf->count)\n\t\treturn false;",
                     "if (reclen > buf->count || namlen > 4000)\n\t\treturn false;",
                     after="static bool filldir64("),
        0,
        changed=frozenset({"filldir64"}),
        kept_sections=frozenset({"__ex_table"}),
        # 6.12's access_ok() compares with USER_PTR_MAX, a boot-time constant patched into
        # vmlinux only: a module's copy of filldir64 would keep the placeholder.
        per_series={"6.12": {"exit_code": 2, "refusal": "boot-time constant USER_PTR_MAX"}},
    ),
    Case(
        # Exception-table entries without access_ok(): kernel-address faults handled inline.
        "exception_table_nofault",
        MACCESS,
        replace_once("return -ERANGE;", "return -EINVAL;",
                     after="long copy_from_kernel_nofault("),
        0,
        changed=frozenset({"copy_from_kernel_nofault"}),
        kept_sections=frozenset({"__ex_table"}),
    ),
    Case(
        # The compiler outlines the loop of memcg_charge_kernel_stack into `.part.0`, its
        # only function symbol; the change lands there.
        "part_subfunction",
        FORK,
        replace_once("for (i = 0; i < THREAD_SIZE / PAGE_SIZE; i++)\n"
                     "\t\tmemcg_kmem_uncharge_page",
                     "for (i = THREAD_SIZE / PAGE_SIZE - 1; i >= 0; i--)\n"
                     "\t\tmemcg_kmem_uncharge_page"),
        0,
        changed=frozenset({"memcg_charge_kernel_stack.part.0"}),
        # 6.2 made the error path uncharge only the pages it charged: other text, same edit.
        per_series={"6.12": {"edit": replace_once(
            "for (i = 0; i < nr_charged; i++)\n\t\tmemcg_kmem_uncharge_page",
            "for (i = nr_charged - 1; i >= 0; i--)\n\t\tmemcg_kmem_uncharge_page")}},
    ),
    Case(
        "dyndbg_in_changed_function",
        ASYNC,
        replace_once('pr_debug("calling  %lli_%pS', 'pr_debug("kpatched: calling %lli_%pS'),
        0,
        changed=frozenset({"async_run_entry_fn"}),
        kept_sections=frozenset({"__dyndbg", "__jump_table"}),
        dyndbg=frozenset({"async_run_entry_fn"}),
    ),
    Case(
        # The new descriptor shifts the __COUNTER__ in every later descriptor's name
        # (__UNIQUE_ID_ddebugN): the functions using those must still compare equal.
        "dyndbg_added_above_others",
        ASYNC,
        replace_once("\tspin_lock_irqsave(&async_lock, flags);\n",
                     '\tpr_debug("kpatched: lowest\\n");\n'
                     "\tspin_lock_irqsave(&async_lock, flags);\n"),
        0,
        changed=frozenset({"lowest_in_progress"}),
        kept_sections=frozenset({"__dyndbg", "__jump_table"}),
        dyndbg=frozenset({"lowest_in_progress"}),
    ),
    Case(
        # print_hex_dump_debug's descriptor is named by its jump entry only, not by the code.
        "dyndbg_descriptor_only_in_jump_entry",
        ASYNC,
        replace_once("\tspin_lock_irqsave(&async_lock, flags);\n",
                     '\tprint_hex_dump_debug("kpb: ", DUMP_PREFIX_NONE, 16, 1, domain, 16, false);'
                     "\n\tspin_lock_irqsave(&async_lock, flags);\n"),
        0,
        changed=frozenset({"lowest_in_progress"}),
        kept_sections=frozenset({"__dyndbg", "__jump_table"}),
        dyndbg=frozenset({"lowest_in_progress"}),
    ),
]


@dataclass(frozen=True)
class BuiltPair:
    case: Case
    orig: Path
    patched: Path


class CorpusBuilder:
    """Compiles objects in a (scratch) kernel tree; originals are built once per file."""

    def __init__(self, tree: Path, release: str, workdir: Path, compiler: str = "") -> None:
        self.tree = tree
        self.release = release
        self.workdir = workdir
        # CC for make, when the tree was configured with another compiler than `gcc`.
        self.compiler = compiler
        self._originals: dict[str, Path] = {}

    def make_object(self, source: str) -> Path:
        target = source[:-2] + ".o"
        compiler = [f"CC={self.compiler}"] if self.compiler else []
        subprocess.run(
            ["make", "-s", "-C", str(self.tree), f"KERNELRELEASE={self.release}",
             f"KCFLAGS={KCFLAGS}", *compiler, target],
            check=True,
            capture_output=True,
        )
        return self.tree / target

    def original(self, source: str) -> Path:
        if source not in self._originals:
            destination = self.workdir / "orig" / (source.replace("/", "__")[:-2] + ".o")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.make_object(source), destination)
            self._originals[source] = destination
        return self._originals[source]

    def build(self, case: Case) -> BuiltPair:
        orig = self.original(case.source)
        path = self.tree / case.source
        pristine = path.read_text()
        patched_text = case.edit(pristine)
        assert patched_text != pristine, f"{case.name}: the edit changed nothing"
        destination = self.workdir / case.name / Path(case.source).with_suffix(".o").name
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            _replace_file(path, patched_text)
            shutil.copyfile(self.make_object(case.source), destination)
        finally:
            _replace_file(path, pristine)
        return BuiltPair(case, orig, destination)


def _replace_file(path: Path, text: str) -> None:
    # A new inode each time: a hard-linked tree copy never sees the edit.
    temporary = path.with_name(path.name + ".kpb-tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def dyndbg_descriptors(path: Path) -> list[tuple[str, str]]:
    """(function, format) of each dynamic-debug descriptor in an object, sorted.

    Reads the `function` and `format` pointers of struct _ddebug (offsets 8 and 24 since
    Linux 2.6.30) through their relocations into the string sections.
    """
    obj = read_elf(path)
    table = obj.section_by_name("__dyndbg")
    if table is None:
        return []
    pointers = {}
    for relocation in table.relocations:
        target = relocation.symbol
        assert target.section is not None, f"{path}: __dyndbg points outside the object"
        start = relocation.addend + (0 if target.type == STT_SECTION else target.value)
        data = target.section.data
        pointers[relocation.offset] = data[start : data.index(b"\0", start)].decode()
    descriptors = []
    for symbol in obj.symbols:
        if symbol.section is table and symbol.type != STT_SECTION:
            descriptors.append((pointers[symbol.value + 8], pointers[symbol.value + 24]))
    return sorted(descriptors)
