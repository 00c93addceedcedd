"""``./run``'s set-up on hosts it cannot set up itself: it names, in one line, what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kpatchbuild.base.store import PROJECT_ROOT


def _path_with(tmp_path: Path, commands: list[str]) -> str:
    """A PATH holding only ``commands`` (links to the host's)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in commands:
        found = shutil.which(name)
        assert found, name
        (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def test_a_host_without_apt_is_told_what_to_install(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text('ID=fedora\nID_LIKE=""\nVERSION_ID=41\n')
    path = _path_with(tmp_path, ["bash", "dirname", "readlink", "cat", "python3", "gpg"])
    result = subprocess.run(
        ["bash", str(PROJECT_ROOT / "run"), "setup"], capture_output=True, text=True,
        env={"PATH": path, "KPATCHBUILD_OS_RELEASE": str(os_release),
             "KPATCHBUILD_DEBIAN_KEYRING": "", "HOME": str(tmp_path)}, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    said = lines[0]
    assert said.startswith("run: this host has no apt-based set-up: install debootstrap "
                           "qemu-system-x86_64 busybox cpio patch xz zstd dpkg-deb")
    assert " python3 " not in said and " gpg " not in said  # those it has
    assert said.endswith("then run again")
    if not os.path.exists("/usr/share/keyrings/debian-archive-keyring.gpg"):
        assert "debian-archive-keyring" in said
