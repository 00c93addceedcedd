"""Applying a recipe's patches, and saying exactly where one does not apply.

Patches are applied with ``patch -p1`` to a scratch copy of only the files they touch, so
checking them against a multi-gigabyte original tree costs milliseconds and never writes to
it. The patched stage (a later step) applies them the same way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from kpatchbuild.errors import RecipeError

_NEW_FILE = re.compile(r"^\+\+\+ (?:b/)?(\S+)", re.MULTILINE)
_OLD_FILE = re.compile(r"^--- (?:a/)?(\S+)", re.MULTILINE)
_PATCHING = re.compile(r"^patching file '?([^'\n]+)'?$")
_HUNK_FAILED = re.compile(r"^Hunk #(\d+) FAILED at (\d+)")
_NO_FILE = re.compile(r"can't find file to patch")


def touched_files(patch: Path) -> list[str]:
    """Paths (relative to the tree) a unified diff with a/ b/ prefixes touches."""
    text = patch.read_text(errors="replace")
    files = [f for f in _NEW_FILE.findall(text) + _OLD_FILE.findall(text) if f != "/dev/null"]
    if not files:
        raise RecipeError(f"{patch}: not a unified diff (no '+++ b/<file>' lines); "
                          "make it with 'git diff' or 'diff -u'")
    return list(dict.fromkeys(files))


def apply_patches(patches: list[Path] | tuple[Path, ...], tree: Path, dest: Path) -> list[str]:
    """Apply ``patches`` in order to copies of the files they touch from ``tree`` in ``dest``.

    Returns the touched paths. Raises RecipeError naming the patch, file, hunk and line of
    the first hunk that does not apply.
    """
    touched: list[str] = []
    for patch in patches:
        for rel in touched_files(patch):
            if rel in touched:
                continue
            touched.append(rel)
            original = tree / rel
            if original.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(original, dest / rel)
        result = subprocess.run(
            ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-r", "-",
             "-d", str(dest), "-i", str(patch)],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise RecipeError(f"{patch}: {_describe_failure(result.stdout + result.stderr)}; "
                              "rebase the patch onto this kernel's source")
    return touched


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


def check_patches_apply(patches: list[Path] | tuple[Path, ...], tree: Path) -> list[str]:
    """Prove the patches apply to ``tree`` without writing to it; return the touched files."""
    with tempfile.TemporaryDirectory(prefix="kpb-patch-") as scratch:
        return apply_patches(patches, tree, Path(scratch))
