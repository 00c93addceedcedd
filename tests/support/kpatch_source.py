"""kpatch's own source tree, for its integration tests: Debian's kpatch_0.9.10.orig.tar.gz.

kpatch keeps a set of integration patches per kernel (test/integration/linux-6.2.0/: each
`name.patch` with an optional `name-LOADED.test` that shows it applied, and `-FAIL`
patches kpatch must refuse). The tarball comes from the Debian mirror's pool, checked
against the sha256 that trixie's Sources index gives it, and is kept in the store (kind
``kpatch-source``). Nothing of it is part of the project: the tests read it where it lies.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.request
from pathlib import Path

from kpatchbuild.base.store import Store, content_key
from kpatchbuild.stages.fetch.suites import Mirrors

VERSION = "0.9.10"
TARBALL = f"kpatch_{VERSION}.orig.tar.gz"
# trixie's Sources: kpatch 0.9.10-1, Checksums-Sha256 of the orig tarball.
SHA256 = "94a87a24570d3e202c3732726169af07af3754caa6eff73a179f362cead57028"
POOL = "pool/main/k/kpatch"
KIND = "kpatch-source"


def kpatch_source(store: Store) -> Path:
    """kpatch's unpacked source tree (kpatch-0.9.10/), fetched once."""
    url = f"{Mirrors.from_host().debian}/{POOL}/{TARBALL}"

    def fetch(work: Path) -> None:
        tarball = work / TARBALL
        with urllib.request.urlopen(url, timeout=120) as response, open(tarball, "wb") as out:
            shutil.copyfileobj(response, out)
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        if digest != SHA256:
            raise ValueError(f"{url}: sha256 {digest}, not trixie's {SHA256}")
        with tarfile.open(tarball) as archive:
            archive.extractall(work, filter="data")
        tarball.unlink()

    artifact = store.make(KIND, content_key(KIND, SHA256), {"url": url}, fetch)
    return artifact.path / f"kpatch-{VERSION}"


def integration_tests(store: Store, kernel: str = "linux-6.2.0") -> Path:
    """The directory of kpatch's integration patches and tests for ``kernel``."""
    return kpatch_source(store) / "test" / "integration" / kernel
