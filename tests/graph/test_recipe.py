"""Recipe validation: every mistake is one line naming the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.base.errors import RecipeError
from kpatchbuild.graph.recipe import find_recipes, load_recipe

PROJECT = Path(__file__).resolve().parents[2]


def write_recipe(tmp_path: Path, text: str, name: str = "demo") -> Path:
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    (directory / "fix.patch").write_text("--- a/x.c\n+++ b/x.c\n")
    (directory / "recipe.yaml").write_text(text)
    return directory


DEBIAN_TARGET = """targets:
  - debian:
      series: "6.1"
      flavour: cloud-amd64
patches:
  - fix.patch
"""


def built_target(key: str) -> str:
    """A recipe of one kernel built here, with one more key (line 5) on its target."""
    return ("targets:\n  - name: k\n    source: {debian: linux-source-6.1}\n"
            f"    config: {{base: tinyconfig}}\n    {key}\npatches: [fix.patch]\n")


def error_of(directory: Path) -> str:
    with pytest.raises(RecipeError) as caught:
        load_recipe(directory)
    message = caught.value.message
    assert "\n" not in message
    return message


def test_shipped_recipes_load() -> None:
    recipes = {r.name: r for r in find_recipes(PROJECT / "recipes")}
    assert recipes["cmdline"].targets[0].debian.series == "6.1"
    assert recipes["cmdline"].module == "livepatch_cmdline"
    tiny = recipes["cmdline-tiny"].targets[0]
    assert tiny.kind == "built" and tiny.source.package == "linux-source-6.1"
    assert any(o.name == "CONFIG_BUG" and o.value == "y" for o in tiny.config.options)


def test_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, DEBIAN_TARGET, name="my-fix"))
    assert recipe.module == "livepatch_my_fix"
    assert recipe.replace is True
    assert recipe.targets[0].name == "debian12-6.1-cloud-amd64"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    message = error_of(write_recipe(tmp_path, "targets:\n  - debian: {series: 6.1\npatches: []\n"))
    assert "recipe.yaml:3:" in message and "YAML syntax error" in message


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    text = DEBIAN_TARGET.replace("flavour:", "flavor:")
    message = error_of(write_recipe(tmp_path, text))
    assert "recipe.yaml:4: targets[0].debian.flavor: unknown key" in message
    assert "did you mean 'flavour'?" in message


def test_wrong_type(tmp_path: Path) -> None:
    message = error_of(write_recipe(tmp_path, DEBIAN_TARGET.replace("  - fix.patch", "  fix: 1")
                                    .replace("patches:\n", "patches:\n")))
    assert "patches: expected a list, found a mapping" in message


def test_wrong_scalar_type(tmp_path: Path) -> None:
    message = error_of(write_recipe(tmp_path, DEBIAN_TARGET + "replace: maybe\n"))
    assert "recipe.yaml:7: replace: expected true or false, found str 'maybe'" in message


def test_missing_patch_file(tmp_path: Path) -> None:
    message = error_of(write_recipe(tmp_path, DEBIAN_TARGET.replace("fix.patch", "nope.patch")))
    assert "recipe.yaml:6: patches[0]: file 'nope.patch' not found" in message


def test_missing_required_key(tmp_path: Path) -> None:
    message = error_of(write_recipe(tmp_path, "patches:\n  - fix.patch\n"))
    assert "missing required key 'targets'" in message


def test_target_needs_series_and_flavour(tmp_path: Path) -> None:
    text = DEBIAN_TARGET.replace('      flavour: cloud-amd64\n', "")
    assert "give 'image', or both 'series'" in error_of(write_recipe(tmp_path, text))


def test_debian_image_must_be_the_image(tmp_path: Path) -> None:
    text = DEBIAN_TARGET.replace('      series: "6.1"\n      flavour: cloud-amd64\n',
                                 "      image: linux-image-6.1.0-56-cloud-amd64-dbg\n")
    assert "is not the image itself" in error_of(write_recipe(tmp_path, text))


def test_built_target_needs_source_and_config(tmp_path: Path) -> None:
    text = "targets:\n  - name: k\n    source: {debian: linux-source-6.1}\npatches: [fix.patch]\n"
    assert "both 'source' and 'config'" in error_of(write_recipe(tmp_path, text))


def test_tarball_needs_sha256(tmp_path: Path) -> None:
    directory = write_recipe(tmp_path, "")
    (directory / "linux.tar.xz").write_bytes(b"x")
    (directory / "recipe.yaml").write_text(
        "targets:\n  - name: k\n    source: {tarball: linux.tar.xz}\n"
        "    config: {base: tinyconfig}\npatches: [fix.patch]\n")
    assert "needs its 'sha256'" in error_of(directory)


def test_fragment_with_a_bad_line(tmp_path: Path) -> None:
    directory = write_recipe(tmp_path, "")
    (directory / "guest.config").write_text("CONFIG_A=y\nCONFIG_B y\n")
    (directory / "recipe.yaml").write_text(
        "targets:\n  - name: k\n    source: {debian: linux-source-6.1}\n"
        "    config: {base: tinyconfig, fragments: [guest.config]}\npatches: [fix.patch]\n")
    message = error_of(directory)
    assert "guest.config:2: 'CONFIG_B y' is not a config line" in message


def test_inline_options_and_fragments_keep_their_places(tmp_path: Path) -> None:
    directory = write_recipe(tmp_path, "")
    (directory / "guest.config").write_text("# comment\nCONFIG_A=y\n# CONFIG_B is not set\n")
    (directory / "recipe.yaml").write_text(
        "targets:\n  - name: k\n    source: {debian: linux-source-6.1=6.1.192-2}\n"
        "    config:\n      base: tinyconfig\n      fragments: [guest.config]\n"
        "      options: [CONFIG_C=m]\npatches: [fix.patch]\n")
    (target,) = load_recipe(directory).targets
    assert target.source.version == "6.1.192-2"
    assert [(o.name, o.value, o.place.line) for o in target.config.options] == [
        ("CONFIG_A", "y", 2), ("CONFIG_B", "n", 3), ("CONFIG_C", "m", 7)]


def test_duplicate_target_names(tmp_path: Path) -> None:
    text = DEBIAN_TARGET.replace("targets:\n", "targets:\n  - debian: {series: \"6.1\", "
                                 "flavour: cloud-amd64}\n")
    assert "target name 'debian12-6.1-cloud-amd64' is used twice" in error_of(
        write_recipe(tmp_path, text))


def test_unknown_recipe_lists_known_ones(tmp_path: Path) -> None:
    write_recipe(tmp_path, DEBIAN_TARGET, name="one")
    with pytest.raises(RecipeError, match="recipe 'two' not found .* \\(recipes: one\\)"):
        find_recipes(tmp_path, "two")


def test_sources_and_expected_refusal(tmp_path: Path) -> None:
    directory = write_recipe(tmp_path, DEBIAN_TARGET + "sources: [extra.c]\nrefused: shadow\n")
    (directory / "extra.c").write_text("/* callbacks */\n")
    recipe = load_recipe(directory)
    assert recipe.sources == ((directory / "extra.c").resolve(),)
    assert recipe.refused == "shadow"
    (directory / "extra.c").unlink()
    assert "recipe.yaml:7: sources[0]: file 'extra.c' not found" in error_of(directory)


def test_header_index_is_a_debian_target_key(tmp_path: Path) -> None:
    assert load_recipe(write_recipe(tmp_path, DEBIAN_TARGET)).targets[0].header_index is False
    text = DEBIAN_TARGET.replace("      flavour: cloud-amd64\n",
                                 "      flavour: cloud-amd64\n    header_index: true\n")
    assert load_recipe(write_recipe(tmp_path, text)).targets[0].header_index is True
    message = error_of(write_recipe(tmp_path, text.replace("true", "sometimes")))
    assert "recipe.yaml:5: targets[0].header_index: expected true or false" in message


def test_header_index_on_a_built_target_is_refused(tmp_path: Path) -> None:
    message = error_of(write_recipe(tmp_path, built_target("header_index: true")))
    assert message.startswith(f"{tmp_path}/demo/recipe.yaml:5: targets[0].header_index: only "
                              "a 'debian' target needs a header index")


def test_a_built_kernel_names_the_release_of_its_toolchain(tmp_path: Path) -> None:
    text = """targets:
  - name: default
    source: {debian: linux-source-6.1}
    config: {base: tinyconfig}
  - name: trixie-gcc
    source: {debian: linux-source-6.1}
    config: {base: tinyconfig}
    toolchain: trixie
  - name: from-13
    source: {debian: linux-source-6.12, release: 13}
    config: {base: tinyconfig}
