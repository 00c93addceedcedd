"""Stand-in for the session fixture `debian_kernel_tree` until tests/conftest.py provides it.

It copies the prepared Debian 6.1 tree found at /tmp/kpb-tree (or $KPB_PREPARED_TREE) into
the session's temporary directory. Remove this file once the shared fixture exists.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

PREPARED = Path(os.environ.get("KPB_PREPARED_TREE", "/tmp/kpb-tree"))


@dataclass(frozen=True)
class PreparedTree:
    path: Path
    release: str
    system_map: Path
    module_symvers: Path


@pytest.fixture(scope="session")
def debian_kernel_tree(tmp_path_factory: pytest.TempPathFactory) -> PreparedTree:
    if not (PREPARED / "READY").exists():
        pytest.fail(f"no prepared Debian kernel tree at {PREPARED} (READY missing)")
    reuse = os.environ.get("KPB_SCRATCH_TREE")  # an existing scratch copy, to save the copy
    if reuse:
        path = Path(reuse)
    else:
        path = tmp_path_factory.mktemp("kernel") / "linux"
        shutil.copytree(PREPARED / "linux-source-6.1", path, symlinks=True)
    return PreparedTree(
        path=path,
        release="6.1.0-56-cloud-amd64",
        system_map=PREPARED / "System.map",
        module_symvers=PREPARED / "Module.symvers",
    )
