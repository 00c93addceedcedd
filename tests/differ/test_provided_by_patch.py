"""A patch spanning two objects: a new global function in a.c, called from changed b.c."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kpatchbuild.differ import CannotPatch, diff_objects
from kpatchbuild.differ.symbols import load_symbol_table
from kpatchbuild.elf import read_elf, write_elf_file
from tests.differ.cfixtures import Pair, build_pair, names

A_ORIG = "int a_value(int v) { return v + 1; }\n"
A_PATCHED = A_ORIG + "int kpb_helper(int v) { return v * 5; }\n"
B_ORIG = """
extern int a_value(int v);
int b_user(int v) { return a_value(v) + 2; }
"""
B_PATCHED = """
extern int kpb_helper(int v);
int b_user(int v) { return kpb_helper(v) + 2; }
"""


def _kernel(tmp_path: Path, *objects: Path) -> Path:
    """The running kernel's stand-in: the original objects linked together."""
    linked = tmp_path / "vmlinux.o"
    subprocess.run(["ld", "-r", "-o", str(linked), *map(str, objects)], check=True)
    return linked


def _pairs(tmp_path: Path) -> tuple[Pair, Pair, Path]:
    for tag in ("a", "b"):
        (tmp_path / tag).mkdir()
    a = build_pair(tmp_path / "a", A_ORIG, A_PATCHED, name="a")
    b = build_pair(tmp_path / "b", B_ORIG, B_PATCHED, name="b")
    return a, b, _kernel(tmp_path, a.orig, b.orig)


def test_reference_to_another_objects_new_function_refused_without_it(tmp_path: Path) -> None:
    _, b, kernel = _pairs(tmp_path)
    with pytest.raises(CannotPatch) as caught:
        diff_objects(b.orig, b.patched, symbols=load_symbol_table(kernel, "vmlinux"), exports={})
    assert "kpb_helper" in caught.value.message
    assert "not in the vmlinux symbol table" in caught.value.message


def test_reference_to_another_objects_new_function_provided(tmp_path: Path) -> None:
    a, b, kernel = _pairs(tmp_path)
    table = load_symbol_table(kernel, "vmlinux")
    a_result = diff_objects(a.orig, a.patched, symbols=table, exports={}, require_fentry=False)
    assert names(a_result.new_functions) == {"kpb_helper"}
    assert a_result.changed_functions == []
    provided = {f.name for f in a_result.new_functions if f.global_binding}

    b_result = diff_objects(b.orig, b.patched, symbols=table, exports={}, require_fentry=False,
                            provided_by_patch=provided)
    assert names(b_result.changed_functions) == {"b_user"}
    how = {r.target_name: r for r in b_result.resolutions}
    assert how["kpb_helper"].how == "provided" and how["kpb_helper"].name == "kpb_helper"
    assert how["kpb_helper"].sympos is None

    # Linked into one module, b's reference binds to a's new function.
    outputs = []
    for tag, result in (("a", a_result), ("b", b_result)):
        out = tmp_path / f"{tag}.out.o"
        write_elf_file(result.output, out)
        outputs.append(str(out))
    assert "kpb_helper" in {s.name for s in read_elf(outputs[1]).symbols if s.is_undefined}
    module = tmp_path / "module.o"
    subprocess.run(["ld", "-r", "-o", str(module), *outputs], check=True)
    symbols = {s.name: s for s in read_elf(module).symbols if s.name == "kpb_helper"}
    assert symbols["kpb_helper"].section is not None and symbols["kpb_helper"].is_function


def test_provided_name_does_not_capture_the_objects_own_static(tmp_path: Path) -> None:
    """A name the patch provides elsewhere is still this object's own static where it has one."""
    source = B_ORIG + (
        "static int __attribute__((noinline)) kpb_helper(int v) { return v - 1; }\n"
        "int b_other(int v) { return kpb_helper(v) * 2; }\n"
    )
    pair = build_pair(tmp_path, source, source.replace("* 2;", "* 3;"), name="b")
    table = load_symbol_table(pair.orig, "vmlinux")
    result = diff_objects(pair.orig, pair.patched, symbols=table, exports={}, require_fentry=False,
                          provided_by_patch={"kpb_helper"})
    assert names(result.changed_functions) == {"b_other"}
    how = {r.target_name: r for r in result.resolutions}
    assert how["kpb_helper"].how == "klp"
    assert how["kpb_helper"].name == ".klp.sym.vmlinux.kpb_helper,0"
