"""Shared fixtures: real kernel stages made by the real pipeline, cached between test runs.

The kernel fixtures run ``doit build recipe=NAME`` exactly as a user would, against the
project's cache (``cache/`` or KPATCHBUILD_CACHE): the first run fetches and prepares
(Debian kernel, ~1 min) or builds (small kernel, a few minutes), later runs find it all done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.store import Store, default_root
from kpatchbuild.stages.fetch.debian import VMLINUX_SYMBOLS
from tests.support.chroots import (
    SUITE_TREES,
    Chroot,
    make_chroot,
    prepared_tree,
    suite_kernel,
    suite_kernel_symbols,
)

PROJECT = Path(__file__).resolve().parent.parent


def run_doit(*args: str, env: dict[str, str] | None = None,
             cwd: Path = PROJECT) -> subprocess.CompletedProcess[str]:
    """``doit`` of this project, as the README runs it, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"), "-d", str(cwd), *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd,
    )


@dataclass(frozen=True)
class RecipeStage:
    """What the pipeline recorded for one recipe's target: its fetch and original stage."""

    work: Path
    fetch: dict
    original: dict

    @property
    def tree(self) -> Path:
        return Path(self.original["path"]) / "tree"


# The cells the suite builds of the example recipes' matrices: Debian's 6.1 cloud kernel
# (and 6.12 where a test says), not the generic flavour's (a 858 MB -dbg package each).
CI_KERNEL = "debian12-6.1-cloud-amd64"
TINY_KERNEL = "tiny-6.1"


def build_recipe_stage(recipe: str, kernel: str = CI_KERNEL) -> RecipeStage:
    """``doit build recipe=RECIPE kernel=KERNEL``: that cell of the recipe, built and proven."""
    result = run_doit("build", f"recipe={recipe}", f"kernel={kernel}")
    if result.returncode != 0:
        pytest.fail(f"doit build recipe={recipe} kernel={kernel} failed:\n{result.stdout}\n"
                    f"{result.stderr}")
    work = default_root() / "work" / recipe / kernel
    return RecipeStage(work, json.loads((work / "fetch.json").read_text()),
                       json.loads((work / "original.json").read_text()))


@pytest.fixture(scope="session")
def default_recipe_stage() -> RecipeStage:
    """The default recipe on Debian's 6.1 cloud kernel, prepared."""
    return build_recipe_stage("cmdline")


@pytest.fixture(scope="session")
def built_recipe_stage() -> RecipeStage:
    """The built-kernel recipe (linux-source-6.1, tinyconfig + guest fragment), built."""
    return build_recipe_stage("cmdline-tiny", TINY_KERNEL)


def copy_recipe(name: str, recipes: Path, as_name: str) -> Path:
    shutil.copytree(PROJECT / "recipes" / name, recipes / as_name)
    return recipes / as_name


