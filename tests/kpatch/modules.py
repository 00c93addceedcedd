"""Small module files for the kpatch unit tests, compiled with gcc in a second.

Each mimics what a kpatchbuild livepatch module holds for kpatch to read: a ``.modinfo``
(name, vermagic, livepatch=Y, the recorded release and build id) and the registration's
tables (``kpb_patch`` -> ``kpb_objects`` -> ``kpb_funcs_<n>``), laid out with the first
fields of the kernel's klp structures and internals of the 6.1 sizes after them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.kpatch.fakekernel import BUILD_ID, RELEASE

_HEAD = r"""
struct klp_func { const char *old_name; void *new_func; unsigned long old_sympos;
                  char internal[128]; };
struct klp_object { const char *name; struct klp_func *funcs; char internal[152]; };
struct klp_patch { void *mod; struct klp_object *objs; void *states; _Bool replace;
                   char internal[170]; };
"""


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def module_source(name: str, functions: Sequence[tuple[str, str, int]], *,
                  release: str | None, build_id: str | None, vermagic: str | None,
                  livepatch: bool, replace: bool) -> str:
    by_object: dict[str, list[tuple[str, int]]] = {}
    for obj, function, sympos in functions:
        by_object.setdefault(obj, []).append((function, sympos))
    lines = [_HEAD]
    objects = []
    counter = 0
    for index, (obj, funcs) in enumerate(by_object.items()):
        entries = []
        for function, sympos in funcs:
            lines.append(f"void kpb_func_{counter}_{function}(void) {{}}")
            entries.append(f"{{ {_c_string(function)}, kpb_func_{counter}_{function}, "
                           f"{sympos} }},")
            counter += 1
        lines.append(f"static struct klp_func kpb_funcs_{index}[] "
                     f"__attribute__((used)) = {{ {' '.join(entries)} {{ }} }};")
        objname = "0" if obj == "vmlinux" else _c_string(obj)
        objects.append(f"{{ {objname}, kpb_funcs_{index} }},")
    lines.append(f"static struct klp_object kpb_objects[] __attribute__((used)) = "
                 f"{{ {' '.join(objects)} {{ }} }};")
    lines.append("static struct klp_patch kpb_patch __attribute__((used)) = "
                 f"{{ 0, kpb_objects, 0, {int(replace)} }};")
    info = [f"name={name}"]
    if livepatch:
        info.append("livepatch=Y")
    if release:
        info.append(f"kpatchbuild_release={release}")
    if build_id:
        info.append(f"kpatchbuild_build_id={build_id}")
    vermagic = vermagic if vermagic is not None else f"{release or RELEASE} SMP preempt " \
        "mod_unload modversions "
    info.append(f"vermagic={vermagic}")
    info.append(f"description=test patch {name}")
    for index, item in enumerate(info):
        lines.append(f'static const char kpb_info_{index}[] __attribute__((section(".modinfo"),'
                     f" used, aligned(1))) = {_c_string(item)};")
    return "\n".join(lines) + "\n"


def make_module(directory: Path, name: str,
                functions: Sequence[tuple[str, str, int]] = (("vmlinux", "cmdline_proc_show",
                                                              0),), *,
                release: str | None = RELEASE, build_id: str | None = BUILD_ID,
                vermagic: str | None = None, livepatch: bool = True,
                replace: bool = True) -> Path:
    """Compile a module file ``<directory>/<name>.ko`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"{name}.c"
    source.write_text(module_source(name, functions, release=release, build_id=build_id,
                                    vermagic=vermagic, livepatch=livepatch, replace=replace))
    module = directory / f"{name}.ko"
    subprocess.run(["gcc", "-c", "-O0", "-fno-pic", "-o", str(module), str(source)],
                   check=True, capture_output=True)
    return module
