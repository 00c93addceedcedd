"""Roots: every debootstrapped root (build root, apt root, the tests' chroots) is made by
one command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kpatchbuild.base import roots


def _recording_unshare(bin_dir: Path, record: Path, status: int) -> None:
    bin_dir.mkdir()
    script = bin_dir / "unshare"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\necho debootstrapping\n'
                      f"exit {status}\n")
    script.chmod(0o755)


@pytest.mark.parametrize("status", [0, 1])
def test_debootstrap_runs_minbase_in_a_namespace_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    record = tmp_path / "argv"
    _recording_unshare(tmp_path / "bin", record, status)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "debootstrap.log"
    got = roots.debootstrap(tmp_path / "root", "trixie", "http://mirror/debian", log=log,
                            include=["gcc-14", "make"], keyring=Path("/k.gpg"),
                            components="main")
    assert got == status
    assert record.read_text().splitlines() == [
        "--mount", "--propagation", "private", "--", "debootstrap", "--variant=minbase",
        "--include=gcc-14,make", "--keyring=/k.gpg", "--components=main", "trixie",
        str(tmp_path / "root"), "http://mirror/debian"]
    assert "debootstrapping" in log.read_text()


def test_debootstrap_without_options_names_only_the_suite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "argv"
    _recording_unshare(tmp_path / "bin", record, 0)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    roots.debootstrap(tmp_path / "root", "bookworm", "http://m", log=tmp_path / "log")
    argv = record.read_text().splitlines()
    assert argv[4:] == ["debootstrap", "--variant=minbase", "bookworm",
                        str(tmp_path / "root"), "http://m"]

