"""Applying a recipe's patches, and saying exactly where one does not apply.

Patches are applied with ``patch -pN`` (N from the recipe's ``strip``, 1 by default) to a
scratch copy of only the files they touch, so checking them against a multi-gigabyte
original tree costs milliseconds and never writes to it. The patched stage (a later step)
applies them the same way.

Patches come as people write them: ``git diff`` (a/ b/), ``diff -Nupr src.orig/ src/`` as
kpatch's are, git format-patch mails (headers, message, diffstat before the diff). A file
header is a ``--- OLD`` line followed by ``+++ NEW`` and a hunk; each path loses its
timestamp and its first N components.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from kpatchbuild.base import process
from kpatchbuild.base.errors import RecipeError

_FILE_HEADER = re.compile(r"^--- (?P<old>[^\n]+)\n\+\+\+ (?P<new>[^\n]+)\n@@ ", re.MULTILINE)
_PATCHING = re.compile(r"^patching file '?([^'\n]+)'?$")
_HUNK_FAILED = re.compile(r"^Hunk #(\d+) FAILED at (\d+)")
_NO_FILE = re.compile(r"can't find file to patch")


def touched_files(patch: Path, strip: int = 1) -> list[str]:
    """Paths (relative to the tree) a unified diff touches, read as ``patch -p<strip>``."""
    text = patch.read_text(errors="replace").replace("\r\n", "\n")
    files: list[str] = []
    for header in _FILE_HEADER.finditer(text):
        for side in ("new", "old"):
            path = _header_path(header.group(side))
            if path == "/dev/null":
                continue
            parts = [part for part in path.split("/") if part not in ("", ".")]
            if len(parts) <= strip:
                raise RecipeError(f"{patch}: the file header '{header.group(side).strip()}' has "
                                  f"no path left after stripping {strip} component(s); set "
                                  "the recipe's 'strip' to the patch's -p level")
            files.append("/".join(parts[strip:]))
    if not files:
        raise RecipeError(f"{patch}: not a unified diff (no '--- <file>' / '+++ <file>' "
                          "header before a hunk); make it with 'git diff' or 'diff -u'")
    return list(dict.fromkeys(files))


def _header_path(field: str) -> str:
    """The path of a ``---``/``+++`` header: up to the tab before a timestamp, unquoted."""
    path = field.split("\t", 1)[0].rstrip()
    if len(path) > 1 and path[0] == path[-1] == '"':
        path = path[1:-1].encode().decode("unicode_escape")
    return path


def apply_patches(patches: list[Path] | tuple[Path, ...], tree: Path, dest: Path,
                  strip: int = 1) -> list[str]:
    """Apply ``patches`` in order to copies of the files they touch from ``tree`` in ``dest``.

    Returns the touched paths. Raises RecipeError naming the patch, file, hunk and line of
    the first hunk that does not apply.
    """
    touched: list[str] = []
    for patch in patches:
        for rel in touched_files(patch, strip):
            if rel in touched:
                continue
            touched.append(rel)
            original = tree / rel
            if original.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(original, dest / rel)
        _apply(patch, dest, strip)
    return touched


def _apply(patch: Path, dest: Path, strip: int) -> None:
    process.run(
        ["patch", f"-p{strip}", "--forward", "--batch", "--no-backup-if-mismatch", "-r", "-",
         "-d", dest, "-i", patch],
        error=RecipeError, hint="rebase the patch onto this kernel's source",
        explain=lambda result: f"{patch}: {_describe_failure(result.stdout + result.stderr)}")


def _describe_failure(output: str) -> str:
    current = "?"
    for line in output.splitlines():
        patching = _PATCHING.match(line)
        if patching:
            current = patching.group(1)
        failed = _HUNK_FAILED.match(line)
        if failed:
            return f"hunk #{failed.group(1)} for {current} does not apply at line {failed.group(2)}"
        if _NO_FILE.search(line):
            return "a file it patches does not exist in the kernel source"
        if "Reversed (or previously applied) patch detected" in line:
            return f"{current} already contains this change (reversed or applied twice)"
    lines = [line for line in output.splitlines() if line.strip()]
    return f"patch failed: {lines[-1] if lines else 'no output'}"


def check_patches_apply(patches: list[Path] | tuple[Path, ...], tree: Path,
                        strip: int = 1) -> list[str]:
    """Prove the patches apply to ``tree`` without writing to it; return the touched files."""
    with tempfile.TemporaryDirectory(prefix="kpb-patch-") as scratch:
        return apply_patches(patches, tree, Path(scratch), strip)