@pytest.fixture
def private_recipes(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A recipes directory of the test's own, with its own doit database.

    Afterwards the work directories the test made go; those that were there before stay,
    since a test may copy a project recipe under its own name (the session's fixtures
    built ``work/cmdline`` and later tests read it).
    """
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    env = {"KPATCHBUILD_RECIPES": str(recipes), "KPATCHBUILD_DOIT_DB": str(tmp_path / "db")}
    work = default_root() / "work"
    before = set(work.iterdir()) if work.is_dir() else set()
    yield recipes, env
    for recipe in recipes.iterdir():
        if work / recipe.name not in before:
            shutil.rmtree(work / recipe.name, ignore_errors=True)


@dataclass(frozen=True)
class KernelTree:
    path: Path  # a writable scratch copy: tests may compile and edit in it
    release: str
    system_map: Path
    module_symvers: Path
    series: str  # "6.1", "6.12": what tests key per-series expectations on
    compiler: str = ""  # CC for make when the tree was configured with another than `gcc`
    # Where the tree's compiler lives, when it is not the host's: every make runs there.
    chroot: Chroot | None = None
    # What tests key per-tree expectations on, when the series alone does not say it.
    label: str = ""
    # vmlinux's symbol table in the compact form (from the -dbg package), when there is one.
    compact_symbols: Path | None = None

    @property
    def symbols(self) -> Path:
        """What the differ resolves against: the compact table, else System.map."""
        return self.compact_symbols or self.system_map

    @property
    def name(self) -> str:
        return self.label or self.series

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """A command of the tree's toolchain (inside its chroot, if it has one)."""
        if self.chroot is not None:
            return self.chroot.run(argv, binds=[self.path])
        return subprocess.run(argv, capture_output=True, text=True, check=True)


@pytest.fixture(scope="session")
def debian_kernel_tree(default_recipe_stage: RecipeStage,
                       tmp_path_factory: pytest.TempPathFactory) -> KernelTree:
    """A scratch copy of the default recipe's prepared tree, with Debian's symbol files.

    KPB_SCRATCH_TREE names an existing copy to reuse (a developer's shortcut: copying 1.5 GB
    takes ~20 s).
    """
    reuse = os.environ.get("KPB_SCRATCH_TREE")
    if reuse:
        path = Path(reuse)
    else:
        path = tmp_path_factory.mktemp("kernel") / "tree"
        subprocess.run(["cp", "-a", "--reflink=auto", str(default_recipe_stage.tree), str(path)],
                       check=True)
    files = Path(default_recipe_stage.fetch["files"])
    return KernelTree(path, default_recipe_stage.original["release"], files / "System.map",
                      files / "Module.symvers", "6.1",
                      compact_symbols=files / VMLINUX_SYMBOLS)


SERIES_6_12_KERNEL = "debian12-6.12-cloud-amd64"
SERIES_6_12_TARGET = f"cmdline/{SERIES_6_12_KERNEL}"


def prepare_scratch_tree(target: str, series: str, tmp_path_factory: pytest.TempPathFactory,
                         reuse_variable: str, compiler: str = "", label: str = "") -> KernelTree:
    """A recipe target's Debian kernel, fetched by the pipeline, prepared in a scratch copy.

    doit's fetch and config steps of ``target`` give Debian's packages, source and checked
    config. The tree is then configured with that config and ``modules_prepare``d here, with
    KERNELRELEASE on every make command line, as Debian builds it (the corpus compiles the
    same way), and with CC=``compiler`` when given. The environment variable
    ``reuse_variable`` names an existing prepared copy to reuse.
    """
    result = run_doit("config:" + target)
    if result.returncode != 0:
        pytest.fail(f"doit config:{target} failed:\n{result.stdout}\n{result.stderr}")
    work = default_root() / "work" / target
    fetch = json.loads((work / "fetch.json").read_text())
    release = fetch["kernel"]["release"]
    files = Path(fetch["files"])
    reuse = os.environ.get(reuse_variable)
    if reuse:
        path = Path(reuse)
    else:
        path = tmp_path_factory.mktemp(f"kernel-{series}{compiler}") / "tree"
        subprocess.run(["cp", "-a", "--reflink=auto", fetch["source"]["path"], str(path)],
                       check=True)
        (path / ".config").write_text((work / "config").read_text())
        prepared = subprocess.run(
            ["make", "-s", "-C", str(path), f"-j{os.cpu_count() or 1}",
             f"KERNELRELEASE={release}", *([f"CC={compiler}"] if compiler else []),
             "olddefconfig", "modules_prepare"],
            capture_output=True, text=True,
        )
        if prepared.returncode != 0:
            pytest.fail(f"preparing {path} failed:\n{prepared.stderr[-3000:]}")
        shutil.copyfile(files / "Module.symvers", path / "Module.symvers")
    return KernelTree(path, release, files / "System.map", files / "Module.symvers", series,
                      compiler, label=label, compact_symbols=files / VMLINUX_SYMBOLS)


@pytest.fixture(scope="session")
def debian_6_12_kernel_tree(tmp_path_factory: pytest.TempPathFactory) -> KernelTree:
    """Debian's 6.12 cloud kernel (the default recipe's 6.12 cell), prepared in a scratch
    copy."""
    return prepare_scratch_tree(SERIES_6_12_TARGET, "6.12", tmp_path_factory,
                                "KPB_SCRATCH_TREE_6_12")


@pytest.fixture(scope="session")
def debian_6_1_gcc11_kernel_tree(default_recipe_stage: RecipeStage,
                                 tmp_path_factory: pytest.TempPathFactory) -> KernelTree:
    """Debian's 6.1 source and config, configured with gcc-11 instead of Debian's gcc 12.

    Not a tree whose objects could patch Debian's kernel (another compiler's code); it shows
    the differ what gcc 11 makes of real kernel code. The symbol files stay Debian's.
    """
    target = f"cmdline/{default_recipe_stage.work.name}"
    return prepare_scratch_tree(target, "6.1", tmp_path_factory,
                                "KPB_SCRATCH_TREE_6_1_GCC11", compiler="gcc-11",
                                label="6.1-gcc11")


def chroot_kernel_tree(label: str, tmp_path_factory: pytest.TempPathFactory) -> KernelTree:
    """The tree SUITE_TREES[label]: a Debian suite's newest kernel of a series, prepared in a
    chroot of that suite by the compiler the entry names (for an ``as_built`` one, checked to
    be the one Debian built it with), in a scratch copy; its objects are compiled in the
    chroot too (tests/chroots.py).

    The chroot, the kernel's files and the prepared tree are kept in the project's store;
    KPB_SCRATCH_TREE_<LABEL> (KPB_SCRATCH_TREE_6_12_GCC14 for "6.12-gcc14") names an
    existing scratch copy to reuse.
    """
    spec = SUITE_TREES[label]
    reuse_variable = "KPB_SCRATCH_TREE_" + re.sub(r"[.-]", "_", label).upper()
    store = Store()
    try:
        chroot = make_chroot(store, spec.suite, spec.packages)
        kernel = suite_kernel(store, chroot, spec.series, spec.flavour)
        prepared = prepared_tree(store, chroot, kernel, spec.compiler, as_built=spec.as_built)
        symbols = suite_kernel_symbols(store, chroot, kernel)
    except KpbError as error:
        pytest.fail(error.message)
    reuse = os.environ.get(reuse_variable)
    if reuse:
        path = Path(reuse)
    else:
        path = tmp_path_factory.mktemp(f"kernel-{label}") / "tree"
        subprocess.run(["cp", "-a", "--reflink=auto", str(prepared.tree), str(path)],
                       check=True)
    return KernelTree(path, kernel.release, kernel.files / "System.map",
                      kernel.files / "Module.symvers", spec.series, spec.compiler, chroot,
                      label, symbols)


# The published JUnit schema the matrix's report is checked against: Jenkins' xunit plugin
# publishes junit-10.xsd (MIT), and pytest's source distribution carries it for its own
# JUnit tests, so it comes from PyPI like every other dependency, once per cache.
SCHEMA_PYTEST_VERSION = "8.3.4"
SCHEMA_MEMBER = f"pytest-{SCHEMA_PYTEST_VERSION}/testing/example_scripts/junit-10.xsd"


@pytest.fixture(scope="session")
def junit_schema() -> Path:
    where = default_root() / "test-data" / "junit-10.xsd"
    if where.is_file():
        return where
    download = where.parent / "sdist"
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         f"pytest=={SCHEMA_PYTEST_VERSION}", "-d", str(download)],
        capture_output=True, text=True)
    if fetched.returncode != 0:
        pytest.fail(f"could not download pytest's sdist for junit-10.xsd: {fetched.stderr}")
    (archive,) = download.glob("pytest-*.tar.gz")
    with tarfile.open(archive) as tar:
        member = tar.extractfile(SCHEMA_MEMBER)
        assert member is not None, f"{archive} has no {SCHEMA_MEMBER}"
        temporary = where.with_suffix(".tmp")
        temporary.write_bytes(member.read())
    temporary.replace(where)
    return where