patches: [fix.patch]
"""
    recipe = load_recipe(write_recipe(tmp_path, text))
    assert [(t.name, t.toolchain) for t in recipe.targets] == [
        ("default", "12"), ("trixie-gcc", "13"), ("from-13", "13")]


@pytest.mark.parametrize(("target", "said"), [
    ('  - debian: {series: "6.1", flavour: cloud-amd64}\n    toolchain: 13\n',
     "targets[0].toolchain: a Debian kernel is compiled by its own gcc, from its release"),
    ("  - name: k\n    source: {debian: linux-source-6.1}\n    config: {base: tinyconfig}\n"
     "    toolchain: 11\n",
     "targets[0].toolchain: Debian 11 is not a release kpatchbuild knows"),
    ("  - name: k\n    source: {debian: linux-source-6.1}\n    config: {base: tinyconfig}\n"
     "    accept_compiler: 12.2.0-15\n",
     "targets[0].accept_compiler: a kernel built here is compiled by its toolchain's gcc"),
    ('  - debian: {series: "6.1", flavour: cloud-amd64}\n    accept_compiler: newest\n',
     "targets[0].accept_compiler: 'newest' is not a Debian gcc version such as 14.2.0-20"),
])
def test_toolchain_and_accept_compiler_where_they_do_not_belong(tmp_path: Path, target: str,
                                                                said: str) -> None:
    message = error_of(write_recipe(tmp_path, f"targets:\n{target}patches: [fix.patch]\n"))
    assert said in message


def test_accept_compiler_is_kept_on_each_kernel_of_the_entry(tmp_path: Path) -> None:
    text = """targets:
  - debian: {release: 13, series: "6.12", flavour: [cloud-amd64, amd64]}
    accept_compiler: 14.2.0-20
