"""Who signs a cell's module: the command line, the environment, the recipe, or for a
kernel built here to trust, kpatchbuild's development key; else nobody."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.graph.pipeline import signing_key
from kpatchbuild.graph.recipe import load_recipe
from kpatchbuild.stages.module import sign
from tests.conftest import run_doit

RECIPE = """targets:
  - debian: {series: "6.1", flavour: cloud-amd64}
  - name: trusting
    source: {debian: linux-source-6.1}
    config: {base: tinyconfig}
    trust_signing_key: true
patches: [fix.patch]
"""


def recipe_dir(tmp_path: Path, signing: str = "") -> Path:
    directory = tmp_path / "recipes" / "fix"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fix.patch").write_text("--- a/x.c\n+++ b/x.c\n")
    (directory / "team.key").write_text("k")
    (directory / "team.pem").write_text("c")
    (directory / "recipe.yaml").write_text(RECIPE + signing)
    return directory


def test_nothing_named_signs_only_what_a_built_kernel_trusts(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    recipe = load_recipe(recipe_dir(tmp_path))
    debian, trusting = recipe.targets
    assert signing_key(None, recipe, debian) is None
    development = signing_key(None, recipe, trusting)
    assert development is not None and development.development
    assert development.certificate == tmp_path / "data/kpatchbuild/module-key/cert.pem"


def test_the_recipes_key_signs_every_cell_and_a_named_one_wins(tmp_path: Path) -> None:
    directory = recipe_dir(tmp_path, "signing: {key: team.key, certificate: team.pem}\n")
    recipe = load_recipe(directory)
    for target in recipe.targets:
        key = signing_key(None, recipe, target)
        assert key is not None
        assert (key.key, key.certificate) == (str(directory / "team.key"),
                                              directory / "team.pem")
        assert key.named_by.endswith("recipe.yaml:8: signing")
    named = sign.SigningKey("pkcs11:token=t", Path("/c.pem"), "$KPATCHBUILD_MODULE_KEY")
    assert all(signing_key(named, recipe, target) is named for target in recipe.targets)


def test_half_a_key_on_the_command_line_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    directory = recipe_dir(tmp_path)
    result = run_doit("list", "module_key=/etc/team.key",
                      env={"KPATCHBUILD_RECIPES": str(directory.parent),
                           "KPATCHBUILD_CACHE": str(tmp_path / "cache"),
                           sign.CERT_ENV: "", sign.KEY_ENV: ""})
    assert result.returncode == 7
    assert result.stderr.strip() == (
        "kpatchbuild: error: $KPATCHBUILD_MODULE_KEY is set but $KPATCHBUILD_MODULE_CERT is "
        "not: a module is signed with a key and its certificate; set both (or neither)")
