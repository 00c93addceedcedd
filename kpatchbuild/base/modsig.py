"""The signature a module carries at its end, read without OpenSSL.

``scripts/sign-file`` appends to a module a PKCS#7 (CMS) SignedData in DER, then a 12-byte
``struct module_signature`` (include/linux/module_signature.h: algo, hash, id_type,
signer_len, key_id_len, 3 bytes of padding, a big-endian sig_len; for PKCS#7 only id_type
and sig_len are set) and the 28-byte string ``~Module signature appended~\\n``. The kernel
takes the signer from the SignerInfo's issuer and serial number and looks for that key in
its keyrings; ``modinfo`` shows the issuer's common name as ``signer`` and the serial as
``sig_key``. This module reads the same, so that the build side's reports and the ``kpatch``
command on a patched machine name a module's signer alike; checking the signature is
OpenSSL's job (build side) and the kernel's (at load).

A certificate's subject key identifier is read here too: the kernel names the keys in its
keyrings ``<common name>: <subject key identifier in hex>`` (/proc/keys).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

MAGIC = b"~Module signature appended~\n"
TRAILER = struct.Struct(">BBBBB3xI")
PKEY_ID_PKCS7 = 2

_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_COMMON_NAME = "2.5.4.3"
_OID_ORGANIZATION = "2.5.4.10"
_OID_SUBJECT_KEY_ID = "2.5.29.14"
HASH_OIDS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.8": "sha3-256",
    "2.16.840.1.101.3.4.2.9": "sha3-384",
    "2.16.840.1.101.3.4.2.10": "sha3-512",
}

_SEQUENCE, _SET, _INTEGER, _OCTET_STRING, _OID = 0x30, 0x31, 0x02, 0x04, 0x06
_CONTEXT_0 = 0xA0


class SignatureFormatError(ValueError):
    """The bytes claim a signature (or a certificate) but do not hold a well-formed one."""


@dataclass(frozen=True)
class ModuleSignature:
    """Who signed a module, with what hash, and where the signed content ends."""

    signer: str  # the issuer's common name (modinfo's "signer")
    serial: str  # hex, as modinfo's "sig_key" without the colons
    hash: str  # "sha256", or the digest algorithm's OID when it is none of HASH_OIDS
    content_length: int  # the module's bytes before the signature
    pkcs7: bytes


def split_signature(data: bytes) -> tuple[bytes, ModuleSignature | None]:
    """``data`` without its appended signature, and the signature (None: unsigned)."""
    if not data.endswith(MAGIC):
        return data, None
    end = len(data) - len(MAGIC) - TRAILER.size
    if end < 0:
        raise SignatureFormatError("the signature trailer is cut short")
    _, _, id_type, _, _, length = TRAILER.unpack_from(data, end)
    if id_type != PKEY_ID_PKCS7:
        raise SignatureFormatError(f"signature of type {id_type}, not PKCS#7")
    if length > end:
        raise SignatureFormatError(f"signature of {length} bytes in a file of {len(data)}")
    pkcs7 = data[end - length:end]
    signer, serial, digest = _well_formed(_signer_info, pkcs7)
    return data[:end - length], ModuleSignature(signer, serial, digest, end - length, pkcs7)


def read_signature(data: bytes) -> ModuleSignature | None:
    """The signature appended to the module ``data``, or None when it has none."""
    return split_signature(data)[1]


def refusal_line(module: str, signature: ModuleSignature | None,
                 certificate: str | None = None) -> str:
    """What to tell a user whose kernel refused ``module`` for its signature (module.
    sig_enforce=1, or lockdown under Secure Boot): one line, with what to do."""
    if signature is None:
        return (f"{module}: unsigned: a kernel in lockdown (Secure Boot) refuses it; install "
                "a build of the patch signed with a key the kernel trusts")
    enrol, file = (certificate, certificate) if certificate else \
        ("the signer's certificate", "<its DER file>")
    return (f"{module}: the kernel does not trust its signer '{signature.signer}': enrol "
            f"{enrol} as a machine-owner key (mokutil --import {file}, reboot, confirm in "
            "MokManager), then run kpatch load")


def certificate_key_id(der: bytes) -> tuple[str, str | None]:
    """A DER X.509 certificate's subject common name (else organization) and subject key
    identifier in hex (None without the extension): how the kernel names the key."""
    return _well_formed(_certificate_key_id, der)


def _well_formed(read: Callable[[bytes], T], data: bytes) -> T:
    """``read(data)``, any structure it did not find where DER put it refused as one."""
    try:
        return read(data)
    except SignatureFormatError:
        raise
    except (ValueError, IndexError) as error:
        raise SignatureFormatError(f"not the DER structure expected ({error})") from None


def _certificate_key_id(der: bytes) -> tuple[str, str | None]:
    tbs = _children(_only(der, _SEQUENCE))[0]
    fields = _children(_expect(tbs, _SEQUENCE))
    if fields and fields[0][0] == _CONTEXT_0:  # explicit version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, extensions
    if len(fields) < 6:
        raise SignatureFormatError("a certificate with too few fields")
    subject = _name(fields[4])
    key_id = None
    for tag, body in fields[6:]:
        if tag != 0xA3:  # [3] extensions
            continue
        for _, extension in _children(_only(body, _SEQUENCE)):
            parts = _children(extension)
            if parts and _oid(parts[0]) == _OID_SUBJECT_KEY_ID:
                inner = _expect(parts[-1], _OCTET_STRING)
                key_id = _only(inner, _OCTET_STRING).hex()
    return subject, key_id


def _signer_info(pkcs7: bytes) -> tuple[str, str, str]:
    content_info = _children(_only(pkcs7, _SEQUENCE))
    if len(content_info) < 2 or _oid(content_info[0]) != _OID_SIGNED_DATA:
        raise SignatureFormatError("the signature is not a PKCS#7 SignedData")
    signed_data = _children(_only(_expect(content_info[1], _CONTEXT_0), _SEQUENCE))
    signer_infos = _expect(signed_data[-1], _SET)
    infos = _children(signer_infos)
    if not infos:
        raise SignatureFormatError("the signature has no signer")
    _, sid, digest_algorithm, *_ = _children(_expect(infos[0], _SEQUENCE))
    if sid[0] != _SEQUENCE:  # [0] subjectKeyIdentifier (sign-file -k)
        signer, serial = "", sid[1].hex()
    else:
        issuer, serial_number = _children(sid[1])[:2]
        signer = _name(issuer)
        raw = _expect(serial_number, _INTEGER)
        # DER pads a positive integer whose first bit is set with a zero byte; the serial
        # itself is what follows (as modinfo shows it).
        serial = (raw[1:] if len(raw) > 1 and raw[0] == 0 else raw).hex()
    digest_oid = _oid(_children(_expect(digest_algorithm, _SEQUENCE))[0])
    return signer, serial, HASH_OIDS.get(digest_oid, digest_oid)


def _name(element: tuple[int, bytes]) -> str:
    """An X.501 Name's common name, else its organization, else ''."""
    found: dict[str, str] = {}
    for _, rdn in _children(_expect(element, _SEQUENCE)):
        for _, attribute in _children((_SET, rdn)):
            parts = _children((_SEQUENCE, attribute))
            if len(parts) == 2:
                found.setdefault(_oid(parts[0]), _printable(parts[1][1]))
    return found.get(_OID_COMMON_NAME) or found.get(_OID_ORGANIZATION, "")