patches: [fix.patch]
"""
    recipe = load_recipe(write_recipe(tmp_path, text))
    assert [t.accept_compiler for t in recipe.targets] == ["14.2.0-20", "14.2.0-20"]


MATRIX = """targets:
  - debian:
      release: 12
      series: ["6.1", "6.12"]
      flavour: [cloud-amd64, amd64]
  - debian: {series: "6.1", flavour: rt-amd64}
    patches: [backport.patch]
  - debian: {image: linux-image-6.1.0-57-amd64}
    expect: not-applicable
    reason: the code is not in this release
patches:
  - fix.patch
"""


def test_series_and_flavour_lists_are_a_matrix(tmp_path: Path) -> None:
    directory = write_recipe(tmp_path, MATRIX)
    (directory / "backport.patch").write_text("--- a/x.c\n+++ b/x.c\n")
    recipe = load_recipe(directory)
    assert [t.name for t in recipe.targets] == [
        "debian12-6.1-cloud-amd64", "debian12-6.1-amd64", "debian12-6.12-cloud-amd64",
        "debian12-6.12-amd64", "debian12-6.1-rt-amd64", "6.1.0-57-amd64"]
    assert {t.place.line for t in recipe.targets[:4]} == {2}
    fix, backport = (directory / "fix.patch").resolve(), (directory / "backport.patch").resolve()
    assert [recipe.patches_for(t) for t in recipe.targets] == [(fix,)] * 4 + [(backport,)] \
        + [(fix,)]
    assert [t.not_applicable for t in recipe.targets] == [None] * 5 + [
        "the code is not in this release"]


@pytest.mark.parametrize(("edit", "message"), [
    (("    reason: the code is not in this release\n", ""),
     "recipe.yaml:8: targets[2]: 'expect: not-applicable' needs a 'reason'"),
    (("expect: not-applicable", "expect: failure"),
     "recipe.yaml:9: targets[2].expect: 'failure' is not an expectation"),
    (("    expect: not-applicable\n", ""),
     "recipe.yaml:9: targets[2].reason: a reason goes with 'expect: not-applicable'"),
    (("      flavour: [cloud-amd64, amd64]\n",
      "      flavour: [cloud-amd64, amd64]\n    name: mine\n"),
     "recipe.yaml:6: targets[0].name: the targets of a series or flavour list are named by"),
    (("[cloud-amd64, amd64]", "[amd64, amd64]"),
     "recipe.yaml:5: targets[0].debian.flavour[1]: 'amd64' is listed twice"),
    (('["6.1", "6.12"]', '["6.1", 6.12a]'),
     "recipe.yaml:4: targets[0].debian.series[1]: '6.12a' is not a kernel series"),
    (("patches:\n  - fix.patch\n", ""),
     "recipe.yaml:2: targets[0]: no patches for this target: give 'patches' at the top"),
])
def test_matrix_mistakes_are_one_line(tmp_path: Path, edit: tuple[str, str],
                                      message: str) -> None:
    directory = write_recipe(tmp_path, MATRIX.replace(*edit))
    (directory / "backport.patch").write_text("--- a/x.c\n+++ b/x.c\n")
    assert message in error_of(directory)


def test_each_target_may_carry_all_the_patches(tmp_path: Path) -> None:
    text = """targets:
  - debian: {series: "6.1", flavour: cloud-amd64}
    patches: [fix.patch]
