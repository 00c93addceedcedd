"""Diff objects of the real Debian 6.1 cloud kernel, compiled in the scratch tree, for linking."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import pytest

from kpatchbuild.differ import DiffResult, diff_objects
from kpatchbuild.differ.symbols import Export, SymbolTable, load_module_symvers, load_symbol_table
from tests.conftest import PROJECT, KernelTree
from tests.differ.kernel_corpus import CASES, Case, CorpusBuilder

RECIPE_PATCH = PROJECT / "recipes" / "cmdline" / "cmdline.patch"


@dataclass(frozen=True)
class KernelDiffs:
    tree: KernelTree
    builder: CorpusBuilder
    symbols: SymbolTable
    exports: dict[str, Export]

    def diff(self, case: Case) -> DiffResult:
        pair = self.builder.build(case)
        return diff_objects(pair.orig, pair.patched, target="vmlinux", symbols=self.symbols,
                            exports=self.exports)


@pytest.fixture(scope="session")
def kernel_diffs(debian_kernel_tree: KernelTree,
                 tmp_path_factory: pytest.TempPathFactory) -> KernelDiffs:
    return KernelDiffs(
        debian_kernel_tree,
        CorpusBuilder(debian_kernel_tree.path, debian_kernel_tree.release,
                      tmp_path_factory.mktemp("module-objects")),
        load_symbol_table(debian_kernel_tree.system_map),
        load_module_symvers(debian_kernel_tree.module_symvers),
    )


@pytest.fixture(scope="session")
def recipe_diff(kernel_diffs: KernelDiffs, tmp_path_factory: pytest.TempPathFactory) -> DiffResult:
    """fs/proc/cmdline.c with the default recipe's own patch applied, diffed."""
    patched = tmp_path_factory.mktemp("recipe") / "cmdline.c"
    with RECIPE_PATCH.open() as patch:
        subprocess.run(["patch", "-s", "-p1", "-d", str(kernel_diffs.tree.path), "-o",
                        str(patched)], stdin=patch, check=True)
    text = patched.read_text()
    return kernel_diffs.diff(Case("recipe_cmdline", "fs/proc/cmdline.c", lambda _: text, 0))


@pytest.fixture(scope="session")
def local_reference_diff(kernel_diffs: KernelDiffs) -> DiffResult:
    """filldir64 changed: it calls the static verify_dirent_name, not exported."""
    (case,) = [c for c in CASES if c.name == "exception_table"]
    return kernel_diffs.diff(case)
