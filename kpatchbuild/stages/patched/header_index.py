"""Which objects a prepared Debian tree builds from which files, without building it.

A built kernel knows what every object was compiled from: kbuild's ``.*.o.cmd`` records.
A Debian kernel was never built here, so a patch to a header cannot say which objects
include it. This index finds out exactly, and cheaply: kbuild runs over the whole tree as
for a full build, but every kernel C file is only *preprocessed*, directives only
(``-E -fdirectives-only``: a twentieth of a compile), with kbuild's own ``-Wp,-MMD``
dependency output and its records. What the
preprocessor read is what the compiler would have read, conditionals and computed includes
included, so no includer is missed; the records also hold the exact command of each
object, so a first compile of it is a replay rather than a 4 s ``make path/file.o``.

How: a ``gcc`` first on PATH (on the host or in the target's build root, whichever holds its
compiler) passes every command through to the real compiler except
kernel compiles (``-D__KERNEL__ ... -c ... file.c``), which it preprocesses, then gives an
empty object compiled with the same flags, so objtool and everything after a compile run as
usual; the records still say ``gcc``, as a real build's do. The final links fail (modpost
finds no module licence in empty objects), so make runs with ``-k`` and its error lines are
read back: a failed target that has a C file of its own is a real failure and refuses the
index, naming it.

Built once per original stage, in a temp tree of hardlinks, and published by rename.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base import kbuild
from kpatchbuild.base.commands import HOST, Runner, format_elapsed, run_step, say
from kpatchbuild.base.errors import BuildError
from kpatchbuild.base.store import Store, content_key
from kpatchbuild.stages.fetch.source import link_tree, no_write_through
from kpatchbuild.stages.original.original import STORE_KIND, OriginalStage

# Bumped when what the index holds or how it is made changes.
INDEX_FORMAT = 1
INDEX_KIND = "patched-header-index"  # its store kind: the patched stage uses it
RECORDS = "records.json"

_PREPROCESSING_GCC = r"""#!/bin/sh
# kpatchbuild's header index (see header_index.py): a kernel C compile is preprocessed,
# directives only (every #if and #include as the compiler sees them, no macro expansion of
# the text), writing kbuild's -Wp,-MMD dependency file as usual; its object is an empty one
# made with the same flags, which objtool, nm and the linkers after it accept.
# The real gcc: the next one on PATH after this script's own directory.
real=$(here=${0%/*}; IFS=:
       for dir in $PATH; do
           [ "$dir" != "$here" ] && [ -x "$dir/gcc" ] && { echo "$dir/gcc"; break; }
       done)
[ -n "$real" ] || { echo "header index: no gcc on PATH after ${0%/*}" >&2; exit 127; }
for last; do :; done
case " $* " in *" -D__KERNEL__ "*) ;; *) exec "$real" "$@" ;; esac
case " $* " in *" -c "*) ;; *) exec "$real" "$@" ;; esac
case "$last" in *.c) [ -f "$last" ] || exec "$real" "$@" ;; *) exec "$real" "$@" ;; esac
out= skip= first=1
for arg; do
    [ -n "$first" ] && set -- && first=
    if [ -n "$skip" ]; then out=$arg skip=; continue; fi
    case "$arg" in -o) skip=1; continue ;; esac
    set -- "$@" "$arg"
done
[ -n "$out" ] || exit 2
"$real" "$@" -E -fdirectives-only -o /dev/null || exit
first=1
for arg; do
    [ -n "$first" ] && set -- && first=
    case "$arg" in -Wp,-MMD,*|-Wp,-MD,*) continue ;; esac
    [ "$arg" = "$last" ] && continue
    set -- "$@" "$arg"
done
exec "$real" "$@" -x c /dev/null -o "$out"
"""
# make -k's report of a target whose recipe failed: make[3]: *** [scripts/...:250: fs/a.o] Error 1
_FAILED_TARGET = re.compile(r"^make(?:\[\d+\])?: \*\*\* \[[^\]]*?:\d+: ([^\]]+)\] Error \d+$",
                            re.MULTILINE)
# Where links of empty objects are expected to fail: code linked apart with linker scripts
# or checks that want real code (realmode, purgatory, boot, vdso; none is live-patchable),
# and the kernel's and modules' final links.
_LINKED_APART = ("arch/x86/realmode/", "arch/x86/purgatory/", "arch/x86/boot/",
                 "arch/x86/entry/vdso/")
_FINAL_LINKS = re.compile(r"^(vmlinux(\.[ao])?|\.vmlinux\.\S+|\S+\.ko|\S*modules\S*\.order|"
                          r"\S*Module\.symvers|\S*modules-only\.symvers)$")


@dataclass(frozen=True)
class HeaderIndex:
    """Per object (``fs/proc/base.o``): kbuild's command for it and every file it reads."""

    records: dict[str, kbuild.ObjectRecord]


def index_key(stage: OriginalStage) -> str:
    return content_key(INDEX_KIND, INDEX_FORMAT, stage.key, kbuild.KCFLAGS)


def load_index(store: Store, stage: OriginalStage) -> HeaderIndex | None:
    """The stage's index if it was built, else None."""
    artifact = store.lookup(INDEX_KIND, index_key(stage))
    if artifact is None:
        return None
    data = json.loads((artifact.path / RECORDS).read_text())
    paths = data["paths"]
    return HeaderIndex({obj: kbuild.ObjectRecord(obj, entry["command"],
                                                 tuple(paths[i] for i in entry["sources"]))
                        for obj, entry in data["objects"].items()})


def build_index(store: Store, stage: OriginalStage, *, label: str,
                runner: Runner = HOST) -> HeaderIndex:
    """The stage's index, made once (a preprocessing pass over every object the config
    builds: minutes, with progress) and then read from the store. ``runner`` is where the
    stage's compiler is (the host, or its build root)."""
    found = load_index(store, stage)
    if found is not None:
        return found
    key = index_key(stage)
    log = store.log_path(f"patched-header-index-{label}")
    log.unlink(missing_ok=True)
    say(f"  indexing which objects include which headers in {stage.release} (every object "
        f"preprocessed once, cached for this kernel); log: {log}")
    with store.publishing(INDEX_KIND, key, {"stage": stage.key,
                                                "release": stage.release}) as work:
        tree = work / "tree"
        link_tree(stage.tree, tree, copy_unshared=True, built_in=stage.built_in)
        # A full-tree make in a tree of links to the stage: it must not write through.
        with no_write_through(tree, what=f"{label}: the header index pass",
                              on_damage=lambda: store.discard(STORE_KIND, stage.key)):
            records, seconds = _preprocess_everything(tree, work / "bin", label=label, log=log,
                                                      runner=runner)
        write_records(work / RECORDS, records)
        shutil.rmtree(tree)
        shutil.rmtree(work / "bin")
        say(f"  indexed {len(records)} objects of {stage.release} in {format_elapsed(seconds)}")
    index = load_index(store, stage)
    assert index is not None
    return index


def _preprocess_everything(tree: Path, bin_dir: Path, *, label: str, log: Path,
                           runner: Runner) -> tuple[dict[str, kbuild.ObjectRecord], float]:
    install_preprocessing_gcc(bin_dir)
    started = time.monotonic()
    # The links fail by design (check=False): which targets failed is read from the log below.
    # PATH is set by the command itself: a build root starts its commands with a clean one.
    run_step(["env", f"PATH={searched_path(bin_dir, runner)}",
              *kbuild.make_command(tree, "-k", "vmlinux", "modules")],
             step=f"{label}: header index (make -k, preprocessing only)", log=log,
             check=False, runner=runner)
    seconds = time.monotonic() - started
    output = log.read_text(errors="replace")  # this pass's alone: build_index starts it anew
    unexpected = unexpected_failures(failed_targets(output), tree)
    if unexpected:
        raise BuildError(f"{label}: the header index pass failed at {', '.join(unexpected[:3])}"
                         f"{' and more' if len(unexpected) > 3 else ''}: objects after it may "
                         f"not have been preprocessed, and their includes would be missed; "
                         f"log: {log}")
    records = {obj: record for obj, record in kbuild.object_records(tree).items()
               if obj.endswith(".o")}
    if not records:
        raise BuildError(f"{label}: the header index found no compiled object; log: {log}")
    return records, seconds


def failed_targets(make_output: str) -> list[str]:
    """The targets whose recipes make -k reports failed, in its order."""
    return _FAILED_TARGET.findall(make_output)


def unexpected_failures(failed: list[str], tree: Path) -> list[str]:
    """The failed make targets a preprocessing pass does not explain: anything but the
    links of empty objects (see _LINKED_APART, _FINAL_LINKS) and the directories whose
    sub-makes report them. A failed compile, or a generated file that could not be made
    (and kept the objects that need it from being preprocessed), is one."""
    return [target for target in dict.fromkeys(failed)
            if not (target == "." or (tree / target).is_dir()
                    or target.startswith(_LINKED_APART) or _FINAL_LINKS.match(target))]


# A build root's commands see only its own system directories.
_BUILD_ROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def searched_path(bin_dir: Path, runner: Runner) -> str:
    """PATH for the pass: the preprocessing ``gcc`` first, then where ``runner``'s real
    compiler is."""
    rest = os.environ.get("PATH", _BUILD_ROOT_PATH) if runner is HOST else _BUILD_ROOT_PATH
    return f"{bin_dir}{os.pathsep}{rest}"


def install_preprocessing_gcc(bin_dir: Path) -> None:
    """Put the preprocessing ``gcc`` in ``bin_dir``; it runs the next ``gcc`` on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    _write_executable(bin_dir / "gcc", _PREPROCESSING_GCC)


def write_records(path: Path, records: dict[str, kbuild.ObjectRecord]) -> None:
    """The index's file; paths shared by many objects (every kernel header) stored once."""
    paths: dict[str, int] = {}
    objects = {}
    for obj, record in sorted(records.items()):
        objects[obj] = {"command": record.command,
                        "sources": [paths.setdefault(p, len(paths)) for p in record.sources]}
    path.write_text(json.dumps({"paths": list(paths), "objects": objects}))


def _write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
