"""The header index of a Debian tree: its preprocessing gcc, its records, and its use."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from kpatchbuild.base import kbuild
from kpatchbuild.base.errors import RecipeError
from kpatchbuild.elf import read_elf
from kpatchbuild.stages.patched.header_index import (
    INDEX_KIND,
    RECORDS,
    failed_targets,
    index_key,
    install_preprocessing_gcc,
    load_index,
    searched_path,
    unexpected_failures,
    write_records,
)
from kpatchbuild.stages.patched.patched import objects_to_rebuild
from tests.stages.patched.test_patched import prepared_stage

HEADER = "#define ANSWER 42\n"
SOURCE = '#include "answer.h"\nint answer(void) { return ANSWER; }\n'


@pytest.fixture
def preprocessing_gcc(tmp_path: Path) -> dict[str, str]:
    install_preprocessing_gcc(tmp_path / "bin")
    (tmp_path / "answer.h").write_text(HEADER)
    (tmp_path / "answer.c").write_text(SOURCE)
    return {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}


def _symbols(obj: Path) -> set[str]:
    return {s.name for s in read_elf(obj).symbols}


def test_a_kernel_compile_is_preprocessed_into_an_empty_object(
        tmp_path: Path, preprocessing_gcc: dict[str, str]) -> None:
    subprocess.run(["gcc", "-Wp,-MMD,.answer.o.d", "-D__KERNEL__", "-O2", "-c", "-o",
                    "answer.o", "answer.c"], cwd=tmp_path, env=preprocessing_gcc, check=True)
    assert "answer" not in _symbols(tmp_path / "answer.o")  # empty, yet a relocatable ELF
    dependencies = (tmp_path / ".answer.o.d").read_text()
    assert "answer.c" in dependencies and "answer.h" in dependencies


class CleanEnvironment:
    """A runner like a build root's: its commands start with an environment of their own."""

    name = "a clean environment"

    def command(self, argv: Sequence[str | os.PathLike[str]], cwd: Path | None) -> list[str]:
        return ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", *map(os.fspath, argv)]


def test_in_a_build_root_the_pass_finds_the_roots_gcc_behind_its_own(tmp_path: Path) -> None:
    """A build root's commands get a clean PATH: the pass sets its own, the preprocessing
    gcc first, and that script runs the next gcc on it (the root's), not itself again."""
    install_preprocessing_gcc(tmp_path / "bin")
    (tmp_path / "answer.h").write_text(HEADER)
    (tmp_path / "answer.c").write_text(SOURCE)
    runner = CleanEnvironment()
    path = searched_path(tmp_path / "bin", runner)
    assert path.split(os.pathsep)[0] == str(tmp_path / "bin")
    argv = ["env", f"PATH={path}", "gcc", "-Wp,-MMD,.answer.o.d", "-D__KERNEL__", "-c", "-o",
            "answer.o", "answer.c"]
    subprocess.run(runner.command(argv, tmp_path), cwd=tmp_path, check=True, timeout=60)
    assert "answer" not in _symbols(tmp_path / "answer.o")
    assert "answer.h" in (tmp_path / ".answer.o.d").read_text()


def test_the_preprocessing_gcc_without_a_real_one_behind_it_says_so(tmp_path: Path) -> None:
    install_preprocessing_gcc(tmp_path / "bin")
    failed = subprocess.run([str(tmp_path / "bin" / "gcc"), "--version"], capture_output=True,
                            text=True, env={"PATH": str(tmp_path / "bin")})
    assert failed.returncode == 127 and "no gcc on PATH after" in failed.stderr


def test_other_compiles_pass_through(tmp_path: Path, preprocessing_gcc: dict[str, str]) -> None:
    """Host programs (no -D__KERNEL__) and kbuild's option probes compile for real."""
    subprocess.run(["gcc", "-O2", "-c", "-o", "host.o", "answer.c"], cwd=tmp_path,
                   env=preprocessing_gcc, check=True)
    assert "answer" in _symbols(tmp_path / "host.o")
    probe = subprocess.run(["gcc", "-D__KERNEL__", "-c", "-x", "c", "/dev/null", "-o",
                            "probe.o"], cwd=tmp_path, env=preprocessing_gcc)
    assert probe.returncode == 0 and (tmp_path / "probe.o").is_file()


def test_a_preprocessing_error_fails_the_compile(tmp_path: Path,
                                                 preprocessing_gcc: dict[str, str]) -> None:
    (tmp_path / "broken.c").write_text('#include "missing.h"\n')
    result = subprocess.run(["gcc", "-D__KERNEL__", "-c", "-o", "broken.o", "broken.c"],
                            cwd=tmp_path, env=preprocessing_gcc, capture_output=True)
    assert result.returncode != 0 and not (tmp_path / "broken.o").exists()


