"""Kernel source: a Debian source package, a checked tarball or a local tree -> a pristine tree.

The pristine tree is only ever read: configuration runs with ``O=`` into a scratch directory
and builds run in a tree of hardlinks to it (a copy for a developer's own tree), so one
unpacked source serves every config built from it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base import process
from kpatchbuild.base.commands import run_step, say
from kpatchbuild.base.errors import BuildError, FetchError, RecipeError
from kpatchbuild.base.store import Store, content_key, sha256_file
from kpatchbuild.graph.recipe import SourceSpec
from kpatchbuild.stages.fetch import debian


@dataclass(frozen=True)
class SourceTree:
    path: Path
    key: str  # stands for the tree's content
    origin: dict  # what it came from, recorded in every manifest built on it

    @property
    def in_store(self) -> bool:
        """Unpacked into the store (ours to hardlink), not a developer's own tree."""
        return "tree" not in self.origin


def unpack_tarball(store: Store, tarball: Path, key: str, origin: dict) -> SourceTree:
    """Unpack a kernel tarball once into the store; its single top directory is the tree."""
    def unpack(work: Path) -> None:
        say(f"  unpacking {tarball.name}")
        log = store.log_path(f"fetch-unpack-{key[:12]}")
        run_step(["tar", *_decompressor(tarball), "-xf", tarball, "-C", work],
                 step=f"unpack {tarball.name}", log=log)
        tops = [p for p in work.iterdir() if p.is_dir()]
        if len(tops) != 1 or not (tops[0] / "Makefile").is_file():
            raise FetchError(f"{tarball}: expected one kernel source directory at the top "
                             f"of the tarball, found {', '.join(p.name for p in tops)}")
        os.rename(tops[0], work / "tree")

    artifact = store.make("fetch-source", key, {"origin": origin}, unpack)
    return SourceTree(artifact.path / "tree", key, origin)


def _decompressor(tarball: Path) -> list[str]:
    """tar's options to decompress ``tarball`` on every core where the format allows it.

    Debian's kernel tarballs are xz in blocks of 24 MiB, which xz decompresses in parallel
    only when asked (5.4 defaults to one thread): 13 s instead of 17 s for 6.1's 1.3 GB.
    """
    if tarball.name.endswith((".tar.xz", ".txz")):
        return ["--use-compress-program=xz -T0"]
    return []


def tree_fingerprint(tree: Path) -> str:
    """A cheap fingerprint of a local tree (paths, sizes, mtimes), ignoring VCS metadata."""
    entries = []
    for directory, subdirs, files in os.walk(tree):
        subdirs[:] = sorted(d for d in subdirs if d not in (".git", ".hg"))
        for name in sorted(files):
            stat = os.lstat(os.path.join(directory, name))
            entries.append((os.path.relpath(os.path.join(directory, name), tree),
                            stat.st_size, stat.st_mtime_ns))
    return content_key("tree", entries)


def debian_source_tree(store: Store, package: debian.DebianPackage) -> SourceTree:
    """The pristine tree of a ``linux-source-X.Y`` package, fetched and unpacked once."""
    tarball = debian.source_tarball(store, package)
    origin = {"debian": package.name, "version": package.version, "sha256": package.sha256}
    key = content_key(debian.DEBIAN_SOURCE_KIND, package.sha256)
    return unpack_tarball(store, tarball, key, origin)


def obtain_source(store: Store, spec: SourceSpec, where: str) -> SourceTree:
    """The pristine tree for ``spec``; ``where`` names the recipe key for error messages."""
    if spec.kind == "debian":
        assert spec.package is not None and spec.release is not None
        return debian_source_tree(store, debian.source_package(store, spec.package,
                                                               spec.version, spec.release))
    if spec.kind == "tarball":
        assert spec.path is not None and spec.sha256 is not None
        actual = sha256_file(spec.path)
        if actual != spec.sha256:
            raise RecipeError(f"{where}: tarball {spec.path} has sha256 {actual}, the recipe says "
                              f"{spec.sha256}; fix the recipe if the tarball is the one you meant")
        origin = {"tarball": str(spec.path), "sha256": actual}
        return unpack_tarball(store, spec.path, content_key("tarball", actual), origin)
    assert spec.path is not None
    if (spec.path / ".config").exists() or (spec.path / "include/config").exists():
        raise RecipeError(f"{where}: tree {spec.path} is configured or built in place; builds "
                          "use it read-only with O=, so run 'make mrproper' in it first")
    return SourceTree(spec.path, tree_fingerprint(spec.path), {"tree": str(spec.path)})


def copy_tree(source: Path, dest: Path) -> None:
    """A private, writable copy of a source tree (reflinked where the filesystem can)."""
    dest.mkdir(parents=True, exist_ok=True)
    process.run(["cp", "-a", "--reflink=auto", f"{source}/.", dest], error=FetchError,
                what=f"copying {source} to {dest}")
    shutil.rmtree(dest / ".git", ignore_errors=True)


