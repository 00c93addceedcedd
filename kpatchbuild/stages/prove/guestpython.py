"""The host's Python interpreter, laid out for a guest initramfs.

The user-side ``kpatch`` command is proven inside the target kernel; the guest has no Python
of its own, so the host's interpreter goes into the initramfs with exactly what the command
imports (measured against mounting the host's root over 9p, which Debian's cloud kernel
cannot: see bench/guest_python.py).
"""

from __future__ import annotations

import importlib.util
import json
import py_compile
import re
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base import process
from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.store import PROJECT_ROOT
from kpatchbuild.stages.prove import initramfs

# Found by running the host interpreter: everything it imports for these modules (and for
# starting up and running ``-m``) is copied, at its host path, with the shared libraries
# ``ldd`` lists for the interpreter and each extension module.
_COLLECT_IMPORTS = r"""
import importlib, json, sys, sysconfig
for name in sys.argv[1:]:
    importlib.import_module(name)
files = {name: module.__file__ for name, module in list(sys.modules.items())
         if getattr(module, "__file__", None)}
print(json.dumps({"files": files, "stdlib": sysconfig.get_paths()["stdlib"],
                  "executable": sys.executable}))
"""
# Always needed: ``-m`` runs through runpy; the text encodings a console may ask for.
_STARTUP_IMPORTS = ("runpy", "encodings.utf_8", "encodings.ascii", "encodings.latin_1")


@dataclass(frozen=True)
class GuestPython:
    """The host's interpreter, laid out for an initramfs: entries and how to run it."""

    entries: tuple[initramfs.Entry, ...]
    interpreter: str  # absolute path in the guest (the same as on the host)
    pythonpath: tuple[str, ...]  # where the non-stdlib packages' roots are
    modules: tuple[str, ...]  # the modules imported, by name

    def command(self, *args: str) -> str:
        """A shell command line running the interpreter with ``args`` in the guest."""
        path = ":".join(self.pythonpath)
        return (f"env PYTHONPATH={shlex.quote(path)} PYTHONDONTWRITEBYTECODE=1 "
                f"{shlex.quote(self.interpreter)} -S {shlex.join(args)}")


def guest_python(imports: Sequence[str], *, python: Path | None = None) -> GuestPython:
    """The host's Python with what ``imports`` need, to run them in a guest initramfs.

    ``python`` (default: this interpreter) is run once to learn what the modules import.
    Each Python file goes in with a bytecode file compiled with unchecked hashes, so the
    guest imports without recompiling (the archive's timestamps are all 0). Files outside
    the standard library come with the directory that holds their top-level package on
    ``pythonpath`` (the guest runs ``-S``: no site-packages, no site start-up cost).
    """
    python = python or Path(sys.executable)
    found = process.run([python, "-c", _COLLECT_IMPORTS, *_STARTUP_IMPORTS, *imports],
                        error=KpbError, what=f"{python}: importing {', '.join(imports)}",
                        cwd=PROJECT_ROOT)
    report = json.loads(found.stdout)
    stdlib = Path(report["stdlib"])
    interpreter = Path(report["executable"]).resolve()
    entries: dict[str, initramfs.Entry] = {}
    native: list[Path] = [interpreter]
    roots: dict[str, None] = {}
    for name, file in sorted(report["files"].items()):
        path = Path(file)
        if not path.is_file():
            continue  # frozen or built-in, or a file since removed
        if path.suffix == ".so":
            native.append(path)
        else:
            _add_python_file(entries, path)
        if not path.is_relative_to(stdlib):
            depth = name.count(".") + (1 if path.stem == "__init__" else 0)
            roots[str(path.parents[depth])] = None
    _add_python_file(entries, stdlib / "os.py")  # the landmark that locates the stdlib
    for path in native:
        _add_native(entries, path)
    ordered = initramfs.with_parents(list(entries.values()))
    return GuestPython(tuple(ordered), str(interpreter), tuple(roots),
                       tuple(sorted(report["files"])))


def _add_python_file(entries: dict[str, initramfs.Entry], path: Path) -> None:
    key = str(path).lstrip("/")
    if key in entries or path.suffix != ".py":
        return
    source = path.read_bytes()
    entries[key] = initramfs.regular_file(key, source)
    with tempfile.TemporaryDirectory() as scratch:
        compiled = Path(scratch) / "module.pyc"
        py_compile.compile(str(path), cfile=str(compiled), dfile=str(path), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        cached = Path(importlib.util.cache_from_source(str(path)))
        entries[str(cached).lstrip("/")] = initramfs.regular_file(
            str(cached).lstrip("/"), compiled.read_bytes())


def _add_native(entries: dict[str, initramfs.Entry], path: Path) -> None:
    """An executable or shared object and, recursively by ldd, the libraries it loads."""
    key = str(path).lstrip("/")
    if key in entries:
        return
    entries[key] = initramfs.regular_file(key, path.resolve().read_bytes(), 0o755)
    # ldd fails on a static executable: it then loads no library.
    listed = process.run(["ldd", path], check=False)
    for line in listed.stdout.splitlines():
        # "libffi.so.8 => /lib/x86_64-linux-gnu/libffi.so.8 (0x...)" or "/lib64/ld-... (0x...)"
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            _add_native(entries, Path(match[1]))
