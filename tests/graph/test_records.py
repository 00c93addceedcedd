"""The records between steps: typed, round-tripped, and refused when of another format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpatchbuild.base.errors import BuildError
from kpatchbuild.graph.records import (
    DiffRecord,
    FetchRecord,
    ModuleRecord,
    ObjectDiffRecord,
    OriginalRecord,
    PatchedRecord,
    PatchesRecord,
    ProveRecord,
    formats,
    read_record,
    write_record,
)
from kpatchbuild.stages.diff.objdiff import DiffFiles
from kpatchbuild.stages.fetch.debian import DebianPackage, KernelRelease
from kpatchbuild.stages.fetch.source import SourceTree
from kpatchbuild.stages.patched.patched import ObjectPair

SOURCE = SourceTree(Path("/cache/fetch-source/k"), "k", {"debian": "linux-source-6.1"})
PAIRS = (ObjectPair("fs/proc/cmdline.o", "vmlinux", "/o/cmdline.o", "/p/cmdline.o", False),
         ObjectPair("fs/proc/array.o", "vmlinux", "/o/array.o", "/p/array.o", True))
WRITTEN = DiffFiles("fs/proc/cmdline.o", "vmlinux", Path("/d/r.json"), Path("/d/out.o"))
LINES_ONLY = DiffFiles("fs/proc/base.o", "vmlinux", Path("/d/b.json"), None)

RECORDS = [
    FetchRecord("built", SOURCE),
    OriginalRecord("prepared", "k2", Path("/cache/original/k2"), "6.1.0-57-cloud-amd64"),
    PatchesRecord(("a.patch", "b.patch"), 1, ("fs/proc/cmdline.c",)),
    PatchedRecord(PAIRS),
    ObjectDiffRecord(WRITTEN),
    ObjectDiffRecord(refused="fs/proc/cmdline.o: cannot live-patch: ..."),
    DiffRecord((WRITTEN, LINES_ONLY)),
    DiffRecord(refused="drivers/char/mem.o: cannot live-patch: ..."),
    ModuleRecord(Path("/w/livepatch_cmdline.ko"), "6.1.0-57-cloud-amd64", Path("/l.log"), "ab"),
    ModuleRecord(refused="drivers/char/mem.o: ..."),
    ProveRecord(Path("/w/m.ko"), Path("/w/prove/console.log"), ("mount", "insmod"), True,
                2.5, "tcg"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_a_record_reads_back_as_written(record: object, tmp_path: Path) -> None:
    write_record(tmp_path / "r.json", record)  # type: ignore[arg-type]
    assert read_record(tmp_path / "r.json", type(record)) == record  # type: ignore[type-var]
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["format"] == type(record).FORMAT  # type: ignore[attr-defined]


def test_a_debian_fetch_keeps_its_release_and_files(tmp_path: Path) -> None:
    image = DebianPackage("linux-image-6.1.0-57-cloud-amd64", "6.1.192-3", "ab" * 32,
                          "linux-image-6.1.0-57-cloud-amd64_6.1.192-3_amd64.deb")
    kernel = KernelRelease("6.1.0-57-cloud-amd64", "6.1.192-3", {"image": image})
    record = FetchRecord("debian", SOURCE, kernel, Path("/cache/fetch-kernel/k"))
    write_record(tmp_path / "fetch.json", record)
    back = read_record(tmp_path / "fetch.json", FetchRecord)
    assert back.kernel == kernel and back.debian_files() == Path("/cache/fetch-kernel/k")


def test_a_record_of_another_format_is_named_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "patched.json"
    path.write_text(json.dumps({"objects": []}))  # written before records had a format
    with pytest.raises(BuildError, match=r"patched.json: a PatchedRecord of format None, this "
                       r"kpatchbuild reads format 1; remove it \(or the cache\) and build again"):
        read_record(path, PatchedRecord)


def test_the_changed_pairs_and_the_diffs_with_code() -> None:
    assert PatchedRecord(PAIRS).changed() == [PAIRS[0]]
    assert DiffRecord((WRITTEN, LINES_ONLY)).with_code() == [WRITTEN]


def test_every_record_has_its_format_in_the_tasks_fingerprint() -> None:
    assert set(formats()) == {type(r).__name__ for r in RECORDS}
