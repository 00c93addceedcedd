"""Random single-function edits of files built into Debian's vmlinux, and what they must give.

A seeded generator picks a file, a function in it and an edit a kernel engineer makes in a
fix: a compiler barrier, a pr_debug(), a changed integer literal, a call to a new helper.
Each case is compiled before and after in a prepared tree and diffed as the pipeline does;
its outcome is checked against rules that hold for every correct differ:

- the patch carries the edited function, or, when the compiler inlined it, functions that
  used it (each changed function is the edited one, a clone of it, or calls it in the
  original or patched object);
- a new function is the helper the edit added (or a clone of a changed function);
- "no functional change" only for an edit that can leave the code as it was (a barrier; a
  literal the compiler folds away, as `align & 7` where align is the constant 0) or for a
  function the config compiles out;
- the output, when written, links (ld -r).

Each case's changed set, with the reason for each function beyond the edited one, is kept
in random_edits.json per tree release, so a later differ that drags in more (or less) is
seen. Shared by tests/differ/test_random_edits.py (a subset, for CI) and
bench/random_edits.py (the whole run).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kpatchbuild.differ import CannotPatch, diff_objects
from kpatchbuild.differ.index import base_function_name
from kpatchbuild.differ.symbols import Export, SymbolTable
from kpatchbuild.elf import read_elf, write_elf_file
from tests.differ.kernel_corpus import Case, CorpusBuilder

EXPECTATIONS = Path(__file__).with_name("random_edits.json")
SEED = 20261202

# Built into vmlinux with Debian's cloud config (obj-y, or an option Debian sets to y).
FILES = (
    "fs/exec.c", "fs/namei.c", "fs/open.c", "fs/read_write.c", "fs/readdir.c", "fs/stat.c",
    "fs/dcache.c", "fs/inode.c", "fs/file.c", "fs/pipe.c", "fs/select.c", "fs/super.c",
    "fs/proc/base.c", "fs/proc/array.c", "fs/proc/meminfo.c", "fs/ext4/namei.c",
    "kernel/fork.c", "kernel/exit.c", "kernel/sys.c", "kernel/signal.c", "kernel/pid.c",
    "kernel/cred.c", "kernel/kthread.c", "kernel/workqueue.c", "mm/mmap.c", "mm/util.c",
    "mm/filemap.c", "mm/maccess.c", "lib/string.c", "lib/kstrtox.c",
)
KINDS = ("barrier", "pr_debug", "literal", "helper")

# A function definition at column 0 (its return type on the same or the previous line),
# ending with the first `}` at column 0.
_DEFINITION = re.compile(
    r"^(?!static inline|#|\s)(?:[\w\s\*]+?\b)?(?P<name>[a-z_][a-z0-9_]*)"
    r"\((?P<params>[^;{)]*(?:\([^)]*\)[^;{)]*)*)\)\s*\n\{\n(?P<body>.*?)\n\}\n",
    re.M | re.S)
_SYSCALL = re.compile(r"^(?:COMPAT_)?SYSCALL_DEFINE\d\((?P<name>\w+)[^)]*\)\n\{\n"
                      r"(?P<body>.*?)\n\}\n", re.M | re.S)
_LITERAL = re.compile(r"(?<![\w.])([2-9]|[1-9][0-9]{1,3})(?![\w.])")


@dataclass
class EditCase:
    """One generated edit and what the differ said of it."""

    index: int
    source: str
    function: str
    kind: str
    exit_code: int = -1  # 0 written, 2 refused, 3 no change, -1 did not compile
    changed: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # beyond the edited function
    refusal: str = ""
    # The original object has the edited function (or a clone of it) or code inlining it;
    # False for one the config compiles out (#ifdef), where no change is the right answer.
    compiled_in: bool = True


def generate(count: int, tree: Path, seed: int = SEED) -> list[tuple[EditCase, Case]]:
    """``count`` cases over the tree's sources, the same for the same seed and sources."""
    return [(EditCase(index, source, name, kind),
             Case(f"random-{index}-{kind}-{name}", source, _constant(edited), 0))
            for index, source, name, kind, edited in pick_edits(count, tree, seed, KINDS, _edit)]


