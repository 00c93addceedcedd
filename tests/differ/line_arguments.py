"""Which kernel functions take __LINE__, and as which argument: read from a kernel tree.

A call `name(..., __LINE__, ...)` anywhere in the tree (macros included, with their line
continuations joined) names a callee and the position of the line. Names some header
`#define`s as a macro are the macros themselves, not functions the compiled code calls,
and are left out. kpatchbuild/differ/line_arguments.txt is this scan over Debian's 5.10,
6.1 and 6.12 trees; the test in test_line_arguments.py checks it still covers a tree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
_NOT_CALLEES = frozenset({"if", "while", "for", "switch", "return", "sizeof", "defined",
                          "__stringify", "__PASTE", "typeof", "__builtin_expect"})
_SKIPPED = ("Documentation", "tools", "scripts", "samples", "usr")


def _arguments(text: str, start: int) -> list[str]:
    """The top-level arguments of the call whose '(' ends at ``start``."""
    depth, current, arguments = 1, [], []
    for position in range(start, min(len(text), start + 4000)):
        char = text[position]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                break
        if char == "," and depth == 1:
            arguments.append("".join(current))
            current = []
        else:
            current.append(char)
    arguments.append("".join(current))
    return arguments


def _sources(tree: Path):  # noqa: ANN202 - yields (path, text)
    for root, directories, files in os.walk(tree):
        relative = Path(root).relative_to(tree)
        if relative.parts and (relative.parts[0] in _SKIPPED or (
                relative.parts[0] == "arch" and len(relative.parts) > 1
                and relative.parts[1] != "x86")):
            directories.clear()
            continue
        for name in files:
            if name.endswith((".c", ".h")):
                yield Path(root) / name, (Path(root) / name).read_text(errors="replace")


_VARIADIC = re.compile(
    r"\b([A-Za-z_]\w*)\s*\(([^;{}()]*)\.\.\.\s*\)\s*(?:__\w+(?:\([^)]*\))?\s*)*[;{]")


def scan_line_arguments(tree: Path) -> dict[str, set[int]]:
    """{function: positions of __LINE__ among its arguments} over the tree's C sources.

    A position among a variadic function's variable arguments (printk's, panic's) is not
    a line parameter, only a value printed: it is left out.
    """
    found: dict[str, set[int]] = {}
    macros: set[str] = set()
    fixed: dict[str, int] = {}  # variadic function -> its number of fixed parameters
    for _, text in _sources(tree):
        macros.update(re.findall(r"^\s*#\s*define\s+([A-Za-z_]\w*)\(", text, re.M))
        if "..." in text:
            for prototype in _VARIADIC.finditer(text):
                count = prototype.group(2).count(",")
                fixed[prototype.group(1)] = min(count, fixed.get(prototype.group(1), count))
        if "__LINE__" not in text:
            continue
        joined = text.replace("\\\n", " ")
        for call in _CALL.finditer(joined):
            name = call.group(1)
            if name in _NOT_CALLEES:
                continue
            for position, argument in enumerate(_arguments(joined, call.end())):
                if argument.strip() == "__LINE__":
                    found.setdefault(name, set()).add(position)
    table = {}
    for name, positions in found.items():
        kept = {p for p in positions if p < fixed.get(name, p + 1)}
        if name not in macros and kept:
            table[name] = kept
    return table
