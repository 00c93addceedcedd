"""A tracepoint keyed in a loadable module, on a real object of Debian's 6.1: sunrpc.ko's
xprt_release_xprt(), diffed against the module's own .ko from Debian's image package."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.base.store import Store
from kpatchbuild.differ import diff_objects
from kpatchbuild.differ.symbols import load_module_symvers, load_symbol_table
from kpatchbuild.stages.fetch import debian, target_modules
from tests.conftest import KernelTree, RecipeStage
from tests.differ.kernel_corpus import Case, CorpusBuilder, replace_once

pytestmark = pytest.mark.kernel


def test_module_tracepoint_entry_is_dropped_with_a_note(
        default_recipe_stage: RecipeStage, debian_kernel_tree: KernelTree,
        tmp_path: Path) -> None:
    kernel = debian.KernelRelease.from_json(default_recipe_stage.fetch["kernel"])
    sunrpc = target_modules.DebianModules(Store(), kernel.packages["image"],
                                          kernel.release).find("sunrpc")
    builder = CorpusBuilder(debian_kernel_tree.path, kernel.release, tmp_path)
    pair = builder.build(Case(
        "module_tracepoint", "net/sunrpc/xprt.c",
        replace_once("\ttrace_xprt_release_xprt(xprt, task);\n",
                     "\ttrace_xprt_release_xprt(xprt, task);\n\tsmp_mb();\n",
                     after="void xprt_release_xprt("), 0))
    result = diff_objects(pair.orig, pair.patched, target="sunrpc",
                          symbols=load_symbol_table(sunrpc, "sunrpc"),
                          exports=load_module_symvers(debian_kernel_tree.module_symvers),
                          kernel_version=(6, 1))
    assert [f.name for f in result.changed_functions] == ["xprt_release_xprt"]
    assert any(note.startswith("tracepoint xprt_release_xprt in xprt_release_xprt+0x")
               and "its key lives in module sunrpc" in note for note in result.notes)
    assert "__jump_table" not in {name for name, _ in result.kept_sections}
