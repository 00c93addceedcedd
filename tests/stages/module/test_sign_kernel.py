"""Signing with the target's own sign-file, for real: the default recipe's Debian 6.1 cell
(its prepared tree), through ``doit build`` as a user runs it (marked ``kernel``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kpatchbuild.base import modsig
from kpatchbuild.base.store import Store, default_root
from kpatchbuild.stages.module import sign
from tests.conftest import CI_KERNEL, RecipeStage, copy_recipe, run_doit
from tests.support.signing import SigningFiles, make_key

pytestmark = pytest.mark.kernel


def modinfo(module: Path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(module)], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_the_trees_sign_file_signs_as_the_kernel_checks(default_recipe_stage: RecipeStage,
                                                        tmp_path: Path) -> None:
    files = make_key(tmp_path / "keys", "Team signing key")
    other = make_key(tmp_path / "keys", "Another key")
    tool = sign.sign_file_tool(Store(default_root()), default_recipe_stage.tree)
    unsigned = default_recipe_stage.work / "livepatch_cmdline.ko"
    hash = sign.module_hash(default_recipe_stage.work / "config")
    assert hash == "sha256"  # Debian's
    signed = tmp_path / "signed.ko"
    key = sign.SigningKey(str(files.key), files.der, "the test")
    signature = sign.sign_module(unsigned, signed, key, tool=tool, hash=hash,
                                 log=tmp_path / "log")
    assert signature.signer == "Team signing key"
    assert modinfo(signed, "signer") == "Team signing key"
    assert modinfo(signed, "sig_hashalgo") == "sha256"
    serial = modsig.read_signature(signed.read_bytes())
    assert serial is not None
    assert modinfo(signed, "sig_key").replace(":", "").lower() == serial.serial

    wrong = sign.SigningKey(str(files.key), other.certificate, "the test")
    with pytest.raises(sign.SigningError) as refused:
        sign.sign_module(unsigned, tmp_path / "wrong.ko", wrong, tool=tool, hash=hash,
                         log=tmp_path / "log")
    assert str(refused.value).startswith(
        f"the module signing certificate {other.certificate} is not the key {files.key}'s "
        "(OpenSSL: the private key does not match the certificate)")
    assert not (tmp_path / "wrong.ko").exists()


def _key_lines(files: SigningFiles) -> list[str]:
    return [line for line in files.key.read_text().splitlines() if "-----" not in line]


def _files_holding(root: Path, secrets: list[str]) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            if any(secret.encode() in data for secret in secrets):
                found.append(path)
    return found


def test_doit_signs_each_cell_and_a_new_key_only_signs_again(
        default_recipe_stage: RecipeStage, private_recipes: tuple[Path, dict[str, str]],
        tmp_path: Path) -> None:
    recipes, env = private_recipes
    copy_recipe("cmdline", recipes, "t-signed")
    team = make_key(tmp_path / "keys", "Team signing key")
    second = make_key(tmp_path / "keys", "Rotated key")
    cell = f"t-signed/{CI_KERNEL}"
    work = default_root() / "work" / cell

    first = run_doit("test", f"kernel={CI_KERNEL}", f"module_key={team.key}",
                     f"module_cert={team.certificate}", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"signed by 'Team signing key' (sha256) with {team.key}, verified against " \
           f"{team.certificate}" in first.stderr
    assert f"signed by 'Team signing key' (sha256): {cell}" in first.stdout
    record = json.loads((work / "module.json").read_text())
    assert record["signature"]["signer"] == "Team signing key"
    assert modinfo(work / "livepatch_cmdline.ko", "signer") == "Team signing key"
    report = json.loads((default_root() / "reports/test.json").read_text())
    assert report["cells"][0]["signer"] == "Team signing key"
    assert report["cells"][0]["signature_hash"] == "sha256"
    cache = default_root()
    places = [cache / "logs", work, cache / "module", cache / "signtool", cache / "reports",
              tmp_path / "db"]
    assert [p for place in places for p in _files_holding(place, _key_lines(team))] == []

    linked = sorted((cache / "module").iterdir())
    rotated = run_doit("build", f"kernel={CI_KERNEL}", env={
        **env, sign.KEY_ENV: str(second.key), sign.CERT_ENV: str(second.certificate)})
    assert rotated.returncode == 0, rotated.stderr
    assert f".  module:{cell}" in rotated.stdout
    assert f"-- diff:{cell}" in rotated.stdout
    assert sorted((cache / "module").iterdir()) == linked  # signed again, not relinked
    assert modinfo(work / "livepatch_cmdline.ko", "signer") == "Rotated key"

    unsigned = run_doit("test", f"kernel={CI_KERNEL}", env=env)
    assert unsigned.returncode == 0, unsigned.stderr
    assert f"unsigned: a kernel in lockdown (Secure Boot) refuses it: {cell}" \
        in unsigned.stdout
    assert modsig.read_signature((work / "livepatch_cmdline.ko").read_bytes()) is None
