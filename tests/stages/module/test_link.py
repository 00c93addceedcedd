"""Livepatch modules linked by kbuild against the prepared Debian 6.1 cloud tree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from kpatchbuild.differ import DiffResult
from kpatchbuild.stages.module.buildid import kernel_build_id
from kpatchbuild.stages.module.module import ObjectDiff, link_module
from tests.conftest import KernelTree
from tests.stages.module.conftest import KernelDiffs
from tests.stages.module.elfcheck import modinfo, readelf, relocations, section_headers, symbols

pytestmark = pytest.mark.kernel

SHF_RELA_LIVEPATCH_LETTERS = "AIo"  # SHF_ALLOC, SHF_INFO_LINK, an OS-specific flag


def _vmlinuz(tree: KernelTree) -> Path:
    return tree.system_map.parent / "vmlinuz"


def _link(tree: KernelTree, diffs: list[DiffResult], work: Path, **options) -> Path:
    return link_module(tree.path, "livepatch_test", [ObjectDiff.from_result(d, "vmlinux")
                                                     for d in diffs],
                       work / "module", release=tree.release, log=work / "link.log", **options)


def _klp_functions(module_dir: Path) -> list[tuple[str, int]]:
    text = (module_dir / "kpb_main.c").read_text()
    return [(name, int(pos)) for name, pos in
            re.findall(r'\.old_name = "([^"]+)",\n.*\n\t\t\.old_sympos = (\d+),', text)]


def _check_livepatch_layout(module: Path, klp_targets: set[str]) -> None:
    """klp symbols SHN_LIVEPATCH, their relocations only in flagged .klp.rela sections."""
    entries = symbols(module)
    klp_symbols = {e.name for e in entries if e.name.startswith(".klp.sym.")}
    assert {re.match(r"\.klp\.sym\.vmlinux\.(.+),\d+$", n).group(1) for n in klp_symbols} \
        == klp_targets
    assert all(e.ndx == "OS [0xff20]" and e.bind == "GLOBAL" for e in entries
               if e.name in klp_symbols)
    headers = section_headers(module)
    by_index = {h.index: h for h in headers}
    tables = relocations(module)
    klp_tables = [h for h in headers if h.name.startswith(".klp.rela.")]
    assert klp_tables
    for header in klp_tables:
        assert header.type == "RELA"
        assert header.flags == SHF_RELA_LIVEPATCH_LETTERS
        patched = by_index[header.info].name
        assert header.name == ".klp.rela.vmlinux" + patched
        assert tables[header.name] and set(tables[header.name]) <= klp_symbols
    for name, referenced in tables.items():
        if not name.startswith(".klp.rela."):
            assert not set(referenced) & klp_symbols, name
    assert not [h for h in headers if "kpb" in h.name]  # the placeholder section is gone
    # readelf -a: no complaint about anything in the file.
    assert readelf("-a", str(module)).stderr == ""


def test_recipe_module(kernel_diffs: KernelDiffs, recipe_diff: DiffResult,
                       tmp_path: Path) -> None:
    tree = kernel_diffs.tree
    build_id = kernel_build_id(_vmlinuz(tree))
    module = _link(tree, [recipe_diff], tmp_path, build_id=build_id)
    assert module.is_file() and module.name == "livepatch_test.ko"

    info = modinfo(module)
    assert info["vermagic"].startswith(tree.release + " SMP ")
    assert "modversions" in info["vermagic"]
    assert info["livepatch"] == "Y"
    assert info["kpatchbuild_release"] == tree.release
    assert info["kpatchbuild_build_id"] == build_id
    assert info["name"] == "livepatch_test"

    assert _klp_functions(module.parent) == [
        (f.old_name, f.old_sympos) for f in recipe_diff.changed_functions
    ]
    assert [f.name for f in recipe_diff.changed_functions] == ["cmdline_proc_show"]
    # saved_command_line is not exported: only livepatch can resolve it.
    _check_livepatch_layout(module, {"saved_command_line"})
    # Exported symbols stay ordinary undefined symbols, for the module loader.
    undefined = {e.name for e in symbols(module) if e.ndx == "UND" and e.name}
    assert {"seq_puts", "seq_putc", "klp_enable_patch"} <= undefined
    assert ".replace = true," in (module.parent / "kpb_main.c").read_text()
    # The whole kbuild output is in the log, nothing lost.
    log = (tmp_path / "link.log").read_text()
    assert "MODPOST" in log and "LD [M]" in log


def test_static_callee_becomes_livepatch_relocation(
    kernel_diffs: KernelDiffs, local_reference_diff: DiffResult, tmp_path: Path
) -> None:
    klp = [r for r in local_reference_diff.resolutions if r.how == "klp"]
    assert "verify_dirent_name" in {r.target_name for r in klp}
    module = _link(kernel_diffs.tree, [local_reference_diff], tmp_path, replace=False)
    _check_livepatch_layout(module, {r.target_name for r in klp})
    assert "verify_dirent_name" in relocations(module)[".klp.rela.vmlinux.text.filldir64"][0]
    assert ".replace = false," in (module.parent / "kpb_main.c").read_text()
    assert _klp_functions(module.parent) == [("filldir64", 0)]


def test_two_objects_one_module(kernel_diffs: KernelDiffs, recipe_diff: DiffResult,
                                local_reference_diff: DiffResult, tmp_path: Path) -> None:
    module = _link(kernel_diffs.tree, [recipe_diff, local_reference_diff], tmp_path)
    assert sorted(_klp_functions(module.parent)) == [("cmdline_proc_show", 0), ("filldir64", 0)]
    names = {h.name for h in section_headers(module)}
    assert {".klp.rela.vmlinux.text.cmdline_proc_show",
            ".klp.rela.vmlinux.text.filldir64"} <= names


CALLBACKS = r"""
#include <linux/printk.h>
#include <linux/sched.h>
#include "kpatchbuild.h"

