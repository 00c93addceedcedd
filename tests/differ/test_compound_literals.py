"""Compound literals (`__compound_literal.N`) renumbered by an edit above them, and the
tables that point at them: paired by their contents, so the tables are unchanged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kpatchbuild.differ import CannotPatch, diff_objects
from kpatchbuild.differ.symbols import load_module_symvers, load_symbol_table
from tests.conftest import KernelTree
from tests.differ.cfixtures import build_pair, diff_pair, names
from tests.differ.kernel_corpus import Case, CorpusBuilder, replace_once

SOURCE = """
struct op { int code; const char *name; };
static const struct op *const table[] = {
	&(const struct op){ 1, "one" },
	&(const struct op){ 2, "two" },
	&(const struct op){ 2, "two" },
};
int lookup(int i) { return table[i & 3]->code; }
int other(int v) { return v + 1; }
"""
# A new table above renumbers every literal of the old one, two of which are twins.
PATCHED = SOURCE.replace(
    "static const struct op *const table[]",
    'static const struct op *const first[] = { &(const struct op){ 9, "nine" } };\n'
    "static const struct op *const table[]").replace(
    "int other(int v) { return v + 1; }", "int other(int v) { return v + first[0]->code; }")


def test_renumbered_literals_leave_their_table_unchanged(tmp_path: Path) -> None:
    result = diff_pair(build_pair(tmp_path, SOURCE, PATCHED))
    assert names(result.changed_functions) == {"other"}


def test_a_changed_literal_is_a_changed_table(tmp_path: Path) -> None:
    with pytest.raises(CannotPatch, match=r"data __compound_literal\.0 \(section \S+\) changed"):
        diff_pair(build_pair(tmp_path, SOURCE, SOURCE.replace("{ 1, \"one\" }",
                                                                "{ 1, \"uno\" }")))


@pytest.mark.kernel
def test_sata_nv_port_table_unchanged_by_a_literal_above(debian_kernel_tree: KernelTree,
                                                         tmp_path: Path) -> None:
    # drivers/ata/sata_nv.c: nv_port_info's entries point at NV_PI_PRIV() literals; a new
    # one used by the fixed function comes first and renumbers them all.
    builder = CorpusBuilder(debian_kernel_tree.path, debian_kernel_tree.release,
                            tmp_path / "objects")
    edit = (replace_once("static const struct ata_port_info nv_port_info[] = {",
                         "static const struct nv_pi_priv *const kpb_extra = "
                         "NV_PI_PRIV(nv_generic_interrupt, &nv_sht);\n\n"
                         "static const struct ata_port_info nv_port_info[] = {"),
            replace_once("\t\t\tunsigned long deadline)\n{\n",
                         "\t\t\tunsigned long deadline)\n{\n"
                         "\tif (READ_ONCE(kpb_extra)->irq_handler != nv_generic_interrupt)\n"
                         "\t\treturn -EINVAL;\n", after="static int nv_hardreset("))
    pair = builder.build(Case("sata_nv_literals", "drivers/ata/sata_nv.c",
                              lambda text: edit[1](edit[0](text)), 0))
    literals = subprocess.run(["readelf", "-sW", str(pair.patched)], capture_output=True,
                              text=True, check=True).stdout.count("__compound_literal.")
    assert literals >= 6
    result = diff_objects(pair.orig, pair.patched, target="sata_nv",
                          symbols=load_symbol_table(pair.orig, "sata_nv"),
                          exports=load_module_symvers(debian_kernel_tree.module_symvers),
                          kernel_version=(6, 1))
    assert [f.name for f in result.changed_functions] == ["nv_hardreset"]