"""
    recipe = load_recipe(write_recipe(tmp_path, text))
    assert recipe.patches == ()
    assert recipe.patches_for(recipe.targets[0]) == ((tmp_path / "demo/fix.patch").resolve(),)


@pytest.mark.parametrize(("version", "module"), [
    ("1", "livepatch_my_fix"), ("2", "livepatch_my_fix_v2"), ("1.1", "livepatch_my_fix_v1_1")])
def test_a_version_names_the_module_from_2_on(tmp_path: Path, version: str,
                                               module: str) -> None:
    recipe = load_recipe(write_recipe(tmp_path, DEBIAN_TARGET + f"version: {version}\n",
                                      name="my-fix"))
    assert (recipe.version, recipe.module) == (version, module)
    assert load_recipe(write_recipe(tmp_path, DEBIAN_TARGET, name="other")).version == "1"


@pytest.mark.parametrize(("text", "said"), [
    ("version: 2a\n", "version: '2a' is not a version (numbers and dots: 2, 1.1)"),
    ("module: " + "m" * 54 + "\nversion: 3\n", "is longer than 55 characters: shorten 'module'"),
])
def test_a_bad_version_is_refused(tmp_path: Path, text: str, said: str) -> None:
    assert said in error_of(write_recipe(tmp_path, DEBIAN_TARGET + text))


def test_a_target_may_expect_its_own_refusal(tmp_path: Path) -> None:
    target = '{release: 12, series: "6.12", flavour: cloud-amd64}'
    text = DEBIAN_TARGET.replace("patches:", f"""  - debian: {target}
    refused: boot-time constant
patches:""")
    recipe = load_recipe(write_recipe(tmp_path, text))
    first, second = recipe.targets
    assert recipe.refused_on(first) is None
    assert recipe.refused_on(second) == "boot-time constant"
    both = text.replace("    refused:", "    expect: not-applicable\n    reason: x\n    refused:")
    assert "a target whose patches do not apply is not refused" in error_of(
        write_recipe(tmp_path, both, name="both"))


@pytest.mark.parametrize("description", ['"a fix\\nPre-Depends: evil"',
                                         "|\n  a fix\n  Pre-Depends: evil\n", '"bell \\a"'])
def test_a_description_with_a_control_character_is_refused(tmp_path: Path,
                                                           description: str) -> None:
    """It becomes a package's synopsis: a newline would add a control field there."""
    message = error_of(write_recipe(tmp_path, DEBIAN_TARGET + f"description: {description}\n"))
    assert "description: " in message
    assert "is not one line of text without control characters" in message


def test_a_proof_has_no_network_unless_the_recipe_asks(tmp_path: Path) -> None:
    assert load_recipe(write_recipe(tmp_path, DEBIAN_TARGET)).network is False
    assert load_recipe(write_recipe(tmp_path, DEBIAN_TARGET + "network: true\n")).network
    message = error_of(write_recipe(tmp_path, DEBIAN_TARGET + "network: user\n"))
    assert "network: expected true or false" in message


def test_a_debian_target_belongs_to_one_debian_release(tmp_path: Path) -> None:
    """Debian 12's 6.12 and Debian 13's are different kernels: different targets."""
    text = """targets:
  - debian: {series: "6.1", flavour: cloud-amd64}
  - debian: {release: [12, trixie], series: "6.12", flavour: cloud-amd64}
  - debian: {image: linux-image-6.12.118+deb13-amd64}
  - debian: {image: linux-image-6.1.0-57-amd64}
patches: [fix.patch]
"""
    recipe = load_recipe(write_recipe(tmp_path, text))
    assert [(t.name, t.debian.release) for t in recipe.targets] == [
        ("debian12-6.1-cloud-amd64", "12"), ("debian12-6.12-cloud-amd64", "12"),
        ("debian13-6.12-cloud-amd64", "13"), ("6.12.118+deb13-amd64", "13"),
        ("6.1.0-57-amd64", "12")]


