"""Kernel source: a Debian source package, a checked tarball or a local tree -> a pristine tree.

The pristine tree is only ever read: configuration runs with ``O=`` into a scratch directory
and builds run in a copy, so one unpacked source serves every config built from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild import debian
from kpatchbuild.errors import FetchError, RecipeError
from kpatchbuild.recipe import SourceSpec
from kpatchbuild.steps import run_step, say
from kpatchbuild.store import Store, content_key, sha256_file


@dataclass(frozen=True)
class SourceTree:
    path: Path
    key: str  # stands for the tree's content
    origin: dict  # what it came from, recorded in every manifest built on it


def unpack_tarball(store: Store, tarball: Path, key: str, origin: dict) -> SourceTree:
    """Unpack a kernel tarball once into the store; its single top directory is the tree."""
    artifact = store.lookup("source", key)
    if not artifact:
        say(f"  unpacking {tarball.name}")
        log = store.log_path(f"unpack-{key[:12]}")
        with store.publishing("source", key, {"origin": origin}) as work:
            run_step(["tar", "-xf", tarball, "-C", work], step=f"unpack {tarball.name}", log=log)
            tops = [p for p in work.iterdir() if p.is_dir()]
            if len(tops) != 1 or not (tops[0] / "Makefile").is_file():
                raise FetchError(f"{tarball}: expected one kernel source directory at the top "
                                 f"of the tarball, found {', '.join(p.name for p in tops)}")
            os.rename(tops[0], work / "tree")
        artifact = store.lookup("source", key)
        assert artifact is not None
    return SourceTree(artifact.path / "tree", key, origin)


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
    return unpack_tarball(store, tarball, content_key("debian-source", package.sha256), origin)


def obtain_source(store: Store, spec: SourceSpec, where: str) -> SourceTree:
    """The pristine tree for ``spec``; ``where`` names the recipe key for error messages."""
    if spec.kind == "debian":
        assert spec.package is not None
        return debian_source_tree(store, debian.source_package(spec.package, spec.version))
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
    """A private, writable copy of a source tree (reflinked where the filesystem can).

    Hardlinks would be cheaper but unsafe: compilers truncate and rewrite outputs in place,
    which would write through to the pristine tree.
    """
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["cp", "-a", "--reflink=auto", f"{source}/.", str(dest)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise FetchError(f"copying {source} to {dest} failed: {result.stderr.strip()}")
    shutil.rmtree(dest / ".git", ignore_errors=True)
