"""Exported symbols' versions: a patch that changes one is refused, naming it.

Unit tests on genksyms' own output formats; then Debian's 6.1 tree, where kpatch's
integration patch `symvers-disagreement` (its drivers/base/core.c half: an include that
completes types genksyms saw as opaque, and no code change) must be refused with the CRCs
Debian's Module.symvers holds, while a code change to an exported function is not.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from kpatchbuild.base import kbuild
from kpatchbuild.stages.patched import symversions
from kpatchbuild.stages.patched.symversions import SymbolVersions
from tests.conftest import CI_KERNEL, RecipeStage, default_root, run_doit

DATA = Path(__file__).with_name("data")


def test_genksyms_runs_the_objects_own_compile_as_a_preprocess() -> None:
    record = kbuild.ObjectRecord(
        "drivers/base/core.o",
        "gcc -Wp,-MMD,drivers/base/.core.o.d -nostdinc -I./include -DKBUILD_MODNAME=\\\"core\\\""
        " -c -o drivers/base/core.o drivers/base/core.c  ; ./tools/objtool/objtool --orc "
        "drivers/base/core.o", ())
    command = symversions.genksyms_command(record, "x.symtypes")
    assert command == (
        "gcc -nostdinc -I./include -DKBUILD_MODNAME=\\\"core\\\" -E -D__GENKSYMS__ -o - "
        "drivers/base/core.c   | scripts/genksyms/genksyms -T x.symtypes -r /dev/null")
    with pytest.raises(Exception, match="not a compile"):
        symversions.genksyms_command(kbuild.ObjectRecord("a.o", "ld -r -o a.o b.o", ()), "t")


def test_the_tool_follows_the_config() -> None:
    assert symversions.versioning_tool("CONFIG_MODULES=y\n") is None
    assert symversions.versioning_tool("CONFIG_MODVERSIONS=y\n") == symversions.GENKSYMS
    assert symversions.versioning_tool("CONFIG_MODVERSIONS=y\nCONFIG_GENDWARFKSYMS=y\n") \
        == symversions.GENDWARFKSYMS
    assert "__export_symbol_" in symversions.gendwarfksyms_command("a.o", "a.symtypes")


def test_a_changed_crc_names_the_symbol_and_the_types_that_changed() -> None:
    before = SymbolVersions(
        {"get_device": "0x57736f59", "put_device": "0x35213c4e", "kobj_to": "0x1"},
        {"get_device": "s#device * get_device ( s#device * )",
         "put_device": "void put_device ( s#device * )",
         "s#device": "struct device { s#kobject kobj ; s#request_queue * q ; }",
         "s#kobject": "struct kobject { int refcount ; }",
         "s#request_queue": "struct request_queue { UNKNOWN }"})
    after = SymbolVersions(
        {**before.crcs, "get_device": "0xf46e08f8", "put_device": "0x201c3c2d"},
        {**before.types, "s#request_queue": "struct request_queue { int depth ; }"})
    assert symversions.version_changes(before, after) == (
        "2 exported symbols change their versions (get_device 0x57736f59 -> 0xf46e08f8, "
        "put_device 0x35213c4e -> 0x201c3c2d); the types whose expansion changed: "
        "s#request_queue")
    assert symversions.version_changes(before, before) is None


def _recipe(recipes: Path, name: str, patch: str) -> None:
    (recipes / name).mkdir()
    shutil.copyfile(DATA / patch, recipes / name / patch)
    (recipes / name / "recipe.yaml").write_text(
        f"description: {patch}\nmodule: livepatch_{name.replace('-', '_')}\n"
        "targets:\n  - debian: {release: 12, series: \"6.1\", flavour: cloud-amd64}\n"
        f"patches:\n  - {patch}\ncheck: \"true\"\n")


@pytest.mark.kernel
def test_a_patch_changing_exported_crcs_is_refused_and_a_code_change_is_not(
        default_recipe_stage: RecipeStage, private_recipes) -> None:  # noqa: ANN001
    recipes, env = private_recipes
    _recipe(recipes, "t-crc-include", "core-include.patch")
    _recipe(recipes, "t-crc-code", "core-code.patch")
    refused = run_doit("diff", "recipe=t-crc-include", f"kernel={CI_KERNEL}", env=env)
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    (line,) = [x for x in output.splitlines() if "cannot live-patch" in x]
    assert "drivers/base/core.o: cannot live-patch: 68 exported symbols change their " \
           "versions" in line and "Traceback" not in output
    # The old CRCs are those of the running kernel: Debian's Module.symvers.
    symvers = Path(default_recipe_stage.fetch["files"]) / "Module.symvers"
    known = dict(re.findall(r"^(0x[0-9a-f]+)\t(\S+)", symvers.read_text(), re.M))
    crcs = {name: crc for crc, name in known.items()}
    for name, old in re.findall(r"(\w+) (0x[0-9a-f]{8}) -> 0x", line):
        assert crcs[name] == old
    assert "s#blk_mq_hw_ctx" in line  # completed by the new include
    built = run_doit("patched", "recipe=t-crc-code", f"kernel={CI_KERNEL}", env=env)
    assert built.returncode == 0, built.stderr[-2000:]
    work = default_root() / "work/t-crc-code" / CI_KERNEL
    objects = json.loads((work / "patched.json").read_text())["objects"]
    assert [o["object"] for o in objects] == ["drivers/base/core.o"]
