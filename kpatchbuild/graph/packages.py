"""The package step: each recipe's proven modules -> its ``kpatch-patch`` package; the
``kpatch`` command -> its package; all of them -> the local apt repository.

Per recipe, the package carries the module of every cell of its matrix that was proven
(a cell marked not-applicable has none; a recipe whose refusal is expected has no package).
Only proven modules are packaged: ``doit package`` runs each cell's ``prove`` first. Each
step writes a small record in ``<repository>/records/`` that doit tracks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import kpatchbuild
from kpatchbuild.base.commands import say
from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.store import Store, sha256_file, write_atomically
from kpatchbuild.graph.matrix import changed_functions
from kpatchbuild.graph.pipeline import TargetPipeline
from kpatchbuild.graph.recipe import Recipe
from kpatchbuild.stages.package import patch, tool
from kpatchbuild.stages.package.repository import INSTALLED_KEYRING, Published, Repository

TOOL = "kpatch"


def repository(store: Store) -> Repository:
    return Repository(store.root / "package")


def record_path(store: Store, name: str) -> Path:
    return repository(store).root / "records" / f"{name}.json"


def packaged_recipes(items: Sequence[TargetPipeline]) -> dict[str, list[TargetPipeline]]:
    """Recipe name -> its cells that yield a module (in order), for recipes that have any
    (a cell refused as its recipe expects yields none)."""
    cells: dict[str, list[TargetPipeline]] = {}
    for item in items:
        if item.recipe.refused_on(item.target) is None and item.last_step == "prove":
            cells.setdefault(item.recipe.name, []).append(item)
    return cells


def tool_sources() -> list[Path]:
    """The files the kpatch package is made of (what its task depends on)."""
    return [tool.SOURCE / relative for relative in tool.command_modules()] + \
        [Path(tool.__file__)]


def recipe_contents(recipe: Recipe, cells: Sequence[TargetPipeline]) -> patch.PatchPackage:
    releases: dict[str, patch.ReleaseModule] = {}
    for item in cells:
        linked = item.linked()
        module = patch.ReleaseModule(linked.release, linked.linked(), changed_functions(item))
        other = releases.get(linked.release)
        if other is not None and other.sha256 != module.sha256:
            raise KpbError(f"recipe {recipe.name}: two of its targets build different modules "
                           f"for one kernel release, {linked.release}; keep one of them")
        releases[linked.release] = module
    # Each target's patches (a backport may differ): every file once, by name and content.
    patches = sorted({(p.name, sha256_file(p)) for item in cells
                      for p in item.recipe.patches_for(item.target)})
    return patch.PatchPackage(
        recipe=recipe.name, module=recipe.module, description=recipe.description,
        replace=recipe.replace,
        patches=tuple(patch.PatchFile(name, digest) for name, digest in patches),
        releases=tuple(releases[r] for r in sorted(releases)))


def _record(store: Store, name: str, published: Published) -> None:
    write_atomically(record_path(store, name), json.dumps({
        "package": published.package, "version": published.version,
        "deb": str(published.deb)}, indent=2) + "\n")
    what = "built" if published.new else "unchanged"
    say(f"  {published.package} {published.version}: {what}: {published.deb}")


def package_recipe(store: Store, cells: Sequence[TargetPipeline]) -> None:
    recipe = cells[0].recipe
    contents = recipe_contents(recipe, cells)
    published = repository(store).publish(
        contents.package, recipe.version, patch.content(contents),
        lambda version, date: replace(patch.spec(contents, version), date=date),
        modules=patch.modules_by_release(contents))
    _record(store, recipe.name, published)


def package_tool(store: Store) -> None:
    sources = [(str(p.relative_to(tool.SOURCE)), sha256_file(p)) for p in tool_sources()]
    published = repository(store).publish(
        tool.PACKAGE, kpatchbuild.__version__, sources,
        lambda version, date: replace(tool.spec(version), date=date))
    _record(store, TOOL, published)


def write_index(store: Store, *, signed: bool = True) -> None:
    """Index the repository and say how a machine is to use it."""
    repo = repository(store)
    index = repo.write_index(signed=signed)
    until = index.valid_until.strftime("%Y-%m-%d")
    if index.key is None or index.keyring is None:
        say("  warning: the repository is unsigned (unsigned=1): apt will not verify anything "
            "in it, and installs, as root, whatever package is put in its place")
        say(f"  apt repository: {repo.root} (unsigned, valid until {until}); on a machine "
            f"with access to it: deb [trusted=yes] file:{repo.root} ./")
        return
    say(f"  apt repository: {repo.root} (signed by {index.key.fingerprint}, valid until "
        f"{until}); on a machine with access to it:")
    say(f"    cp {index.keyring} {INSTALLED_KEYRING}")
    say(f"    deb [signed-by={INSTALLED_KEYRING}] file:{repo.root} ./")