Edit = Callable[[str, "re.Match[str]", str, int], "str | None"]


def pick_edits(count: int, tree: Path, seed: int, kinds: Sequence[str],
               edit: Edit) -> list[tuple[int, str, str, str, str]]:
    """``count`` (index, file, function, kind, edited text): a seeded choice of a file of
    FILES, a function in it (not __init/__exit) and a kind of edit that applies to it."""
    rng = random.Random(seed)
    found = []
    index = 0
    while len(found) < count:
        source = rng.choice(FILES)
        text = (tree / source).read_text()
        functions = [m for m in _DEFINITION.finditer(text)
                     if "__init" not in text[max(0, m.start() - 80):m.start("name")]
                     and "__exit" not in text[max(0, m.start() - 80):m.start("name")]]
        if not functions:
            continue
        match = rng.choice(functions)
        kind = rng.choice(kinds)
        edited = edit(text, match, kind, index)
        if edited is None:
            continue
        found.append((index, source, match.group("name"), kind, edited))
        index += 1
    return found


def _constant(text: str):  # noqa: ANN202 - the edit a Case wants: pristine -> edited
    return lambda _pristine: text


def _edit(text: str, match: re.Match[str], kind: str, index: int) -> str | None:
    body_start, body_end = match.start("body"), match.end("body")
    body = match.group("body")
    # After the declarations: the first line of the body that is a statement.
    lines = body.split("\n")
    position = next((i for i, line in enumerate(lines)
                     if line.strip() and not re.match(r"^\s*(?:const |struct |unsigned |"
                                                      r"int |long |bool |char |u\d+ |"
                                                      r"size_t |loff_t |ssize_t |void |"
                                                      r"static |DEFINE_|LIST_HEAD)", line)
                     and not line.strip().startswith(("/*", "*", "//"))), None)
    if position is None:
        return None
    indent = re.match(r"^\s*", lines[position]).group(0) or "\t"
    if kind == "barrier":
        lines.insert(position, f"{indent}barrier();")
    elif kind == "pr_debug":
        lines.insert(position, f'{indent}pr_debug("kpb-{index}: %s\\n", __func__);')
    elif kind == "literal":
        for number, line in enumerate(lines):
            if line.lstrip().startswith(("case ", "#", "/*", "*")) or "[" in line:
                continue
            code = re.split(r"/\*|//", line, maxsplit=1)[0]  # not inside a comment
            found = _LITERAL.search(code)
            if found:
                value = int(found.group(1))
                lines[number] = line[:found.start()] + str(value + 1) + line[found.end():]
                break
        else:
            return None
    elif kind == "helper":
        lines.insert(position, f"{indent}kpb_helper_{index}();")
        helper = (f"static int kpb_sink_{index};\n\n"
                  f"static noinline void kpb_helper_{index}(void)\n{{\n"
                  f"\tWRITE_ONCE(kpb_sink_{index}, READ_ONCE(kpb_sink_{index}) + 1);\n}}\n\n")
        edited = "\n".join(lines)
        return text[:match.start()] + helper + text[match.start():body_start] + edited \
            + text[body_end:]
    return text[:body_start] + "\n".join(lines) + text[body_end:]


