"""The package step: each recipe's proven modules -> its ``kpatch-patch`` package; the
``kpatch`` command -> its package; all of them -> a local apt repository per Debian release.

A machine runs one Debian release, and installs from that release's repository
(``<cache>/package/<codename>/``): a recipe spanning Debian 12 and 13 yields one package per
release, each carrying the modules of that release's kernels (a kernel built here belongs
to the release of its toolchain), and each repository has its own ``kpatch`` package.
Per recipe and release, the package carries the module of every cell that was proven (a
cell marked not-applicable has none; a recipe whose refusal is expected has no package).
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
from kpatchbuild.stages.fetch.suites import DebianRelease
from kpatchbuild.stages.module import sign
from kpatchbuild.stages.package import patch, tool
from kpatchbuild.stages.package.repository import INSTALLED_KEYRING, Published, Repository

TOOL = "kpatch"


def repository(store: Store, release: DebianRelease) -> Repository:
    return Repository(store.root / "package" / release.codename)


def record_path(store: Store, release: DebianRelease, name: str) -> Path:
    return repository(store, release).root / "records" / f"{name}.json"


def release_of(item: TargetPipeline) -> DebianRelease:
    """The Debian release whose machines run the cell's kernel: its own, or for a kernel
    built here its toolchain's."""
    return item.toolchain_release()


def releases_of(items: Sequence[TargetPipeline]) -> list[DebianRelease]:
    """The releases of the cells, in the order of their numbers."""
    found = {release.number: release for release in map(release_of, items)}
    return [found[number] for number in sorted(found, key=int)]


def packaged_recipes(items: Sequence[TargetPipeline],
                     release: DebianRelease) -> dict[str, list[TargetPipeline]]:
    """Recipe name -> its cells of ``release`` that yield a module (in order), for recipes
    that have any (a cell refused as its recipe expects yields none)."""
    cells: dict[str, list[TargetPipeline]] = {}
    for item in items:
        if (item.recipe.refused_on(item.target) is None and item.last_step == "prove"
                and release_of(item) == release):
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
        certificate = sign.read_certificate(linked.certificate, named_by=item.label).der \
            if linked.signature and linked.certificate else None
        module = patch.ReleaseModule(
            linked.release, linked.linked(), changed_functions(item),
            signer=linked.signature["signer"] if linked.signature else None,
            hash=linked.signature["hash"] if linked.signature else None,
            certificate=certificate)
        other = releases.get(linked.release)
        if other is not None and other.sha256 != module.sha256:
            raise KpbError(f"recipe {recipe.name}: two of its targets build different modules "
                           f"for one kernel release, {linked.release}; keep one of them")
        releases[linked.release] = module
    certificates = {r.certificate for r in releases.values()}
    if len(certificates) > 1:
        signers = sorted({r.signer or "unsigned" for r in releases.values()})
        raise KpbError(f"recipe {recipe.name}: its modules are not all signed by one key "
                       f"({', '.join(signers)}); a package ships one signer's certificate: "
                       "build every cell with the same key (doit build module_key=...)")
    # Each target's patches (a backport may differ): every file once, by name and content.
    patches = sorted({(p.name, sha256_file(p)) for item in cells
                      for p in item.recipe.patches_for(item.target)})
    return patch.PatchPackage(
        recipe=recipe.name, module=recipe.module, description=recipe.description,
        replace=recipe.replace,
        patches=tuple(patch.PatchFile(name, digest) for name, digest in patches),
        releases=tuple(releases[r] for r in sorted(releases)))


def _record(store: Store, release: DebianRelease, name: str, published: Published) -> None:
    write_atomically(record_path(store, release, name), json.dumps({
        "package": published.package, "version": published.version,
        "deb": str(published.deb)}, indent=2) + "\n")
    what = "built" if published.new else "unchanged"
    say(f"  {published.package} {published.version}: {what}: {published.deb}")


def package_recipe(store: Store, release: DebianRelease, cells: Sequence[TargetPipeline]) -> None:
    recipe = cells[0].recipe
    contents = recipe_contents(recipe, cells)
    published = repository(store, release).publish(
        contents.package, recipe.version, patch.content(contents),
        lambda version, date: replace(patch.spec(contents, version), date=date),
        modules=patch.modules_by_release(contents))
    _record(store, release, recipe.name, published)


def package_tool(store: Store, release: DebianRelease) -> None:
    sources = [(str(p.relative_to(tool.SOURCE)), sha256_file(p)) for p in tool_sources()]
    content = [*sources, ("unit", tool.unit_path(release.codename))]
    published = repository(store, release).publish(
        tool.PACKAGE, kpatchbuild.__version__, content,
        lambda version, date: replace(tool.spec(version, release.codename), date=date))
    _record(store, release, TOOL, published)


def write_index(store: Store, release: DebianRelease, *, signed: bool = True) -> None:
    """Index the release's repository and say how a machine of that release uses it."""
    repo = repository(store, release)
    say(f"  {release.label}:")
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