def test_releases_and_series_cross_only_where_a_release_serves_the_series(
        tmp_path: Path) -> None:
    text = """targets:
  - debian: {release: [12, 13], series: ["6.1", "6.12"], flavour: cloud-amd64}
patches: [fix.patch]
"""
    recipe = load_recipe(write_recipe(tmp_path, text))
    assert [t.name for t in recipe.targets] == [
        "debian12-6.1-cloud-amd64", "debian12-6.12-cloud-amd64", "debian13-6.12-cloud-amd64"]


@pytest.mark.parametrize(("target", "said"), [
    ('{release: 13, series: "6.1", flavour: cloud-amd64}',
     "targets[0].debian.release: Debian 13 does not serve series 6.1 (Debian 12 does): drop "
     "that series or name its release"),
    ('{series: "6.12", flavour: cloud-amd64}',
     "targets[0].debian.series: series 6.12 is in Debian 12 (6.12.x+deb12) and Debian 13 "
     "(6.12.x+deb13), different kernels: say which with 'release: 13' (or a list, [12, 13]); "
     "targets are named after it, debian13-6.12-<flavour>"),
    ('{release: 11, series: "6.1", flavour: cloud-amd64}',
     "targets[0].debian.release: Debian 11 is not a release kpatchbuild knows "
     "(12 (bookworm), 13 (trixie))"),
    ('{release: 12, image: linux-image-6.12.118+deb13-amd64}',
     "targets[0].debian.release: linux-image-6.12.118+deb13-amd64 is Debian 13's; drop "
     "'release' or name that one"),
    ('{series: "6.16", flavour: cloud-amd64}',
     "kpatchbuild does not know which Debian release serves series 6.16"),
])
def test_a_debian_release_that_is_not_clear_is_one_line(tmp_path: Path, target: str,
                                                        said: str) -> None:
    message = error_of(write_recipe(tmp_path, f"targets:\n  - debian: {target}\n"
                                              "patches: [fix.patch]\n"))
    assert said in message


def test_a_recipe_names_its_signing_key_file_or_token(tmp_path: Path) -> None:
    directory = write_recipe(tmp_path, DEBIAN_TARGET + "signing:\n  key: keys/team.key\n"
                             "  certificate: keys/team.pem\n")
    (directory / "keys").mkdir()
    (directory / "keys" / "team.key").write_text("key")
    (directory / "keys" / "team.pem").write_text("cert")
    signing = load_recipe(directory).signing
    assert signing is not None
    assert (signing.key, signing.certificate) == (str(directory / "keys" / "team.key"),
                                                  directory / "keys" / "team.pem")
    write_recipe(tmp_path, DEBIAN_TARGET + "signing:\n  key: 'pkcs11:token=team;object=mod'\n"
                 "  certificate: keys/team.pem\n")
    token = load_recipe(directory).signing
    assert token is not None and token.key == "pkcs11:token=team;object=mod"


@pytest.mark.parametrize(("signing", "said"), [
    ("  key: gone.key\n  certificate: fix.patch\n",
     "signing.key: 'gone.key' is neither a pkcs11: URI nor an existing key file"),
    ("  key: fix.patch\n  certificate: gone.pem\n",
     "signing.certificate: file 'gone.pem' not found"),
    ("  key: fix.patch\n", "signing: missing required key 'certificate'"),
])
def test_a_signing_key_that_is_not_there_is_refused(tmp_path: Path, signing: str,
                                                     said: str) -> None:
    assert said in error_of(write_recipe(tmp_path, DEBIAN_TARGET + "signing:\n" + signing))


def test_only_a_kernel_built_here_trusts_the_signing_key(tmp_path: Path) -> None:
    built = load_recipe(write_recipe(tmp_path, built_target("trust_signing_key: true")))
    assert built.targets[0].trusts_signing_key
    message = error_of(write_recipe(tmp_path, """targets:
  - debian: {series: "6.1", flavour: cloud-amd64}
    trust_signing_key: true
patches: [fix.patch]
"""))
    assert "targets[0].trust_signing_key: Debian's kernel trusts the keys Debian built it " \
           "with" in message
