"""Module signing: who signs, key handling, and the check of every signature against its
certificate. The target's real sign-file is exercised in tests/stages/module/test_sign_kernel.py;
here a stand-in tool signs the way sign-file lays a signature out."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from kpatchbuild.base import modsig
from kpatchbuild.stages.module import sign
from kpatchbuild.stages.module.sign import SigningError, SigningKey
from tests.support.signing import SigningFiles, appended_signature, make_key

PROJECT = Path(__file__).resolve().parents[3]
MODULE = b"\x7fELF" + b"livepatch module" * 64


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningFiles, SigningFiles]:
    where = tmp_path_factory.mktemp("keys")
    return make_key(where, "Team signing key"), make_key(where, "Another key")


def signing_key(files: SigningFiles, certificate: Path | None = None) -> SigningKey:
    return SigningKey(str(files.key), certificate or files.certificate, "the test")


def stand_in_tool(tmp_path: Path, *, digest_override: str = "",
                  fail: bool = False) -> Path:
    """A sign-file with sign-file's arguments (hash key cert module) that signs in place
    with the openssl command."""
    tool = tmp_path / "sign-file"
    tool.write_text(f"""#!{sys.executable}
import pathlib, sys, tempfile
sys.path.insert(0, {str(PROJECT)!r})
from tests.support.signing import SigningFiles, appended_signature
if {fail!r}:
    sys.exit("sign-file: something failed")
digest, key, cert, module = sys.argv[1:5]
files = SigningFiles(pathlib.Path(key), pathlib.Path(cert), pathlib.Path(cert))
path = pathlib.Path(module)
with tempfile.TemporaryDirectory() as work:
    path.write_bytes(appended_signature(path.read_bytes(), files, pathlib.Path(work),
                                        digest={digest_override!r} or digest))
