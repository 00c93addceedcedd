"""A key that never leaves its token signs a module: SoftHSM, for real, through OpenSSL's
pkcs11 provider and the target's own sign-file (marked ``kernel``: the tree's sign-file)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kpatchbuild.base.store import Store, default_root
from kpatchbuild.stages.module import sign
from tests.conftest import RecipeStage
from tests.support.pkcs11 import make_token

pytestmark = pytest.mark.kernel


def test_a_key_generated_in_softhsm_signs_a_module_that_verifies(
        default_recipe_stage: RecipeStage, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(default_root())
    token = make_token(store, tmp_path / "hsm")
    tool = sign.sign_file_tool(store, default_recipe_stage.tree)
    key = sign.SigningKey(token.key_uri, token.certificate, "$KPATCHBUILD_MODULE_KEY")
    assert key.shown.endswith("pin-value=***")
    with monkeypatch.context() as patched:
        for name, value in token.environment.items():
            patched.setenv(name, value)
        signature = sign.sign_module(default_recipe_stage.work / "livepatch_cmdline.ko",
                                     tmp_path / "signed.ko", key, tool=tool, hash="sha256",
                                     log=tmp_path / "log")
    assert (signature.signer, signature.hash) == ("Token signing key", "sha256")
    # modinfo without the token's OpenSSL set-up reads the signer as the kernel would.
    shown = subprocess.run(["modinfo", "-F", "signer", str(tmp_path / "signed.ko")],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert shown == "Token signing key"
    assert "1234" not in (tmp_path / "log").read_text()


def test_without_the_pkcs11_provider_sign_file_says_what_to_install(
        default_recipe_stage: RecipeStage, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(default_root())
    token = make_token(store, tmp_path / "hsm")
    monkeypatch.setenv("SOFTHSM2_CONF", token.environment["SOFTHSM2_CONF"])
    monkeypatch.delenv("OPENSSL_CONF", raising=False)
    (tmp_path / "no-modules").mkdir()
    monkeypatch.setenv("OPENSSL_MODULES", str(tmp_path / "no-modules"))
    key = sign.SigningKey(token.key_uri, token.certificate, "$KPATCHBUILD_MODULE_KEY")
    with pytest.raises(sign.SigningError) as refused:
        sign.sign_module(default_recipe_stage.work / "livepatch_cmdline.ko",
                         tmp_path / "signed.ko", key,
                         tool=sign.sign_file_tool(store, default_recipe_stage.tree),
                         hash="sha256", log=tmp_path / "log")
    message = str(refused.value)
    assert message.startswith("sign-file could not use the PKCS#11 key "
                              "pkcs11:token=kpb;object=modules;type=private?pin-value=***")
    assert "apt-get install pkcs11-provider" in message and "1234" not in message
    assert not (tmp_path / "signed.ko").exists()
