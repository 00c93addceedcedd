"""Signing keys and signed blobs for tests, made with the openssl command.

``appended_signature`` builds a module signature the way the kernel's sign-file lays it out
(a detached PKCS#7 in DER without certificates or attributes, then ``struct
module_signature`` and the magic string), independently of kpatchbuild's reader.
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"~Module signature appended~\n"


@dataclass(frozen=True)
class SigningFiles:
    key: Path
    certificate: Path  # PEM
    der: Path  # the same certificate in DER


def make_key(where: Path, name: str = "Test livepatch signing key", *,
             organization: str = "Example Security", serial: str | None = None) -> SigningFiles:
    """A fresh RSA key (mode 0600) and its self-signed certificate under ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    stem = name.lower().replace(" ", "-")
    key, cert, der = where / f"{stem}.key", where / f"{stem}.pem", where / f"{stem}.der"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                    "-subj", f"/O={organization}/CN={name}", "-keyout", key, "-out", cert,
                    *(["-set_serial", serial] if serial else [])],
                   check=True, capture_output=True)
    key.chmod(0o600)
    subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER", "-out", der],
                   check=True, capture_output=True)
    return SigningFiles(key, cert, der)


def appended_signature(content: bytes, key: SigningFiles, work: Path, *,
                       digest: str = "sha256") -> bytes:
    """``content`` with a module signature by ``key`` appended."""
    blob, signature = work / "content.bin", work / "signature.p7"
    blob.write_bytes(content)
    subprocess.run(["openssl", "cms", "-sign", "-binary", "-noattr", "-nocerts", "-nosmimecap",
                    "-outform", "DER", "-md", digest, "-signer", key.certificate,
                    "-inkey", key.key, "-in", blob, "-out", signature],
                   check=True, capture_output=True)
    pkcs7 = signature.read_bytes()
    return content + pkcs7 + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(pkcs7)) + MAGIC