def run_case(case: EditCase, corpus_case: Case, builder: CorpusBuilder, symbols: SymbolTable,
             exports: dict[str, Export], release: str, workdir: Path) -> EditCase:
    """Compile, diff and judge one case (filling in its outcome)."""
    try:
        pair = builder.build(corpus_case)
    except subprocess.CalledProcessError:
        case.exit_code = -1  # the edit does not compile here (a literal in a constant spot)
        return case
    try:
        result = diff_objects(pair.orig, pair.patched, target="vmlinux", symbols=symbols,
                              exports=exports, kernel_version=_version(release))
    except CannotPatch as refusal:
        case.exit_code, case.refusal = 2, refusal.message
        return case
    if result.output is None:
        case.exit_code = 3
        # Compiled out (#ifdef) if neither object has it nor anything calling it.
        names = {base_function_name(s.name) for s in read_elf(pair.orig).symbols
                 if s.is_function}
        text = (builder.tree / case.source).read_text()
        callers = _source_callers(text, case.function)
        # `#else #define fn(p) do {} while (0)`: the callers use the macro, not the function.
        macro = re.search(rf"^\s*#\s*define\s+{re.escape(case.function)}\(", text, re.M)
        case.compiled_in = case.function in names or (bool(callers & names) and not macro)
        return case
    case.exit_code = 0
    case.changed = sorted(f.name for f in result.changed_functions)
    case.new = sorted(f.name for f in result.new_functions)
    out = workdir / f"{corpus_case.name}.o"
    write_elf_file(result.output, out)
    subprocess.run(["ld", "-r", "-o", str(out.with_suffix(".linked.o")), str(out)], check=True)
    callers = _source_callers((builder.tree / case.source).read_text(), case.function)
    for name in case.changed:
        if base_function_name(name) == case.function:
            continue
        case.reasons[name] = ("calls the edited function (inlined)"
                              if base_function_name(name) in callers else "unexplained")
    return case


def _version(release: str) -> tuple[int, int]:
    major, minor = release.split(".")[:2]
    return int(major), int(minor)


def _source_callers(text: str, function: str) -> set[str]:
    """The file's functions that call ``function``, directly or through others of the file
    (the compiler may inline a whole chain): from the source, as its author reads it."""
    calls: dict[str, set[str]] = {}
    for match in _DEFINITION.finditer(text):
        calls[match.group("name")] = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*\(",
                                                    match.group("body")))
    # SYSCALL_DEFINEn(name, ...) { body }: the entry stubs the macro makes hold the body.
    for match in _SYSCALL.finditer(text):
        callees = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*\(", match.group("body")))
        for stub in ("__x64_sys_", "__ia32_sys_", "__se_sys_", "__do_sys_",
                     "__x64_compat_sys_", "__ia32_compat_sys_"):
            calls[stub + match.group("name")] = callees
    callers: set[str] = set()
    frontier = {function}
    while frontier:
        found = {name for name, callees in calls.items() if callees & frontier} - callers
        callers |= found
        frontier = found
    return callers


def problems(case: EditCase) -> list[str]:
    """What is wrong with a case's outcome, by the rules in the module docstring."""
    found = []
    where = f"case {case.index} ({case.kind} in {case.function}, {case.source})"
    if case.exit_code == 3 and case.kind not in ("barrier", "literal") and case.compiled_in:
        found.append(f"{where}: no change reported for an edit that changes code")
    if case.exit_code == 0:
        if not case.changed and not case.new:
            found.append(f"{where}: written with nothing in it")
        edited = [n for n in case.changed if base_function_name(n) == case.function]
        if not edited and not case.reasons:
            found.append(f"{where}: the edited function is not in the patch")
        for name, reason in case.reasons.items():
            if reason == "unexplained":
                found.append(f"{where}: {name} changed, and neither is nor calls "
                             f"{case.function}")
        for name in case.new:
            # The helper the edit added; a clone of a changed function; or the edited
            # function itself, out of line now where the original inlined it.
            if not (name.startswith("kpb_helper_") or base_function_name(name) in
                    {base_function_name(c) for c in case.changed} | {case.function}):
                found.append(f"{where}: unexpected new function {name}")
    return found


def load_expectations(release: str) -> dict[int, dict]:
    if not EXPECTATIONS.is_file():
        return {}
    data = json.loads(EXPECTATIONS.read_text())
    if data.get("release") != release or data.get("seed") != SEED:
        return {}
    return {entry["index"]: entry for entry in data["cases"]}


def save_expectations(release: str, cases: list[EditCase]) -> None:
    EXPECTATIONS.write_text(json.dumps(
        {"release": release, "seed": SEED, "cases": [asdict(c) for c in cases]},
        indent=1) + "\n")
