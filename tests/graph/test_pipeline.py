"""The pipeline for real: Debian's prepared tree, a built kernel, caching and interruption.

Marked ``kernel``: the first run fetches Debian's packages and builds the small kernel (a few
minutes); the stages are cached in the project's cache, so later runs take seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kpatchbuild.base import kbuild
from kpatchbuild.base.store import default_root
from kpatchbuild.stages.fetch.debian import DEB_KIND
from kpatchbuild.stages.fetch.source import SourceTree
from kpatchbuild.stages.original import original
from tests.conftest import CI_KERNEL, PROJECT, TINY_KERNEL, RecipeStage, copy_recipe, run_doit

pytestmark = pytest.mark.kernel


def test_default_recipe_prepared_tree(default_recipe_stage: RecipeStage) -> None:
    release = default_recipe_stage.fetch["kernel"]["release"]
    tree = default_recipe_stage.tree
    assert release.startswith("6.1.0-") and release.endswith("-cloud-amd64")
    assert kbuild.kernelrelease(tree) == release
    assert f'"{release}"' in (tree / "include/generated/utsrelease.h").read_text()
    debian_symvers = Path(default_recipe_stage.fetch["files"]) / "Module.symvers"
    assert (tree / "Module.symvers").read_bytes() == debian_symvers.read_bytes()
    assert "\tvmlinux\tEXPORT_SYMBOL" in debian_symvers.read_text()[:100_000]
    assert not (tree / "vmlinux").exists(), "a Debian target is prepared, never built"
    assert "CONFIG_LIVEPATCH=y" in (tree / ".config").read_text()


def test_built_kernel(built_recipe_stage: RecipeStage) -> None:
    tree = built_recipe_stage.tree
    for output in ("vmlinux", "arch/x86/boot/bzImage", "Module.symvers"):
        assert (tree / output).is_file(), output
    config = (tree / ".config").read_text()
    for option in ("LIVEPATCH", "BUG", "JUMP_LABEL", "UNWINDER_ORC", "RETHUNK", "SERIAL_8250"):
        assert f"CONFIG_{option}=y" in config, option
    sections = subprocess.run(["readelf", "-SW", str(tree / "fs/proc/cmdline.o")],
                              capture_output=True, text=True, check=True).stdout
    assert ".text.cmdline_proc_show" in sections
    assert ".init.text.proc_cmdline_init" in sections or ".init.text" in sections
    # Per-function sections are linked inside .text, not as orphans past _etext (memory the
    # kernel frees at the end of boot).
    addresses = {name: int(address, 16) for address, _, name in
                 (line.split()[:3] for line in (tree / "System.map").read_text().splitlines())}
    assert addresses["_stext"] <= addresses["cmdline_proc_show"] < addresses["_etext"]
    record = kbuild.read_cmd_file(tree / "fs/proc/.cmdline.o.cmd")
    assert record.target == "fs/proc/cmdline.o"
    assert "-ffunction-sections -fdata-sections" in record.command
    assert record.sources[0] == "fs/proc/cmdline.c"
    assert "include/linux/seq_file.h" in record.sources


def test_a_kernel_built_to_trust_the_key_enforces_signatures_in_the_proof(
        built_recipe_stage: RecipeStage) -> None:
    """The built kernel trusts the signing key: its module is signed with the kernel's hash
    (kbuild's default, sha512), loads under module.sig_enforce=1, and the proof saw the
    unsigned copy and one signed by a throwaway key refused, each said in one line."""
    config = (built_recipe_stage.tree / ".config").read_text()
    assert "CONFIG_MODULE_SIG=y" in config and "CONFIG_CRYPTO_SHA256=y" in config
    trusted = re.search(r'^CONFIG_SYSTEM_TRUSTED_KEYS="(.+)"$', config, re.M)
    assert trusted is not None
    module = json.loads((built_recipe_stage.work / "module.json").read_text())
    certificate = Path(module["certificate"]).read_bytes()
    assert b"CERTIFICATE" in certificate or certificate[:1] == b"\x30"
    assert module["signature"]["hash"] == "sha512"
    proof = json.loads((built_recipe_stage.work / "prove.json").read_text())
    assert proof["steps"][:4] == ["mount", "check-before", "refused:unsigned",
                                  "refused:other-key"]
    assert proof["signature"].endswith("checked by the kernel under module.sig_enforce=1")
    unsigned, other = proof["refusals"]
    assert unsigned.startswith("unsigned: livepatch_cmdline_tiny: unsigned: a kernel in "
                               "lockdown (Secure Boot) refuses it")
    assert other.startswith("other-key: livepatch_cmdline_tiny: the kernel does not trust "
                            "its signer 'kpatchbuild throwaway key (untrusted)'")
    assert all(line.endswith("Key was rejected by service)") for line in proof["refusals"])
    console = Path(proof["console_log"]).read_text()
    assert "module.sig_enforce=1" in console
    # Trusted: the kernel took no 'unsigned module' taint (E, 8192) from the signed one.
    taint = int(re.search(r"KPB-INFO taint-end (\d+)", console)[1])
    assert taint & 8192 == 0


def test_second_build_does_no_work(default_recipe_stage: RecipeStage,
                                   built_recipe_stage: RecipeStage) -> None:
    # Every recipe's cells the suite builds, whatever earlier tests left undone.
    first = run_doit("build", f"kernel={CI_KERNEL},{TINY_KERNEL}")
    assert first.returncode == 0, first.stdout + first.stderr
    result = run_doit("build", f"kernel={CI_KERNEL},{TINY_KERNEL}")
    assert result.returncode == 0, result.stderr
    ran = [line for line in result.stdout.splitlines() if line.startswith(".  ")]
    skipped = [line for line in result.stdout.splitlines() if line.startswith("-- ")]
    assert ran == []
    assert "-- original:cmdline/debian12-6.1-cloud-amd64" in skipped
    assert "-- original:cmdline-tiny/tiny-6.1" in skipped


def test_two_recipes_share_one_original_stage(default_recipe_stage: RecipeStage,
                                              private_recipes) -> None:
    recipes, env = private_recipes
    copy_recipe("cmdline", recipes, "t-share-a")
    copy_recipe("cmdline", recipes, "t-share-b")
    result = run_doit("build", f"kernel={CI_KERNEL}", env=env)
    assert result.returncode == 0, result.stderr
    paths = {json.loads((work / "original.json").read_text())["path"]
             for recipe in ("t-share-a", "t-share-b")
             for work in (default_root() / "work" / recipe).iterdir()}
    assert paths == {default_recipe_stage.original["path"]}
    assert "preparing" not in result.stderr


def test_config_edits_rebuild_only_when_the_config_changes(built_recipe_stage: RecipeStage,
                                                          private_recipes) -> None:
    recipes, env = private_recipes
    copy_recipe("cmdline", recipes, "cmdline")
    tiny = copy_recipe("cmdline-tiny", recipes, "t-fragment")
    target = "t-fragment/tiny-6.1"
    first = run_doit("build", "recipe=t-fragment", env=env)
    assert first.returncode == 0, first.stderr
    work = default_root() / "work/t-fragment/tiny-6.1"
    assert json.loads((work / "original.json").read_text())["key"] == \
        built_recipe_stage.original["key"]

    fragment = tiny / "tiny-guest.config"
    fragment.write_text(fragment.read_text() + "# a comment changes no option\n")
    again = run_doit("build", "recipe=t-fragment", env=env)
    assert f".  config:{target}" in again.stdout
    assert f"-- original:{target}" in again.stdout

    fragment.write_text(fragment.read_text() + "CONFIG_PRINTK_TIME=y\n")
    config_run = run_doit(f"config:{target}", "recipe=t-fragment", env=env)
    assert config_run.returncode == 0, config_run.stderr
    new_config = (work / "config").read_text()
    assert "CONFIG_PRINTK_TIME=y" in new_config
    info = run_doit("info", f"original:{target}", "recipe=t-fragment", env=env)
    assert "status     : run" in info.stdout
    assert str(work / "config") in info.stdout.split("have changed:")[1].split("file_dep")[0]
    fetch = json.loads((work / "fetch.json").read_text())["source"]
    tree = SourceTree(Path(fetch["path"]), fetch["key"], fetch["origin"])
    compiler = kbuild.host_compiler()
    assert original.built_key(tree, new_config, compiler) != built_recipe_stage.original["key"]


def test_option_that_does_not_stick_fails_the_config_step(built_recipe_stage: RecipeStage,
                                                          private_recipes) -> None:
    recipes, env = private_recipes
    recipe = copy_recipe("cmdline-tiny", recipes, "t-dropped")
    shutil.copytree(PROJECT / "recipes/cmdline", recipes / "cmdline")
    text = (recipe / "recipe.yaml").read_text().replace(
        "        - tiny-guest.config\n",
        "        - tiny-guest.config\n      options:\n        - CONFIG_VIRTIO_PCI=y\n")
    (recipe / "recipe.yaml").write_text(text)
    option_line = text.splitlines().index("        - CONFIG_VIRTIO_PCI=y") + 1
    result = run_doit("config:t-dropped/tiny-6.1", "recipe=t-dropped", env=env)
    assert result.returncode != 0
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("kpatchbuild: error")]
    assert f"recipe.yaml:{option_line}: targets[0].config.options[0]: CONFIG_VIRTIO_PCI=y did " \
           "not stick" in line
    assert "it depends on VIRTIO_MENU" in line and "PCI" in line
    assert "Traceback" not in result.stdout + result.stderr


def test_bad_recipe_is_one_line_through_doit(private_recipes) -> None:
    recipes, env = private_recipes
    recipe = copy_recipe("cmdline", recipes, "t-broken")
    text = (recipe / "recipe.yaml").read_text().replace("flavour:", "flavor:")
    (recipe / "recipe.yaml").write_text(text)
    line = text.splitlines().index(next(ln for ln in text.splitlines() if "flavor:" in ln)) + 1
    result = run_doit("build", env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert f"t-broken/recipe.yaml:{line}: targets[0].debian.flavor: unknown key" in \
        result.stderr


def test_interrupted_prepare_is_redone(tmp_path: Path, default_recipe_stage: RecipeStage) -> None:
    """kill -9 in the middle of modules_prepare leaves nothing that looks complete."""
    cache = tmp_path / "cache"
    # Debian's packages come from the shared cache: the test is about the stage, not apt.
    (cache / DEB_KIND).mkdir(parents=True)
    for entry in (default_root() / DEB_KIND).iterdir():
        os.symlink(entry, cache / DEB_KIND / entry.name)
    env = {**os.environ, "KPATCHBUILD_CACHE": str(cache),
           "KPATCHBUILD_DOIT_DB": str(tmp_path / "db")}
    command = [sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"), "build",
               "recipe=cmdline", f"kernel={CI_KERNEL}"]
    process = subprocess.Popen(command, env=env, cwd=PROJECT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if list((cache / "tmp").glob("original-*/tree/include/generated")):
            break
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the prepare step never started")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (cache / "original").exists() or not any((cache / "original").iterdir())
    assert list((cache / "tmp").glob("original-*"))

    rerun = subprocess.run(command, env=env, cwd=PROJECT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert ".  original:cmdline/debian12-6.1-cloud-amd64" in rerun.stdout
    (stage,) = (cache / "original").iterdir()
    assert (stage / "manifest.json").is_file()
    assert stage.name == default_recipe_stage.original["key"]
    assert not list((cache / "tmp").glob("original-*"))