def _publish_index(stage, workspace, records: dict[str, kbuild.ObjectRecord]) -> None:  # noqa: ANN001
    with workspace.store.publishing(INDEX_KIND, index_key(stage), {}) as work:
        write_records(work / RECORDS, records)


INDEXED = {
    "fs/proc/base.o": kbuild.ObjectRecord("fs/proc/base.o", "gcc -c -o fs/proc/base.o x",
                                          ("fs/proc/base.c", "fs/proc/internal.h",
                                           "include/linux/fs.h")),
    "fs/proc/cmdline.o": kbuild.ObjectRecord("fs/proc/cmdline.o", "gcc -c cmdline",
                                             ("fs/proc/cmdline.c", "include/linux/fs.h")),
}


def test_records_round_trip(tmp_path: Path) -> None:
    stage, workspace = prepared_stage(tmp_path)
    _publish_index(stage, workspace, INDEXED)
    index = load_index(workspace.store, stage)
    assert index is not None and index.records == INDEXED


def test_with_an_index_a_header_means_every_includer(tmp_path: Path) -> None:
    stage, workspace = prepared_stage(tmp_path)
    _publish_index(stage, workspace, INDEXED)
    assert objects_to_rebuild(stage, workspace, ["fs/proc/internal.h", "fs/proc/cmdline.c"],
                              header_index=True) == {
        "fs/proc/base.o": ["fs/proc/internal.h"],
        "fs/proc/cmdline.o": ["fs/proc/cmdline.c"],
    }
    assert set(objects_to_rebuild(stage, workspace, ["include/linux/fs.h"],
                                  header_index=True)) == set(INDEXED)


def test_without_the_key_a_header_is_refused_naming_it(tmp_path: Path) -> None:
    stage, workspace = prepared_stage(tmp_path)
    _publish_index(stage, workspace, INDEXED)  # an index made for another recipe
    with pytest.raises(RecipeError) as caught:
        objects_to_rebuild(stage, workspace, ["fs/proc/internal.h"])
    assert caught.value.message.startswith("fs/proc/internal.h is a header")
    assert "set 'header_index: true' on the target" in caught.value.message


def test_a_c_file_the_index_does_not_know_is_not_built(tmp_path: Path) -> None:
    stage, workspace = prepared_stage(tmp_path)
    _publish_index(stage, workspace, INDEXED)
    with pytest.raises(RecipeError, match="kbuild does not build fs/proc/other.c"):
        objects_to_rebuild(stage, workspace, ["fs/proc/internal.h", "fs/proc/other.c"],
                           header_index=True)


def test_a_first_compile_replays_the_command_the_index_recorded(tmp_path: Path) -> None:
    stage, workspace = prepared_stage(tmp_path)
    (workspace.tree / "fs/proc/base.c").write_text("int base;\n")
    command = "gcc -c -o fs/proc/base.o fs/proc/base.c"
    _publish_index(stage, workspace, {"fs/proc/base.o": kbuild.ObjectRecord(
        "fs/proc/base.o", command, ("fs/proc/base.c",))})
    built = workspace.compile("fs/proc/base.o", tmp_path / "log")
    assert "base" in _symbols(built)
    assert f"$ (cd {workspace.tree} && sh -c {command})" in (tmp_path / "log").read_text()


# What make -k said in the index pass over Debian's 6.1 cloud tree (the links that must fail),
# and two failures that must not pass: a compile, and a generated header objects need.
MAKE_ERRORS = """\
make[4]: *** [arch/x86/realmode/rm/Makefile:58: arch/x86/realmode/rm/realmode.elf] Error 1
make[3]: *** [arch/x86/realmode/Makefile:22: arch/x86/realmode/rm/realmode.bin] Error 2
make[2]: *** [scripts/Makefile.build:508: arch/x86/realmode] Error 2
make[3]: *** [arch/x86/purgatory/Makefile:88: arch/x86/purgatory/purgatory.chk] Error 1
make[1]: *** [scripts/Makefile.build:508: arch/x86] Error 2
make[2]: *** [scripts/Makefile.modpost:126: drivers/net/virtio_net.ko] Error 1
make: *** [Makefile:2065: .] Error 2
"""


def test_only_links_of_empty_objects_may_fail(tmp_path: Path) -> None:
    (tmp_path / "arch/x86/realmode").mkdir(parents=True)
    failed = failed_targets(MAKE_ERRORS)
    assert "arch/x86/realmode/rm/realmode.elf" in failed and "." in failed
    assert unexpected_failures(failed, tmp_path) == []
    more = failed + ["fs/proc/base.o", "lib/crc32table.h", "fs/proc/base.o"]
    assert unexpected_failures(more, tmp_path) == ["fs/proc/base.o", "lib/crc32table.h"]