def link_tree(source: Path, dest: Path, *, copy_unshared: bool = False,
              built_in: Path | None = None, lives_at: Path | None = None) -> None:
    """A tree of hardlinks to ``source``'s files: 2 s where a copy of 1.5 GB takes 20.

    Safe because kbuild never writes into pristine source files, and the steps here that
    edit sources or recompile existing objects unlink first. But kbuild does rewrite, in
    place, files an earlier build generated (dependency files, tool records): with
    ``copy_unshared`` those, the files ``source`` does not share with any other tree (one
    link), are copied, and only what ``source`` itself links from a pristine tree is linked.
    :func:`no_write_through` checks around every make that runs in such a tree. Across
    filesystems (a cache split over mounts) it falls back to a copy.

    ``built_in`` is where ``source``'s build ran (a temp directory, before it was published
    by rename). The host tools' build (objtool, resolve_btfids) records its commands with
    absolute paths, so in a tree at another path every make would rebuild them first (6 s of
    each first compile); their records are rewritten for ``lives_at``, where ``dest`` is
    renamed to once made (``dest`` itself by default).
    """
    own: list[str] = []
    if copy_unshared:
        own = process.run(["find", ".", "-type", "f", "-links", "1"], cwd=source,
                          error=FetchError, what=f"listing {source}").stdout.splitlines()
    dest.mkdir(parents=True, exist_ok=True)
    linked = process.run(["cp", "-al", f"{source}/.", dest], error=FetchError,
                         what=f"linking {source} into {dest}",
                         succeeded=lambda r: r.returncode == 0 or "cross-device" in r.stderr)
    if linked.returncode != 0:
        shutil.rmtree(dest)
        copy_tree(source, dest)
        return
    for rel in own:
        (dest / rel).unlink()
        if built_in is not None and rel.endswith(_RECORD_SUFFIXES):
            _relocate_record(source / rel, dest / rel, built_in, lives_at or dest)
        else:
            shutil.copy2(source / rel, dest / rel)
    shutil.rmtree(dest / ".git", ignore_errors=True)


# kbuild's and the tools' records of how a file was made and what it was made from.
_RECORD_SUFFIXES = (".cmd", ".d")


def _relocate_record(source: Path, dest: Path, old_root: Path, new_root: Path) -> None:
    """Copy a build record, naming ``new_root`` where it named ``old_root``; same mtime, so
    make still finds what it describes up to date."""
    text = source.read_bytes()
    dest.write_bytes(text.replace(os.fsencode(old_root), os.fsencode(new_root)))
    shutil.copystat(source, dest)


def private_tree(source: SourceTree, dest: Path) -> None:
    """A writable tree of ``source`` at ``dest``: linked from the store, copied otherwise."""
    (link_tree if source.in_store else copy_tree)(source.path, dest)


def written_through(tree: Path, since_ns: int) -> list[str]:
    """Files of ``tree`` shared with another tree (hardlinks) whose content changed since.

    A write updates both mtime and ctime; ``find -newer`` narrows the search to changed
    mtimes in C, and the ctime check drops files merely dated in the future.
    """
    with tempfile.NamedTemporaryFile(prefix="kpb-since-") as marker:
        os.utime(marker.name, ns=(since_ns, since_ns))
        found = process.run(["find", tree, "-type", "f", "-links", "+1", "-newer",
                             marker.name], what=f"looking for files written through in {tree}")
    changed = []
    for line in found.stdout.splitlines():
        try:
            if os.stat(line).st_ctime_ns > since_ns:
                changed.append(os.path.relpath(line, tree))
        except FileNotFoundError:
            continue
    return sorted(changed)


def _filesystem_now_ns() -> int:
    """The time file systems stamp now: their clock is coarse (ticks of a few ms) and lags
    time.time_ns(), so a write right after a time.time_ns() reading may look older."""
    with tempfile.NamedTemporaryFile(prefix="kpb-now-") as probe:
        return os.fstat(probe.fileno()).st_mtime_ns


@contextmanager
def no_write_through(tree: Path, *, what: str, on_damage: Callable[[], None]) -> Iterator[None]:
    """Run ``what`` in a hardlinked ``tree``; if it wrote into a shared file, undo the harm.

    The shared files belong to cached trees other builds trust, so ``on_damage`` removes
    them from the cache (they are made again on the next run) before the error is raised.
    """
    since = _filesystem_now_ns() - 1  # a write in this same clock tick counts
    yield
    changed = written_through(tree, since)
    if changed:
        on_damage()
        raise BuildError(f"{what} wrote into {len(changed)} file(s) shared with the cache "
                         f"({', '.join(changed[:3])}); the damaged trees were removed from "
                         "the cache and will be made again: run the build again")
