"""The records that link the steps of one recipe on one target, as typed values.

Each step writes one small JSON file under ``<cache>/work/<recipe>/<target>/`` and the
later steps read it back; doit tracks these files by content. Read as dicts, a renamed key
fails far from where it was written; here each record is a frozen dataclass with its own
``to_json``/``from_json``, and every file carries the record's format, which the reader
checks, so a record written by another version of kpatchbuild is named, never misread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from kpatchbuild.base.errors import BuildError
from kpatchbuild.base.store import write_atomically
from kpatchbuild.stages.diff.objdiff import DiffFiles
from kpatchbuild.stages.fetch.debian import KernelRelease
from kpatchbuild.stages.fetch.source import SourceTree
from kpatchbuild.stages.patched.patched import ObjectPair

__all__ = [
    "DiffRecord",
    "FetchRecord",
    "ModuleRecord",
    "ObjectDiffRecord",
    "OriginalRecord",
    "PatchedRecord",
    "PatchesRecord",
    "ProveRecord",
    "read_record",
    "write_record",
]


class Record(Protocol):
    FORMAT: ClassVar[int]

    def to_json(self) -> dict[str, Any]: ...

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any: ...


R = TypeVar("R", bound=Record)


def write_record(path: Path, record: Record) -> None:
    """The record as JSON, with its format, published by rename."""
    data = {"format": record.FORMAT, **record.to_json()}
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_record(path: Path, kind: type[R]) -> R:
    """The record in ``path``, checked to be of the format this kpatchbuild writes."""
    data = json.loads(path.read_text())
    found = data.pop("format", None)
    if found != kind.FORMAT:
        raise BuildError(f"{path}: a {kind.__name__} of format {found}, this kpatchbuild "
                         f"reads format {kind.FORMAT}; remove it (or the cache) and build again")
    record: R = kind.from_json(data)
    return record


# Every record's format, for the tasks' up-to-date checks: a new format rewrites the records.
def formats() -> dict[str, int]:
    return {kind.__name__: kind.FORMAT for kind in (
        FetchRecord, OriginalRecord, PatchesRecord, PatchedRecord, ObjectDiffRecord,
        DiffRecord, ModuleRecord, ProveRecord)}


def _refused(data: dict[str, Any]) -> str | None:
    refused = data.get("refused")
    return str(refused) if refused is not None else None


@dataclass(frozen=True)
class FetchRecord:
    """What fetch found: the pristine source, and for a Debian kernel its release and files."""

    FORMAT: ClassVar[int] = 1

    kind: str  # "debian" or "built"
    source: SourceTree
    kernel: KernelRelease | None = None
    files: Path | None = None  # Debian's config, System.map, vmlinux.symbols, vmlinuz...
    # The release fetched before this one, when Debian moved on since (the report says so).
    previous_release: str | None = None

    def debian_files(self) -> Path:
        assert self.files is not None, "a built kernel's files are in its original stage"
        return self.files

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "source": {
            "path": str(self.source.path), "key": self.source.key, "origin": self.source.origin}}
        if self.kernel is not None:
            data["kernel"] = self.kernel.to_json()
        if self.files is not None:
            data["files"] = str(self.files)
        if self.previous_release is not None:
            data["previous_release"] = self.previous_release
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FetchRecord:
        source = data["source"]
        return cls(data["kind"], SourceTree(Path(source["path"]), source["key"], source["origin"]),
                   KernelRelease.from_json(data["kernel"]) if "kernel" in data else None,
                   Path(data["files"]) if "files" in data else None,
                   data.get("previous_release"))


@dataclass(frozen=True)
class OriginalRecord:
    """The original stage the target's patches are built against."""

    FORMAT: ClassVar[int] = 1

    kind: str  # "prepared" or "built"
    key: str
    path: Path
    release: str
    compiler: str = ""  # what compiles the target's objects (gcc --version's first line)
    compiler_override: str | None = None  # the recipe's accept_compiler, in words

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "path": str(self.path),
                "release": self.release, "compiler": self.compiler,
                "compiler_override": self.compiler_override}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OriginalRecord:
        # Records written before the compiler was recorded read as not saying it.
        return cls(data["kind"], data["key"], Path(data["path"]), data["release"],
                   data.get("compiler", ""), data.get("compiler_override"))


@dataclass(frozen=True)
class PatchesRecord:
    """The patches, checked to apply, and the files they touch; or, for a target the recipe
    marks not-applicable, why they do not apply (``not_applicable``: how they failed)."""

    FORMAT: ClassVar[int] = 2

    patches: tuple[str, ...]
    strip: int | None
    touched: tuple[str, ...]
    not_applicable: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"patches": list(self.patches), "strip": self.strip,
                "touched": list(self.touched), "not_applicable": self.not_applicable}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PatchesRecord:
        return cls(tuple(data["patches"]), data["strip"], tuple(data["touched"]),
                   data["not_applicable"])


