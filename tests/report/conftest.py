"""The published JUnit schema the report is checked against.

Jenkins' xunit plugin publishes junit-10.xsd (MIT); pytest's source distribution carries it
for its own JUnit tests, so it comes from PyPI like every other dependency, once per cache.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kpatchbuild.base.store import default_root

SCHEMA_PYTEST_VERSION = "8.3.4"
SCHEMA_MEMBER = f"pytest-{SCHEMA_PYTEST_VERSION}/testing/example_scripts/junit-10.xsd"


@pytest.fixture(scope="session")
def junit_schema() -> Path:
    where = default_root() / "test-data" / "junit-10.xsd"
    if where.is_file():
        return where
    download = where.parent / "sdist"
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         f"pytest=={SCHEMA_PYTEST_VERSION}", "-d", str(download)],
        capture_output=True, text=True)
    if fetched.returncode != 0:
        pytest.fail(f"could not download pytest's sdist for junit-10.xsd: {fetched.stderr}")
    (archive,) = download.glob("pytest-*.tar.gz")
    with tarfile.open(archive) as tar:
        member = tar.extractfile(SCHEMA_MEMBER)
        assert member is not None, f"{archive} has no {SCHEMA_MEMBER}"
        temporary = where.with_suffix(".tmp")
        temporary.write_bytes(member.read())
    temporary.replace(where)
    return where