#define KPB_TEST_SHADOW_ID 0x6b7062

/* Global, so the relocations of the slots name them rather than .text. */
int kpb_test_pre_patch(struct klp_object *obj);
void kpb_test_post_unpatch(struct klp_object *obj);

int kpb_test_pre_patch(struct klp_object *obj)
{
    unsigned long *seen = kpb_shadow_get_or_alloc(current, KPB_TEST_SHADOW_ID,
                              sizeof(*seen), GFP_KERNEL);
    if (!seen)
        return -ENOMEM;
    (*seen)++;
    return 0;
}

void kpb_test_post_unpatch(struct klp_object *obj)
{
    if (kpb_shadow_get(current, KPB_TEST_SHADOW_ID))
        kpb_shadow_free(current, KPB_TEST_SHADOW_ID);
    kpb_shadow_free_all(KPB_TEST_SHADOW_ID);
}

KPB_PRE_PATCH_CALLBACK(vmlinux, kpb_test_pre_patch);
KPB_POST_UNPATCH_CALLBACK(vmlinux, kpb_test_post_unpatch);
"""


def test_callbacks_and_shadow_variables(kernel_diffs: KernelDiffs, recipe_diff: DiffResult,
                                        tmp_path: Path) -> None:
    source = tmp_path / "callbacks.c"
    source.write_text(CALLBACKS)
    module = _link(kernel_diffs.tree, [recipe_diff], tmp_path, sources=[source])
    entries = {e.name: e for e in symbols(module)}
    # The recipe's strong definitions replaced the registration's weak slots...
    assert entries["kpb_pre_patch__vmlinux"].bind == "GLOBAL"
    assert entries["kpb_post_unpatch__vmlinux"].bind == "GLOBAL"
    # ...while the kinds it left alone stay weak (NULL).
    assert entries["kpb_post_patch__vmlinux"].bind == "WEAK"
    data_relocations = relocations(module)[".rela.data"]
    assert {"kpb_test_pre_patch", "kpb_test_post_unpatch"} <= set(data_relocations)
    undefined = {e.name for e in entries.values() if e.ndx == "UND"}
    assert {"klp_shadow_get_or_alloc", "klp_shadow_get", "klp_shadow_free",
            "klp_shadow_free_all"} <= undefined


def test_debian_vmlinuz_build_id(kernel_diffs: KernelDiffs, tmp_path: Path) -> None:
    """The id read from the image is the one readelf finds in the decompressed vmlinux."""
    vmlinuz = _vmlinuz(kernel_diffs.tree)
    found = kernel_build_id(vmlinuz)
    assert re.fullmatch(r"[0-9a-f]{40}", found)
    image = vmlinuz.read_bytes()
    start = (image[0x1F1] + 1) * 512 + int.from_bytes(image[0x248:0x24C], "little")
    length = int.from_bytes(image[0x24C:0x250], "little")
    vmlinux = tmp_path / "vmlinux"
    with vmlinux.open("wb") as out:
        subprocess.run(["lz4", "-dc"], input=image[start:start + length], stdout=out)
    notes = readelf("-n", str(vmlinux)).stdout
    assert f"Build ID: {found}" in notes


def test_relinking_in_the_same_directory_rebuilds_only_what_changed(
        kernel_diffs: KernelDiffs, recipe_diff: DiffResult, local_reference_diff: DiffResult,
        tmp_path: Path) -> None:
    tree, log = kernel_diffs.tree, tmp_path / "link.log"
    first = _link(tree, [recipe_diff], tmp_path)
    first_bytes = first.read_bytes()
    both = _link(tree, [recipe_diff, local_reference_diff], tmp_path)
    assert sorted(_klp_functions(both.parent)) == [("cmdline_proc_show", 0), ("filldir64", 0)]
    assert {".klp.rela.vmlinux.text.filldir64"} <= {h.name for h in section_headers(both)}
    # Back to the first patch, then the same once more: its registration is compiled for
    # the first of those two links only, and the module is the first one again.
    _link(tree, [recipe_diff], tmp_path)
    before = log.stat().st_size
    again = _link(tree, [recipe_diff], tmp_path)
    output = log.read_text()[before:]
    assert "kpb_main.o" not in output and "livepatch_test.ko" in output
    assert again.read_bytes() == first_bytes
    _check_livepatch_layout(again, {r.target_name for r in recipe_diff.resolutions
                                    if r.how == "klp"})