""")
    tool.chmod(0o755)
    return tool


# --- who signs ---

def test_no_key_named_signs_nothing() -> None:
    assert sign.named_key({}) is None


def test_the_environment_names_key_and_certificate(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    key = sign.named_key({sign.KEY_ENV: "team.key", sign.CERT_ENV: "team.pem"})
    assert key == SigningKey(str(tmp_path / "team.key"), tmp_path / "team.pem",
                             "$KPATCHBUILD_MODULE_KEY")


@pytest.mark.parametrize("given,missing", [(sign.KEY_ENV, sign.CERT_ENV),
                                           (sign.CERT_ENV, sign.KEY_ENV)])
def test_half_a_key_is_refused_naming_the_other_half(given: str, missing: str) -> None:
    with pytest.raises(SigningError) as refused:
        sign.named_key({given: "/some/file"})
    assert str(refused.value) == (f"${given} is set but ${missing} is not: a module is signed "
                                  "with a key and its certificate; set both (or neither)")


def test_a_token_key_is_named_by_its_uri_with_the_pin_hidden() -> None:
    key = sign.named_key({sign.KEY_ENV: "pkcs11:token=team;object=modules;pin-value=1234",
                          sign.CERT_ENV: "/etc/team.pem"})
    assert key is not None and key.in_token
    assert key.key.endswith("pin-value=1234")  # what sign-file gets
    assert key.shown == "pkcs11:token=team;object=modules;pin-value=***"
    assert "1234" not in str(key.identity())


def test_the_identity_holds_the_certificate_not_the_key(keys: tuple[SigningFiles, ...]) -> None:
    identity = signing_key(keys[0]).identity()
    secret = keys[0].key.read_text()
    assert identity["key"] == str(keys[0].key)
    assert len(identity["certificate"]) == 64
    assert not any(part in str(identity) for part in secret.splitlines()[1:-1])


# --- the key and certificate, checked ---

@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, keys: tuple[SigningFiles, ...],
                                               mode: int) -> None:
    key = tmp_path / "team.key"
    key.write_bytes(keys[0].key.read_bytes())
    key.chmod(mode)
    with pytest.raises(SigningError) as refused:
        SigningKey(str(key), keys[0].certificate, "$KPATCHBUILD_MODULE_KEY").checked()
    assert str(refused.value) == (f"{key}: the module signing key is open to others (mode "
                                  f"{mode:04o}); chmod 600 it, or name a key of your own "
                                  "($KPATCHBUILD_MODULE_KEY)")


def test_a_missing_key_file_is_named(tmp_path: Path, keys: tuple[SigningFiles, ...]) -> None:
    with pytest.raises(SigningError, match=rf"^{tmp_path}/gone.key: the module signing key "
                                           "not found; name a key of your own"):
        SigningKey(str(tmp_path / "gone.key"), keys[0].certificate, "the test").checked()


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a file away")
def test_a_key_file_of_another_user_is_refused(tmp_path: Path,
                                               keys: tuple[SigningFiles, ...]) -> None:
    key = tmp_path / "team.key"
    key.write_bytes(keys[0].key.read_bytes())
    key.chmod(0o600)
    os.chown(key, 65534, 65534)
    with pytest.raises(SigningError, match=rf"^{key}: the module signing key is owned by uid "
                                           "65534, not you"):
        SigningKey(str(key), keys[0].certificate, "the test").checked()


def test_a_missing_certificate_is_named(tmp_path: Path, keys: tuple[SigningFiles, ...]) -> None:
    with pytest.raises(SigningError) as refused:
        signing_key(keys[0], tmp_path / "team.pem").checked()
    assert str(refused.value) == (f"{tmp_path}/team.pem: the module signing certificate not "
                                  "found (the test); name the key's certificate")


@pytest.mark.parametrize("content", [b"", b"not a certificate\n",
                                     b"-----BEGIN CERTIFICATE-----\n!!\n"
                                     b"-----END CERTIFICATE-----\n"])
def test_a_certificate_that_is_none_is_refused_in_one_line(
        tmp_path: Path, keys: tuple[SigningFiles, ...], content: bytes) -> None:
    bad = tmp_path / "team.pem"
    bad.write_bytes(content)
    with pytest.raises(SigningError) as refused:
        signing_key(keys[0], bad).checked()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{bad}: not an X.509 certificate in PEM or DER (")


def test_pem_and_der_certificates_read_alike(keys: tuple[SigningFiles, ...]) -> None:
    pem = sign.read_certificate(keys[0].certificate, named_by="t")
    der = sign.read_certificate(keys[0].der, named_by="t")
    assert (pem.der, pem.signer, pem.key_id) == (der.der, der.signer, der.key_id)
    assert pem.signer == "Team signing key"
    assert sign.read_certificate(_written(keys[0].der.parent / "again.pem", pem.pem()),
                                 named_by="t").der == pem.der


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- the development key ---

def test_the_development_key_is_made_once_and_kept_private(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    key = sign.development_key()
    assert not key.certificate.exists()  # naming it makes nothing
    sign.made(key)
    home = tmp_path / "data" / "kpatchbuild" / "module-key"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(key.key).stat().st_mode) == 0o600
    certificate = key.checked()
    assert certificate.signer == sign.DEVELOPMENT_SUBJECT
    first = key.certificate.read_bytes()
    sign.made(key)
    assert key.certificate.read_bytes() == first
    assert sorted(p.name for p in home.iterdir()) == [".making.lock", "cert.pem", "key.pem"]


def test_a_development_key_home_open_to_others_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    home = tmp_path / "kpatchbuild" / "module-key"
    home.mkdir(parents=True)
    home.chmod(0o755)
    with pytest.raises(SigningError, match=rf"^{home}: the development key's home is open to "
                                           r"others \(mode 0755\); chmod 700 it"):
        sign.made(sign.development_key())


# --- the kernel's hash ---

@pytest.mark.parametrize("config,expected", [
    ('CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_HASH="sha512"\n', "sha512"),
    ('CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_SHA256=y\nCONFIG_MODULE_SIG_HASH="sha256"\n',
     "sha256"),
    ("# CONFIG_MODULE_SIG is not set\n", None),
    ('CONFIG_MODULE_SIG_HASH="sha256"\n', None),
])
def test_the_hash_is_the_kernels_own(tmp_path: Path, config: str,
                                     expected: str | None) -> None:
    path = _written(tmp_path / ".config", config.encode())
    assert sign.module_hash(path) == expected


# --- signing, checked against the certificate ---

def test_a_signed_module_is_checked_and_named(tmp_path: Path,
                                              keys: tuple[SigningFiles, ...]) -> None:
    unsigned = _written(tmp_path / "unsigned.ko", MODULE)
    signed = tmp_path / "cell" / "livepatch_x.ko"
    signed.parent.mkdir()
    signature = sign.sign_module(unsigned, signed, signing_key(keys[0]),
                                 tool=stand_in_tool(tmp_path), hash="sha256",
                                 log=tmp_path / "module.log")
    certificate = sign.read_certificate(keys[0].certificate, named_by="t")
    assert signature == sign.Signature("Team signing key", "sha256", certificate.key_id,
                                       certificate.sha256)
    assert unsigned.read_bytes() == MODULE  # the cached module stays unsigned
    assert modsig.split_signature(signed.read_bytes())[0] == MODULE
    assert sorted(p.name for p in signed.parent.iterdir()) == ["livepatch_x.ko"]
    log = (tmp_path / "module.log").read_text()
    assert f"sign-file sha256 {keys[0].key} {keys[0].certificate} livepatch_x.ko" in log
    assert "PRIVATE KEY" not in log


def test_a_signature_that_does_not_verify_against_the_certificate_is_refused(
        tmp_path: Path, keys: tuple[SigningFiles, ...]) -> None:
    module = _written(tmp_path / "m.ko", appended_signature(MODULE, keys[0], tmp_path))
    other = sign.read_certificate(keys[1].certificate, named_by="t")
    with pytest.raises(SigningError) as refused:
        sign.verify_module(module, other)
    assert str(refused.value) == (
        f"m.ko: its signature by 'Team signing key' does not verify against "
        f"{keys[1].certificate} ('Another key'): the certificate is not the key's; name the "
        "certificate of the signing key")


def test_a_damaged_module_fails_its_check(tmp_path: Path,
                                          keys: tuple[SigningFiles, ...]) -> None:
    data = bytearray(appended_signature(MODULE, keys[0], tmp_path))
    data[10] ^= 1
    module = _written(tmp_path / "m.ko", bytes(data))
    with pytest.raises(SigningError, match="does not verify"):
        sign.verify_module(module, sign.read_certificate(keys[0].certificate, named_by="t"))


def test_an_unsigned_module_fails_its_check(tmp_path: Path,
                                            keys: tuple[SigningFiles, ...]) -> None:
    with pytest.raises(SigningError, match="m.ko: carries no signature"):
        sign.verify_module(_written(tmp_path / "m.ko", MODULE),
                           sign.read_certificate(keys[0].certificate, named_by="t"))


def test_a_hash_other_than_the_kernels_is_refused(tmp_path: Path,
                                                  keys: tuple[SigningFiles, ...]) -> None:
    signed = tmp_path / "out.ko"
    with pytest.raises(SigningError, match="signed with sha512, not the kernel's sha256"):
        sign.sign_module(_written(tmp_path / "m.ko", MODULE), signed, signing_key(keys[0]),
                         tool=stand_in_tool(tmp_path, digest_override="sha512"),
                         hash="sha256",
                         log=tmp_path / "log")
    assert not signed.exists()


def test_a_failing_sign_file_leaves_the_old_module_and_names_the_log(
        tmp_path: Path, keys: tuple[SigningFiles, ...]) -> None:
    signed = _written(tmp_path / "out.ko", b"the module of the last run")
    with pytest.raises(SigningError) as refused:
        sign.sign_module(_written(tmp_path / "m.ko", MODULE), signed, signing_key(keys[0]),
                         tool=stand_in_tool(tmp_path, fail=True), hash="sha256",
                         log=tmp_path / "module.log")
    assert str(refused.value).startswith(f"sign-file refused the key {keys[0].key} (the "
                                         "test): sign-file: something failed;")
    assert str(refused.value).endswith(f"log: {tmp_path}/module.log")
    assert signed.read_bytes() == b"the module of the last run"
    assert "something failed" in (tmp_path / "module.log").read_text()
