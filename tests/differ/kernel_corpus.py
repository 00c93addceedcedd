"""Original/patched object pairs compiled from a prepared Debian kernel tree.

Each case edits one source file, compiles the object before and after with the kernel's own
flags plus -ffunction-sections -fdata-sections, and restores the source. Shared by the corpus
tests and bench/diff_corpus.py.

The cases run on every kernel series in SERIES. What differs between series is said per case
(``per_series``): the same edit yields the same decisions, but not always the same sections.
Debian's 6.12 is built with IBT, so objtool runs on vmlinux.o only and its objects carry no
ORC, static-call, retpoline/return/call-site tables; CONFIG_CALL_PADDING adds
`__patchable_function_entries`; and CONFIG_FUNCTION_ALIGNMENT=16 with gcc 12 empties the
kernel's `__cold` (compiler_types.h), so nothing is split into `.cold` parts; gcc 14 has
sane function alignment, and the `.cold` parts are back (per-tree label "6.12-gcc14").
Debian 11's 5.10 (gcc 10) has objtool's ORC, `.return_sites` (Debian's retbleed backports)
and `.static_call_sites`, `.parainstructions` whose last entry lacks its tail padding, no
PREEMPT_DYNAMIC (cond_resched() is a plain call), and older sources: some cases edit other
text, or another function where the compiler's shapes differ (per-tree "5.10").
The trees of other Debian releases are prepared and compiled in chroots (tests/chroots.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from kpatchbuild.differ.special import PROBE_SOURCE, sizes_from_probe
from kpatchbuild.elf import read_elf
from kpatchbuild.elf.model import STT_SECTION
from kpatchbuild.stages.patched.patched import patch_headers
from tests.support.chroots import Chroot

KCFLAGS = "-ffunction-sections -fdata-sections"
# The Debian kernel series the corpus runs on (see tests/conftest.py for their trees).
SERIES = ("5.10", "6.1", "6.12")


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
    # Static locals with namesakes all over vmlinux (`__key`, `_rs`, `__already_done`) that
    # OUT.o must reference in the running kernel, at the position of its own file's one.
    klp_locals: frozenset[str] = frozenset()
    # Statics the patch must carry fresh copies of (lockdep keys, once-flags, ratelimit
    # states: kpatch's "special statics"), never reference in the running kernel.
    fresh_locals: frozenset[str] = frozenset()
    # Per kernel series, fields that differ from the ones above: {"6.12": {"carried": ...}};
    # a tree's label (a series built by another compiler: "6.12-gcc14") may refine them.
    per_series: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def for_series(self, series: str, label: str = "") -> Case:
        """The case as it reads on ``series``, and on the tree ``label`` if given."""
        fields = dict(self.per_series.get(series, {}))
        if label and label != series:
            fields.update(self.per_series.get(label, {}))
        return replace(self, **fields)


def wrong_compiler(symbol: str) -> dict[str, object]:
    """A case on a tree of another compiler than the kernel's (5.10 with gcc 9, where Debian
    used gcc 10): its objects reference a local function the running kernel does not have
    (gcc 10 inlined it, or named its clone otherwise), so the patch could not resolve it.
    The differ refuses, naming the symbol: what must happen to a patch from the wrong
    compiler."""
    return {"exit_code": 2,
            "refusal": f"symbol {symbol}: not exported and not in the vmlinux symbol table"}


# gcc 9 numbers static locals by its declaration counter (`__key.78972`), Debian's gcc 10
# by a per-file one (`__key.3`): the wrong compiler's statics are not the kernel's.


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
EXEC = "fs/exec.c"
SYS = "kernel/sys.c"
EXT4_NAMEI = "fs/ext4/namei.c"
DCACHE = "fs/dcache.c"
# Four pr_debug() calls in two functions, built in (CONFIG_DYNAMIC_DEBUG=y, jump labels).
ASYNC = "kernel/async.c"
EVENTPOLL = "fs/eventpoll.c"
READ_WRITE = "fs/read_write.c"
NAMESPACE = "fs/namespace.c"
PROCESS = "arch/x86/kernel/process.c"

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
        # What patches written for kpatch use from its kpatch-macros.h, in one real file:
        # KPATCH_PRINTK, the old string-named shadow API, a callback, a forced function.
        "kpatch_macros",
        CMDLINE,
        lambda t: replace_once(
            "seq_putc(m, '\\n');",
            "seq_putc(m, '\\n');\n\tif (!kpatch_shadow_get(m, \"kpb_seen\"))\n"
            "\t\tkpatch_shadow_alloc(m, \"kpb_seen\", sizeof(int), GFP_ATOMIC);\n"
            "\tKPATCH_PRINTK(\"kpb: cmdline shown\\n\");")(
            replace_once(
                "static int cmdline_proc_show",
                '#include "kpatch-macros.h"\n\n'
                "static void kpb_announce(patch_object *obj)\n{\n"
                "\tKPATCH_PRINTK(\"kpb: patched\\n\");\n}\n"
                "KPATCH_POST_PATCH_CALLBACK(kpb_announce);\n\n"
                "static int cmdline_proc_show")(t)
        ) + "KPATCH_FORCE_UNSAFE(cmdline_proc_show);\n",
        0,
        changed=frozenset({"cmdline_proc_show"}),
        new=frozenset({"kpb_announce"}),
        # printk() is __cold: the paths calling it go out of line, where gcc splits.
        carried=frozenset({"cmdline_proc_show.cold", "kpb_announce.cold"}),
        notes=("cmdline_proc_show is marked KPATCH_FORCE_UNSAFE",),
        per_series={"6.12": {"carried": frozenset()},
                    "6.12-gcc14": {"carried": frozenset({"cmdline_proc_show.cold",
                                                         "kpb_announce.cold"})}},
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
        # No `.cold` parts on 6.12 with gcc 12; gcc 14 keeps function alignment for cold
        # code (CONFIG_CC_HAS_SANE_FUNCTION_ALIGNMENT), so the kernel's __cold is back.
        per_series={"6.12": {"carried": frozenset()},
                    "6.12-gcc14": {"carried": frozenset({"proc_pid_cmdline_read.cold"})}},
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
    # ext4 passes __LINE__ to its journal and error helpers (in registers and on the stack),
    # to clones of them, prints it in assertions ("%s:%d") and in its .cold parts: five new
    # lines above move them all, and nothing changed.
    Case("line_shift_ext4", EXT4_NAMEI, insert_lines_after_includes(5), 3),
    Case(
        # A real edit that adds lines: only the edited function, not every one below it.
        "edit_above_line_users",
        EXT4_NAMEI,
        replace_once("\t\treturn ERR_PTR(-ENOSPC);\n\n\t*block = inode->i_size",
                     "\t\treturn ERR_PTR(-ENOSPC);\n\n\t/* kpatched: no blocks, no append */\n"
                     "\tif (!inode->i_sb->s_blocksize_bits)\n\t\treturn ERR_PTR(-EINVAL);\n"
                     "\t*block = inode->i_size"),
        0,
        changed=frozenset({"ext4_append"}),
    ),
    # Fortify's field-spanning memcpy() warning spells its place, "at fs/dcache.c:2930".
    Case("line_in_fortify_string", DCACHE, insert_lines_after_includes(2), 3),
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
        # 5.10's map_files_get_link has no jump label (the mmap_lock tracepoints came in
        # 5.11); its base.c has one, in __set_oom_adj, keyed by a tracepoint that is not
        # exported: kept, through a livepatch relocation the loader applies early (5.8+).
        per_series={"5.10": {
            "edit": replace_once("err = -EACCES;", "err = -EPERM;", after="oom_score_adj_min &&"),
            "changed": frozenset({"__set_oom_adj.isra.0"}),
            "carried": frozenset({"__set_oom_adj.isra.0.cold"}),
            "references": frozenset({".klp.sym.vmlinux.__tracepoint_oom_score_adj_update,0"})},
            # gcc 9 does not clone it, and Debian's gcc 10 did (see wrong_compiler).
            "5.10-gcc9": {"exit_code": 2,
                          "refusal": "function __set_oom_adj: not in the vmlinux symbol table"}},
    ),
    Case(
        # An element in the middle of a static array (lnames[RLIMIT_NOFILE]): the running
        # kernel's array, plus an offset.
        "reference_into_static_array",
        BASE,
        replace_once('"Units     \\n");\n', '"Units     \\n");\n'
                     "\tseq_puts(m, lnames[RLIMIT_NOFILE].name);\n"),
        0,
        changed=frozenset({"proc_pid_limits"}),
        references=frozenset({".klp.sym.vmlinux.lnames,0"}),
    ),
    Case(
        # A syscall written with kpatch-syscall.h: its body gets a new name, so the entry
        # stubs (which have their __fentry__ call) are what changes.
        "kpatch_syscall",
        SYS,
        lambda text: replace_once(
            "SYSCALL_DEFINE1(umask, int, mask)\n{\n\tmask = xchg(&current->fs->umask, "
            "mask & S_IRWXUGO);",
            '#include "kpatch-syscall.h"\nKPATCH_SYSCALL_DEFINE1(umask, int, mask)\n{\n'
            "\tmask = xchg(&current->fs->umask, mask & S_IRWXUGO & ~S_IWOTH);")(text),
        0,
        changed=frozenset({"__x64_sys_umask", "__ia32_sys_umask"}),
    ),
    Case(
        # A new static_cpu_has() adds a stub to `.altinstr_aux` and moves every later one:
        # the functions jumping to those are unchanged (a stub is known by its contents).
        "altinstr_aux_moved",
        PROCESS,
        replace_once("void exit_thread(struct task_struct *tsk)\n{\n",
                     "void exit_thread(struct task_struct *tsk)\n{\n"
                     "\tif (static_cpu_has(X86_FEATURE_AVX2))\n\t\tbarrier_nospec();\n"),
        0,
        changed=frozenset({"exit_thread"}),
    ),
    Case(
        # mutex_init()'s lockdep key (one of vmlinux's 127 `__key.0`): a fresh one.
        "mutex_init_key",
        EVENTPOLL,
        replace_once("kzalloc(sizeof(*ep), GFP_KERNEL);",
                     "kzalloc(sizeof(*ep), GFP_KERNEL | __GFP_NOWARN);",
                     after="static int ep_alloc("),
        0,
        changed=frozenset({"do_epoll_create"}),
        fresh_locals=frozenset({"__key"}),
        per_series={"5.10": {"changed": frozenset({"ep_alloc.constprop.0"})},
                    "5.10-gcc9": {"changed": frozenset({"do_epoll_create"})}},
    ),
    Case(
        # printk_ratelimited()'s state (`_rs.N`, one of hundreds of namesakes: a fresh one),
        # in a helper inlined into both its callers: they are what changed.
        "ratelimit_state",
        READ_WRITE,
        replace_once('"kernel %s not supported', '"kernel %s unsupported'),
        0,
        changed=frozenset({"__kernel_read", "__kernel_write_iter"}),
        carried=frozenset({"__kernel_read.cold", "__kernel_write_iter.cold"}),
        fresh_locals=frozenset({"_rs"}),
        per_series={"5.10": {"changed": frozenset({"__kernel_read", "__kernel_write"}),
                             "carried": frozenset({"__kernel_read.cold",
                                                   "__kernel_write.cold"})},
                    "6.12": {"carried": frozenset()},
                    "6.12-gcc14": {"carried": frozenset({"__kernel_read.cold",
                                                         "__kernel_write_iter.cold"})}},
    ),
    Case(
        # WARN_ONCE()'s flag (`__already_done.N`): a fresh one, so it may warn once more.
        "warn_once_flag",
        NAMESPACE,
        replace_once('"Expected s_iflags to contain', '"kpatched: expected s_iflags to contain'),
        0,
        changed=frozenset({"mount_too_revealing"}),
        fresh_locals=frozenset({"__already_done"}),
        # 5.10's WARN_ONCE keeps its flag in `__warned.N`.
        per_series={"5.10": {"fresh_locals": frozenset({"__warned"})}},
    ),
    Case(
        # A tracepoint whose key vmlinux does not export (trace_task_rename): its jump entry
        # is kept, the key a livepatch relocation applied while the module loads (5.8+).
        "tracepoint_vmlinux_key",
        EXEC,
        replace_once("\ttask_lock(tsk);\n",
                     '\ttask_lock(tsk);\n\tif (!strcmp(buf, "kpb-probe"))\n'
                     '\t\tbuf = "kpb-patched";\n', after="void __set_task_comm("),
        0,
        changed=frozenset({"__set_task_comm"}),
        kept_sections=frozenset({"__jump_table"}),
        references=frozenset({".klp.sym.vmlinux.__tracepoint_task_rename,0"}),
        # gcc 14 moves the tracepoint's call out of line, into a `.cold` part.
        per_series={"6.12-gcc14": {"carried": frozenset({"__set_task_comm.cold"})}},
    ),
    Case(
        # A block behind a static key that calls a __cold function (printk) goes to a
        # `.cold` part that nothing but the jump entry's target and an R_X86_64_NONE of the
        # parent reach: it must travel with __set_task_comm, and the entry with it.
        "cold_part_behind_jump_label",
        EXEC,
        replace_once("\ttask_lock(tsk);\n",
                     "\tif (static_branch_unlikely(&init_on_free))\n"
                     '\t\tpr_info("kpb: %s\\n", buf);\n\ttask_lock(tsk);\n',
                     after="void __set_task_comm("),
        0,
        changed=frozenset({"__set_task_comm"}),
        carried=frozenset({"__set_task_comm.cold"}),
        kept_sections=frozenset({"__jump_table"}),
        references=frozenset({"init_on_free"}),
        # gcc 12 on 6.12 makes no `.cold` parts (see cold_split_and_bug).
        per_series={"6.12": {"carried": frozenset()},
                    "6.12-gcc14": {"carried": frozenset({"__set_task_comm.cold"})}},
    ),
    Case(
        "static_call",
        BASE,
        replace_once("if (pos >= PID_MAX_LIMIT + TGID_OFFSET)\n\t\treturn 0;",
                     "if (pos >= PID_MAX_LIMIT + TGID_OFFSET - 1)\n\t\treturn 0;"),
        0,
        changed=frozenset({"proc_pid_readdir"}),
        # The site's key (__SCK__cond_resched) is not exported: a livepatch relocation the
        # loader applies before it reads the module's static call sites (5.8+).
        kept_sections=frozenset({".static_call_sites"}),
        references=frozenset({"__SCT__cond_resched",
                              ".klp.sym.vmlinux.__SCK__cond_resched,0"}),
        # No `.static_call_sites` without objtool: the call stays on its trampoline. 5.10
        # has no PREEMPT_DYNAMIC: cond_resched() is a plain call of the exported function.
        per_series={"6.12": {"kept_sections": frozenset(),
                             "references": frozenset({"__SCT__cond_resched"})},
                    "5.10": {"kept_sections": frozenset(),
                             "references": frozenset({"_cond_resched"})},
                    "5.10-gcc9": wrong_compiler("has_pid_permissions.isra.0")},
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
        per_series={"6.12": {"exit_code": 2, "refusal": "boot-time constant USER_PTR_MAX"},
                    # 5.10's filldir64 returns an error code, not a bool.
                    "5.10": {"edit": replace_once(
                        "if (reclen > buf->count)\n\t\treturn -EINVAL;",
                        "if (reclen > buf->count || namlen > 4000)\n\t\treturn -EINVAL;",
                        after="static int filldir64(")}},
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
            "for (i = nr_charged - 1; i >= 0; i--)\n\t\tmemcg_kmem_uncharge_page")},
            # gcc 10 keeps 5.10's memcg_charge_kernel_stack whole; it splits proc_pid_get_link
            # after its `!dentry` test instead.
            "5.10": {"source": BASE,
                     "edit": replace_once("int error = -EACCES;", "int error = -EPERM;",
                                          after="static const char *proc_pid_get_link("),
                     "changed": frozenset({"proc_pid_get_link.part.0"})},
            "5.10-gcc9": wrong_compiler("proc_fd_access_allowed")},
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

    def __init__(self, tree: Path, release: str, workdir: Path, compiler: str = "",
                 chroot: Chroot | None = None) -> None:
        self.tree = tree
        self.release = release
        self.workdir = workdir
        # CC for make, when the tree was configured with another compiler than `gcc`.
        self.compiler = compiler
        # The chroot holding that compiler, when it is not the host's (tests/chroots.py).
        self.chroot = chroot
        self._originals: dict[str, Path] = {}
        # Where patches find kpatch-macros.h and friends, as the pipeline's workspaces have.
        for rel, data in patch_headers().items():
            if not (tree / rel).is_file() or (tree / rel).read_bytes() != data:
                _replace_file(tree / rel, data.decode())

    def make_object(self, source: str) -> Path:
        target = source[:-2] + ".o"
        variables = [f"KERNELRELEASE={self.release}", f"KCFLAGS={KCFLAGS}"]
        if self.compiler:
            variables.append(f"CC={self.compiler}")
        if self.chroot is not None:
            # As the tree was prepared there: the chroot has no plain `gcc` for host tools.
            self.chroot.run(["make", "-s", "-C", str(self.tree), *variables,
                             f"HOSTCC={self.compiler}", target], binds=[self.tree])
        else:
            subprocess.run(["make", "-s", "-C", str(self.tree), *variables, target],
                           check=True, capture_output=True)
        return self.tree / target

    def original(self, source: str) -> Path:
        if source not in self._originals:
            destination = self.workdir / "orig" / (source.replace("/", "__")[:-2] + ".o")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.make_object(source), destination)
            self._originals[source] = destination
        return self._originals[source]

    def entry_sizes(self) -> dict[str, int]:
        """Special-section entry sizes measured by compiling the differ's probe in the tree.

        The probe is listed in its directory's Makefile for the time it is built: kbuild
        before 5.13 builds a single object only if a Makefile names it.
        """
        probe_source = self.tree / "fs" / "proc" / "kpb_probe.c"
        makefile = self.tree / "fs" / "proc" / "Makefile"
        pristine_makefile = makefile.read_text()
        _replace_file(probe_source, PROBE_SOURCE)
        _replace_file(makefile, pristine_makefile + "obj-y += kpb_probe.o\n")
        try:
            return sizes_from_probe(read_elf(self.make_object("fs/proc/kpb_probe.c")))
        finally:
            probe_source.unlink()
            _replace_file(makefile, pristine_makefile)

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
