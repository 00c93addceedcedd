"""The any-host promise, tried for real: a Debian 13 system, whose own gcc is gcc-14, used as
the host. The project is copied into it as a user would clone it, and its README's command
builds and proves the default recipe's Debian 12 cell there: set-up installs what trixie
lacks, and Debian 12's gcc-12 comes from a build root, since the host's compiler is not the
kernel's.

The Debian 13 system is the trixie root the differ's corpus already uses (one debootstrap for
both), entered through an overlay (tests/support/chroots.py keeps it as made): what set-up
installs there is gone with the command, while the copy of the project, and its cache, are
a directory of this test bound at the same path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kpatchbuild.base import roots
from kpatchbuild.base.store import PROJECT_ROOT, Store
from kpatchbuild.stages.buildroot import buildroot
from tests.support.chroots import SUITE_TREES, make_chroot

CELL = "debian12-6.1-cloud-amd64"
# What reaches PyPI from inside the root as it does from here: the host's CA bundle (copied
# in: a bind of /etc/ssl/certs would let apt in the root write the host's) and pip settings.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def copy_of_the_project(where: Path) -> Path:
    """The project's tracked files as they are now (what a clone of this commit holds)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = PROJECT_ROOT / name
        if source.is_file():
            target = where / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return where


def carried_settings(project: Path) -> tuple[list[str], list[Path]]:
    """The environment the README's command gets inside, and the host directories it needs."""
    environment = [f"{name}={value}" for name, value in os.environ.items()
                   if name.startswith(("PIP_", "KPATCHBUILD_DEBIAN_"))]
    binds = []
    if CA_BUNDLE.is_file():
        shutil.copyfile(CA_BUNDLE, project / ".host-ca.crt")
        bundle = str(project / ".host-ca.crt")
        environment = [e for e in environment if not e.startswith("PIP_CERT=")]
        environment += [f"PIP_CERT={bundle}", f"SSL_CERT_FILE={bundle}",
                        f"REQUESTS_CA_BUNDLE={bundle}"]
    links = os.environ.get("PIP_FIND_LINKS")
    if links and Path(links).is_dir():
        binds.append(Path(links))
    return environment, binds


@pytest.mark.kernel
def test_a_debian_13_host_builds_and_proves_the_default_recipes_debian_12_cell(
        tmp_path: Path) -> None:
    trixie = make_chroot(Store(), "trixie", SUITE_TREES["6.12-gcc14"].packages)
    project = copy_of_the_project(tmp_path / "kpatchbuild")
    environment, binds = carried_settings(project)
    log = tmp_path / "run-build.log"
    command = roots.entering_command(
        trixie.root, ["env", *environment, "./run", "build"], cwd=project,
        binds=[project, *binds], network=True)
    with open(log, "w") as output:
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=1800)
    text = log.read_text(errors="replace")
    assert done.returncode == 0, f"./run build in a Debian 13 host failed; log: {log}\n" \
        + "\n".join(text.splitlines()[-25:])

    cache = project / "cache"
    work = cache / "work" / "cmdline" / CELL
    proof = json.loads((work / "prove.json").read_text())
    assert {"insmod", "check-patched", "rmmod", "check-after"} <= set(proof["steps"])
    original = json.loads((work / "original.json").read_text())
    # The host's gcc was trixie's gcc 14; the kernel's gcc 12 came from a bookworm build root.
    assert "12.2.0-14+deb12u1" in original["compiler"]
    manifests = [json.loads(path.read_text())
                 for path in (cache / buildroot.KIND).glob("*/manifest.json")]
    assert [m["codename"] for m in manifests] == ["bookworm"]
    assert "in the Debian 12 (bookworm) build root" in text
    module = work / "livepatch_cmdline.ko"
    comment = subprocess.run(["readelf", "-p", ".comment", str(module)], capture_output=True,
                             text=True, check=True).stdout
    assert "(Debian 12.2.0-14+deb12u1) 12.2.0" in comment and "14.2.0" not in comment
