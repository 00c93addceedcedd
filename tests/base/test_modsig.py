"""A module's appended signature and a certificate's key name, read without OpenSSL."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpatchbuild.base import modsig
from tests.support.signing import SigningFiles, appended_signature, make_key

CONTENT = b"\x7fELF" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningFiles:
    return make_key(tmp_path_factory.mktemp("key"), serial="0x8a11")


@pytest.mark.parametrize("digest", ["sha256", "sha512"])
def test_the_signer_serial_and_hash_are_read_as_modinfo_shows_them(
        key: SigningFiles, tmp_path: Path, digest: str) -> None:
    signed = appended_signature(CONTENT, key, tmp_path, digest=digest)
    content, signature = modsig.split_signature(signed)
    assert content == CONTENT
    assert signature is not None
    assert signature.signer == "Test livepatch signing key"
    # A serial whose first bit is set is padded with a zero byte in DER; modinfo shows
    # the number without it.
    assert signature.serial == "8a11"
    assert signature.hash == digest
    assert signature.content_length == len(CONTENT)


def test_an_unsigned_module_has_no_signature() -> None:
    assert modsig.split_signature(CONTENT) == (CONTENT, None)
    assert modsig.read_signature(CONTENT) is None


def test_a_certificates_name_is_the_kernels_key_description(key: SigningFiles) -> None:
    name, key_id = modsig.certificate_key_id(key.der.read_bytes())
    shown = subprocess.run(["openssl", "x509", "-in", key.certificate, "-noout", "-ext",
                            "subjectKeyIdentifier"], capture_output=True, text=True,
                           check=True).stdout.splitlines()[-1].strip()
    assert name == "Test livepatch signing key"
    assert key_id == shown.replace(":", "").lower()


def test_without_a_common_name_the_organization_names_the_signer(tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/O=Only An Organization", "-keyout", tmp_path / "k.pem",
                    "-outform", "DER", "-out", tmp_path / "c.der"],
                   check=True, capture_output=True)
    assert modsig.certificate_key_id((tmp_path / "c.der").read_bytes())[0] == \
        "Only An Organization"


def test_a_signature_cut_short_is_refused(key: SigningFiles, tmp_path: Path) -> None:
    signed = appended_signature(CONTENT, key, tmp_path)
    pkcs7_length = len(signed) - len(CONTENT) - modsig.TRAILER.size - len(modsig.MAGIC)
    trailer = modsig.TRAILER.pack(0, 0, 2, 0, 0, pkcs7_length - 8) + modsig.MAGIC
    with pytest.raises(modsig.SignatureFormatError):
        modsig.split_signature(signed[:len(CONTENT) + pkcs7_length - 8] + trailer)


def test_a_signature_longer_than_the_file_is_refused() -> None:
    trailer = modsig.TRAILER.pack(0, 0, 2, 0, 0, 10_000) + modsig.MAGIC
    with pytest.raises(modsig.SignatureFormatError, match="signature of 10000 bytes"):
        modsig.split_signature(b"short" + trailer)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_before_the_trailer_read_or_refuse_but_never_crash(garbage: bytes) -> None:
    trailer = modsig.TRAILER.pack(0, 0, 2, 0, 0, len(garbage)) + modsig.MAGIC
    try:
        modsig.split_signature(b"module" + garbage + trailer)
    except modsig.SignatureFormatError:
        pass


@pytest.fixture(scope="module")
def signed(key: SigningFiles, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return appended_signature(CONTENT, key, tmp_path_factory.mktemp("signed"))


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_a_damaged_signature_reads_or_is_refused_but_never_crashes(
        signed: bytes, data: st.DataObject) -> None:
    pkcs7_end = len(signed) - modsig.TRAILER.size - len(modsig.MAGIC)
    where = data.draw(st.integers(len(CONTENT), pkcs7_end - 1))
    damaged = bytearray(signed)
    damaged[where] = data.draw(st.integers(0, 255))
    try:
        modsig.split_signature(bytes(damaged))
    except modsig.SignatureFormatError:
        pass


def test_a_signer_name_with_control_characters_is_shown_harmless(tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=evilXYZname", "-keyout", tmp_path / "k.pem",
                    "-outform", "DER", "-out", tmp_path / "c.der"],
                   check=True, capture_output=True)
    # The same length, so the DER stays well formed: an escape, a line break, a bell.
    der = (tmp_path / "c.der").read_bytes().replace(b"XYZ", b"\x1b\n\x07")
    name, _ = modsig.certificate_key_id(der)
    assert name == "evil???name"
