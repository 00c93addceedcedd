"""Content-addressed artifacts: every output lives under a key hashed from its inputs.

An artifact is a directory ``<root>/<kind>/<key>/``. It is built in ``<root>/tmp/`` and
published by one ``rename``, so a directory under its key is complete by construction: an
interrupted build (Ctrl-C, kill -9, power loss) leaves only a temp directory, which the next
run sweeps away and redoes. The diskcache index records what each artifact was made from, so
``kpatchbuild`` can tell what a key stands for without reading the artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
import xxhash

from kpatchbuild.base import locks
from kpatchbuild.base.errors import BuildError

CACHE_ENV = "KPATCHBUILD_CACHE"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def default_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or PROJECT_ROOT / "cache").resolve()


def content_key(*parts: Any) -> str:
    """xxh3-128 over a canonical JSON of ``parts``: equal inputs, equal key, across runs."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return xxhash.xxh3_128_hexdigest(text.encode())


def _digest_file(path: Path, digest: Any) -> str:
    """Feed a file to ``digest`` in chunks, so big packages and trees stay out of memory."""
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_hash(path: Path) -> str:
    """xxh3-128 of a file's contents: the store's content key for a file."""
    return _digest_file(path, xxhash.xxh3_128())


def sha256_file(path: Path) -> str:
    """sha256 of a file: what Debian's index and recipes give for packages and tarballs."""
    return _digest_file(path, hashlib.sha256())


@dataclass(frozen=True)
class Artifact:
    kind: str
    key: str
    path: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text())


class Store:
    """The artifact store rooted at ``root`` (``cache/`` unless KPATCHBUILD_CACHE says)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = private_directory(Path(root) if root else default_root())
        self.tmp = self.root / "tmp"
        self.logs = self.root / "logs"
        self.tmp.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self._index: diskcache.Index | None = None

    @property
    def index(self) -> diskcache.Index:
        """Metadata by key; opened lazily since most runs only look up paths."""
        if self._index is None:
            self._index = diskcache.Index(str(self.root / "index"))
        return self._index

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def lookup(self, kind: str, key: str) -> Artifact | None:
        path = self.path(kind, key)
        return Artifact(kind, key, path) if (path / MANIFEST).is_file() else None

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    @contextmanager
    def publishing(self, kind: str, key: str, manifest: dict[str, Any]) -> Iterator[Path]:
        """Yield an empty temp directory; on clean exit, publish it as ``kind/key``.

        The manifest is written last, inside the temp directory, and the directory renamed:
        no reader ever sees an artifact without its manifest. On an exception the temp
        directory is removed (the step's log, kept under ``logs/``, says what happened).
        """
        self.sweep_stale_temps()
        # The thread too: two threads of one `doit -n N` run may build the same key.
        work = self.tmp / f"{kind}-{key}-{threading.get_ident()}-{os.getpid()}"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        try:
            yield work
            record = dict(manifest, kind=kind, key=key, created=time.time())
            (work / MANIFEST).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            final = self.path(kind, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(work, final)
            except OSError:
                if not (final / MANIFEST).is_file():
                    raise
                # Another process published the same key first: same inputs, same artifact.
                shutil.rmtree(work, ignore_errors=True)
            self.index[(kind, key)] = record
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def make(self, kind: str, key: str, manifest: dict[str, Any],
             build: Callable[[Path], None]) -> Artifact:
        """The artifact ``kind/key``, built by ``build(work_dir)`` if it is not there yet.

        One builder at a time per key, across threads and processes: cells of different
        recipes on one kernel fetch the same packages at once under ``doit -n N``, and the
        second must wait for the first's artifact rather than download 800 MB again.
        ``manifest`` may be filled in by ``build`` before it returns.
        """
        found = self.lookup(kind, key)
        if found:
            return found
        with locks.exclusive(self.root / "locks" / "store" / f"{kind}-{key}.lock"):
            found = self.lookup(kind, key)
            if found:
                return found
            with self.publishing(kind, key, manifest) as work:
                build(work)
        made = self.lookup(kind, key)
        assert made is not None
        return made

    def discard(self, kind: str, key: str) -> None:
        """Remove a published artifact found damaged; its manifest goes first, so no reader
        trusts what is left if the removal is interrupted."""
        path = self.path(kind, key)
        (path / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
        self.index.pop((kind, key), None)

    def sweep_stale_temps(self) -> None:
        """Remove temp directories whose building process is gone (killed mid-build)."""
        for entry in self.tmp.iterdir():
            pid = entry.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _process_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)

    def remember(self, name: tuple[str, ...], value: Any) -> Any:
        """Record a small value (a resolution, a hash) and return what was there before."""
        previous = self.index.get(name)
        self.index[name] = value
        return previous

    def recall(self, name: tuple[str, ...]) -> Any:
        return self.index.get(name)


def private_directory(root: Path) -> Path:
    """``root``, made 0700 if it is not there; refused when someone else could write it.

    The cache is a trust boundary: it holds what gets packaged and shipped to machines that
    load it as root, build commands replayed through a shell, and a diskcache index that is
    unpickled; whoever can write it decides all three.
    """
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(root, 0o700)
            os.chmod(root, 0o700)  # whatever the umask
        except FileExistsError:
            pass  # another process made it meanwhile: checked below like any other
    status = os.stat(root)
    fix = f"use a cache of your own (${CACHE_ENV}=DIR)"
    if status.st_uid != os.geteuid():
        raise BuildError(f"{root}: the cache is owned by uid {status.st_uid}, not you (uid "
                         f"{os.geteuid()}): its contents are built into packages and its "
                         f"recorded commands are run again; {fix}, or chown it")
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BuildError(f"{root}: the cache is writable by group or others (mode "
                         f"{stat.S_IMODE(status.st_mode):04o}): its contents are built into "
                         f"packages and its recorded commands are run again; chmod go-w it, "
                         f"or {fix}")
    return root


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` through a rename, so readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{threading.get_ident()}-{os.getpid()}.tmp")
    temp.write_text(text)
    os.replace(temp, path)