@dataclass(frozen=True)
class PatchedRecord:
    """Every object the patches touch, compiled before and after."""

    FORMAT: ClassVar[int] = 1

    objects: tuple[ObjectPair, ...]

    def changed(self) -> list[ObjectPair]:
        """The pairs whose bytes differ: one diff each."""
        return [pair for pair in self.objects if not pair.identical]

    def to_json(self) -> dict[str, Any]:
        return {"objects": [pair.to_json() for pair in self.objects]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PatchedRecord:
        return cls(tuple(ObjectPair(**pair) for pair in data["objects"]))


def _diff_files(data: dict[str, Any]) -> DiffFiles:
    return DiffFiles(data["object"], data["target"], Path(data["report"]),
                     Path(data["output"]) if data["output"] else None)


@dataclass(frozen=True)
class ObjectDiffRecord:
    """One object's diff, or the refusal the recipe expects."""

    FORMAT: ClassVar[int] = 1

    diff: DiffFiles | None = None
    refused: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.diff is None:
            return {"refused": self.refused}
        return {"diff": self.diff.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ObjectDiffRecord:
        return cls(_diff_files(data["diff"]) if "diff" in data else None, _refused(data))


@dataclass(frozen=True)
class DiffRecord:
    """The target's diffs, which the module links; or the one refusal the recipe expects."""

    FORMAT: ClassVar[int] = 1

    diffs: tuple[DiffFiles, ...] = ()
    refused: str | None = None

    def with_code(self) -> list[DiffFiles]:
        """The diffs that carry a patch object (the others changed only line numbers)."""
        return [diff for diff in self.diffs if diff.output is not None]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"diffs": [diff.to_json() for diff in self.diffs]}
        if self.refused is not None:
            data["refused"] = self.refused
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DiffRecord:
        return cls(tuple(_diff_files(d) for d in data["diffs"]), _refused(data))


@dataclass(frozen=True)
class ModuleRecord:
    """The linked module, with its release and hash (a relinked module is proven again)."""

    FORMAT: ClassVar[int] = 1

    module: Path | None = None
    release: str = ""
    log: Path | None = None
    xxh3: str = ""
    refused: str | None = None
    # Who signed it (signer, hash, key_id, certificate_sha256), verified against the
    # certificate; None: unsigned, and ``unsigned`` says why.
    signature: dict[str, str | None] | None = None
    unsigned: str | None = None
    certificate: Path | None = None  # the signer's certificate, for the proof and packages

    def to_json(self) -> dict[str, Any]:
        if self.refused is not None:
            return {"refused": self.refused}
        return {"module": str(self.module), "release": self.release, "log": str(self.log),
                "xxh3": self.xxh3, "signature": self.signature, "unsigned": self.unsigned,
                "certificate": str(self.certificate) if self.certificate else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModuleRecord:
        if "refused" in data:
            return cls(refused=data["refused"])
        certificate = data.get("certificate")
        return cls(Path(data["module"]), data["release"], Path(data["log"]), data["xxh3"],
                   signature=data.get("signature"), unsigned=data.get("unsigned"),
                   certificate=Path(certificate) if certificate else None)

    def linked(self) -> Path:
        assert self.module is not None, "an expected refusal links no module"
        return self.module


@dataclass(frozen=True)
class ProveRecord:
    """What the proof under qemu did, step by step."""

    FORMAT: ClassVar[int] = 1

    module: Path | None = None
    console_log: Path | None = None
    steps: tuple[str, ...] = ()
    checked: bool = False
    elapsed: float = 0.0
    accel: str = ""
    refused: str | None = None
    # How the module's signature was proven: checked by the kernel under
    # module.sig_enforce=1, or verified offline against the certificate; None: unsigned.
    signature: str | None = None
    # Under module.sig_enforce=1, the copies the kernel refused, each as the one line a
    # user would read.
    refusals: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        if self.refused is not None:
            return {"refused": self.refused}
        return {"module": str(self.module), "console_log": str(self.console_log),
                "steps": list(self.steps), "checked": self.checked, "elapsed": self.elapsed,
                "accel": self.accel, "signature": self.signature,
                "refusals": list(self.refusals)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProveRecord:
        if "refused" in data:
            return cls(refused=data["refused"])
        return cls(Path(data["module"]), Path(data["console_log"]), tuple(data["steps"]),
                   data["checked"], data["elapsed"], data["accel"],
                   signature=data.get("signature"), refusals=tuple(data.get("refusals", ())))