def _printable(value: bytes) -> str:
    """A name as messages may show it: whoever made the certificate chose its bytes, and
    root's kpatch prints them (no terminal escapes, no line breaks)."""
    return "".join(c if c.isprintable() else "?" for c in value.decode("utf-8", "replace"))


# --- DER: just enough to walk SEQUENCEs and SETs ---

def _read(data: bytes, at: int) -> tuple[int, bytes, int]:
    """The element at ``at``: its tag, its content, and where the next one starts."""
    if at + 2 > len(data):
        raise SignatureFormatError("a DER element is cut short")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or at + count > len(data):
            raise SignatureFormatError("a DER length is malformed")
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    if at + length > len(data):
        raise SignatureFormatError("a DER element runs past its end")
    return tag, data[at:at + length], at + length


def _children(element: tuple[int, bytes] | bytes) -> list[tuple[int, bytes]]:
    body = element[1] if isinstance(element, tuple) else element
    found, at = [], 0
    while at < len(body):
        tag, content, at = _read(body, at)
        found.append((tag, content))
    return found


def _only(data: bytes, tag: int) -> bytes:
    found, content, _ = _read(data, 0)
    if found != tag:
        raise SignatureFormatError(f"DER tag {found:#x} where {tag:#x} was expected")
    return content


def _expect(element: tuple[int, bytes], tag: int) -> bytes:
    if element[0] != tag:
        raise SignatureFormatError(f"DER tag {element[0]:#x} where {tag:#x} was expected")
    return element[1]


def _oid(element: tuple[int, bytes]) -> str:
    body = _expect(element, _OID)
    if not body:
        raise SignatureFormatError("an empty object identifier")
    arcs = [body[0] // 40, body[0] % 40] if body[0] < 80 else [2, body[0] - 80]
    value = 0
    for byte in body[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(map(str, arcs))
