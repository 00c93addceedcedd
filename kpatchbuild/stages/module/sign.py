"""The module's signature: the last step of the module stage.

A kernel in lockdown (Secure Boot) or booted with ``module.sig_enforce=1`` loads only
modules signed by a key it trusts. The linked module is cached unsigned; signing makes the
cell's copy, so a new key re-signs without relinking.

- **Who signs**: a :class:`SigningKey`, a PEM key file or a PKCS#11 URI (``pkcs11:token=..;
  object=..``: the key stays in its token or HSM) with its X.509 certificate (PEM or DER).
  A key file must be the user's own and closed to others. The key is only ever named to
  ``sign-file``: never copied, logged or recorded (a URI's ``pin-value`` is shown as
  ``***``).
- **With what**: the target's own ``scripts/sign-file``, compiled from its tree's source for
  this host (a tree prepared in a build root holds a binary of another release's libraries,
  and a token's PKCS#11 module lives on this host), and the kernel's own hash,
  ``CONFIG_MODULE_SIG_HASH``. sign-file reads a PKCS#11 key through OpenSSL's ``pkcs11``
  provider (OpenSSL 3), set up by the environment as for the kernel's own build
  (``OPENSSL_CONF``, ``OPENSSL_MODULES``); the token's PIN is in the URI or the provider's
  configuration (the provider path of sign-file reads no ``KBUILD_SIGN_PIN``).
- **Checked**: the signed module's PKCS#7 signature is verified against the certificate
  with ``openssl cms`` before it is published: a certificate that is not the key's is
  caught here, not by a kernel refusing the module on a user's machine.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
import tempfile
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base import locks, modsig, process
from kpatchbuild.base.commands import run_step, say
from kpatchbuild.base.errors import KpbError
from kpatchbuild.base.private import data_home, private_directory, private_file
from kpatchbuild.base.store import Store, content_key, sha256_file

KEY_ENV = "KPATCHBUILD_MODULE_KEY"
CERT_ENV = "KPATCHBUILD_MODULE_CERT"
UNSIGNED = "unsigned: a kernel in lockdown (Secure Boot) refuses it"
TOOL_KIND = "signtool"
TOOL_FORMAT = 1
SIGN_TIMEOUT = 120.0  # seconds: a token may ask a slow HSM, never this long
DEVELOPMENT_SUBJECT = "kpatchbuild development key"

_PIN = re.compile(r"(pin-value=)[^;?&]*", re.IGNORECASE)
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


class SigningError(KpbError):
    """The module cannot be signed as asked: a key, certificate or tool to fix."""

    exit_code = 7


@dataclass(frozen=True)
class SigningKey:
    """A module signing key and its certificate, and who named them (for messages)."""

    key: str  # a PEM key file's absolute path, or a pkcs11: URI
    certificate: Path
    named_by: str  # "$KPATCHBUILD_MODULE_KEY", "recipe.yaml:7: signing", ...
    development: bool = False  # kpatchbuild's own key, made on first use

    @property
    def in_token(self) -> bool:
        return self.key.startswith("pkcs11:")

    @property
    def shown(self) -> str:
        """The key as messages and records name it: a URI's PIN hidden."""
        return _PIN.sub(r"\1***", self.key) if self.in_token else self.key

    def checked(self) -> Certificate:
        """The certificate, read; the key file checked to be closed to others."""
        if not self.in_token:
            private_file(Path(self.key), what="the module signing key", error=SigningError,
                         remedy=f"name a key of your own ({self.named_by})")
        return read_certificate(self.certificate, named_by=self.named_by)

    def identity(self) -> dict[str, str]:
        """What a signature depends on, for the step's up-to-date check: the key's name
        and the certificate's content, never the key's."""
        try:
            certificate = sha256_file(self.certificate)
        except OSError:
            certificate = "missing"  # made (or refused) when the step runs
        return {"key": self.shown, "certificate": certificate}


@dataclass(frozen=True)
class Certificate:
    """A signing certificate as the kernel names its key: ``<signer>: <key_id>``."""

    path: Path
    der: bytes
    signer: str
    key_id: str | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    def pem(self) -> bytes:
        body = "\n".join(textwrap.wrap(base64.b64encode(self.der).decode(), 64))
        return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()


@dataclass(frozen=True)
class Signature:
    """A signed module's signature, as the reports name it."""

    signer: str
    hash: str
    key_id: str | None
    certificate_sha256: str

    def to_json(self) -> dict[str, str | None]:
        return {"signer": self.signer, "hash": self.hash, "key_id": self.key_id,
                "certificate_sha256": self.certificate_sha256}


def read_certificate(path: Path, *, named_by: str) -> Certificate:
    """The X.509 certificate at ``path`` (PEM or DER), or one line saying what is wrong."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningError(f"{path}: the module signing certificate not found "
                           f"({named_by}); name the key's certificate") from None
    except OSError as error:
        raise SigningError(f"{path}: cannot read the module signing certificate: "
                           f"{error.strerror}") from None
    if pem := _PEM_CERT.search(data):
        try:
            data = base64.b64decode(b"".join(pem[1].split()), validate=True)
        except binascii.Error:
            data = b""
    try:
        signer, key_id = modsig.certificate_key_id(data)
    except modsig.SignatureFormatError as error:
        raise SigningError(f"{path}: not an X.509 certificate in PEM or DER ({error}); "
                           f"name the key's certificate ({named_by})") from None
    return Certificate(path, data, signer, key_id)


# --- the development key ---

def development_home() -> Path:
    """``${XDG_DATA_HOME:-$HOME/.local/share}/kpatchbuild/module-key``: outside the cache,
    which is thrown away, while a kernel that trusts the key must keep trusting it."""
    return data_home("module-key")


def development_key() -> SigningKey:
    """kpatchbuild's own signing key, for kernels built here to trust: not for modules that
    ship (a security team names its own). Made by :func:`made` on first use."""
    home = development_home()
    return SigningKey(str(home / "key.pem"), home / "cert.pem", "the development key",
                      development=True)


def made(key: SigningKey) -> SigningKey:
    """``key``, the development key made now if it is that one and not made yet."""
    if not key.development:
        return key
    home = private_directory(development_home(), what="the development key's home",
                             error=SigningError,
                             remedy=f"name a key of your own with ${KEY_ENV} and ${CERT_ENV}")
    # Two cells at once (doit -n 2) must not each make half of a pair.
    with locks.exclusive(home / ".making.lock"):
        if not key.certificate.is_file():
            _make_development_key(home, key)
    return key


def _make_development_key(home: Path, key: SigningKey) -> None:
    say(f"  making kpatchbuild's development module signing key in {home} (once)")
    with tempfile.TemporaryDirectory(dir=home) as work:
        new_key, new_cert = Path(work) / "key.pem", Path(work) / "cert.pem"
        _self_signed(new_key, new_cert, f"/O=kpatchbuild/CN={DEVELOPMENT_SUBJECT}",
                     bits=4096, days=36500, what="making the development key",
                     extensions=("basicConstraints=critical,CA:FALSE",
                                 "keyUsage=digitalSignature", "extendedKeyUsage=codeSigning"))
        os.replace(new_key, key.key)
        os.replace(new_cert, key.certificate)  # last: a certificate means a whole pair


def throwaway_key(directory: Path) -> SigningKey:
    """A key made now in ``directory`` and trusted by no kernel: what a proof signs the copy
    with that the kernel must refuse."""
    key, cert = directory / "throwaway.key", directory / "throwaway.pem"
    _self_signed(key, cert, "/CN=kpatchbuild throwaway key (untrusted)", bits=2048, days=2,
                 what="making a throwaway key")
    return SigningKey(str(key), cert, "the proof's throwaway key")


def _self_signed(key: Path, certificate: Path, subject: str, *, bits: int, days: int,
                 what: str, extensions: tuple[str, ...] = ()) -> None:
    """A new RSA key at ``key`` (mode 0600) and its self-signed certificate (PEM)."""
    process.run(["openssl", "req", "-new", "-x509", "-newkey", f"rsa:{bits}", "-nodes",
                 "-sha256", "-days", str(days), "-batch", "-subj", subject,
                 *(item for extension in extensions for item in ("-addext", extension)),
                 "-keyout", key, "-out", certificate],
                error=SigningError, what=what, missing="openssl not found: install openssl")
    key.chmod(0o600)


def named_key(environ: Mapping[str, str]) -> SigningKey | None:
    """The key the environment names (``$KPATCHBUILD_MODULE_KEY`` and
    ``$KPATCHBUILD_MODULE_CERT``, which ``doit build module_key=.. module_cert=..`` set),
    or None; one of the two without the other is refused."""
    key, cert = environ.get(KEY_ENV, ""), environ.get(CERT_ENV, "")
    if not key and not cert:
        return None
    if not key or not cert:
        given, missing = (KEY_ENV, CERT_ENV) if key else (CERT_ENV, KEY_ENV)
        raise SigningError(f"${given} is set but ${missing} is not: a module is signed with "
                           "a key and its certificate; set both (or neither)")
    if not key.startswith("pkcs11:"):
        key = str(Path(key).expanduser().absolute())
    return SigningKey(key, Path(cert).expanduser().absolute(), f"${KEY_ENV}")


# --- signing ---

def module_hash(config: Path) -> str | None:
    """The kernel's module signature hash (``CONFIG_MODULE_SIG_HASH``); None when it
    checks no module signatures (no ``CONFIG_MODULE_SIG``)."""
    values = dict(re.findall(r'^(CONFIG_MODULE_SIG(?:_HASH)?)=(.*)$', config.read_text(),
                             re.M))
    if values.get("CONFIG_MODULE_SIG") != "y":
        return None
    return values.get("CONFIG_MODULE_SIG_HASH", '"sha256"').strip('"') or "sha256"


def sign_file_tool(store: Store, tree: Path) -> Path:
    """The target's ``scripts/sign-file``, compiled for this host from ``tree``'s source
    (kept in the store: one per source and host compiler)."""
    sources = [tree / "scripts/sign-file.c", *[p for p in [tree / "scripts/ssl-common.h"]
                                              if p.is_file()]]
    if not sources[0].is_file():
        raise SigningError(f"{tree}: no scripts/sign-file.c in the kernel's tree: its "
                           "modules cannot be signed here")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SigningError("signing needs the target's sign-file compiled for this host, and "
                           "there is no C compiler: install gcc and OpenSSL's headers "
                           "(libssl-dev)")
    version = process.run([compiler, "--version"], error=SigningError).stdout.splitlines()[0]
    key = content_key(TOOL_KIND, TOOL_FORMAT, version, [sha256_file(p) for p in sources])

    def build(work: Path) -> None:
        log = store.log_path(f"signtool-{key[:12]}")
        log.unlink(missing_ok=True)
        status = run_step([compiler, "-O2", "-o", work / "sign-file", sources[0],
                           f"-I{tree / 'scripts'}", "-lcrypto"], step="compile sign-file",
                          log=log, check=False)
        if status != 0:
            raise SigningError(f"compiling {sources[0]} for this host failed (install "
                               f"OpenSSL's headers: libssl-dev); log: {log}")

    return store.make(TOOL_KIND, key, {"compiler": version}, build).path / "sign-file"


def sign_module(unsigned: Path, signed: Path, key: SigningKey, *, tool: Path, hash: str,
                log: Path) -> Signature:
    """``unsigned`` signed into ``signed`` (replaced whole, or left as it was), checked
    against the key's certificate."""
    certificate = key.checked()
    partial = signed.with_name(f".{signed.name}.signing")
    shutil.copyfile(unsigned, partial)
    try:
        with open(log, "a") as sink:
            sink.write(f"\n$ sign-file {hash} {key.shown} {key.certificate} {signed.name}\n")
        result = process.run(
            [tool, hash, key.key, key.certificate, partial], check=False, error=SigningError,
            what=f"sign-file with {key.shown}", timeout=SIGN_TIMEOUT,
            # A token's provider that hangs (SoftHSM under a provider loaded late deadlocks
            # in C_OpenSession) must not hang the build.
            hint="a PKCS#11 provider loaded on demand can deadlock with its token (SoftHSM): "
                 "load it from OPENSSL_CONF with 'pkcs11-module-load-behavior = early'"
            if key.in_token else "")
        if result.returncode != 0:
            complaint = process.last_complaint(result)
            with open(log, "a") as sink:
                sink.write(f"{result.stdout}{result.stderr}")
            raise SigningError(_explain_refusal(key, complaint, result.stderr, log))
        signature = verify_module(partial, certificate)
        if signature.hash != hash:
            raise SigningError(f"{signed.name}: signed with {signature.hash}, not the "
                               f"kernel's {hash}")
        os.replace(partial, signed)
        return signature
    finally:
        partial.unlink(missing_ok=True)


def _explain_refusal(key: SigningKey, complaint: str, output: str, log: Path) -> str:
    if "does not match certificate" in output or "key values mismatch" in output:
        return (f"the module signing certificate {key.certificate} is not the key "
                f"{key.shown}'s (OpenSSL: the private key does not match the certificate); "
                f"name the certificate of the signing key ({key.named_by}); log: {log}")
    if key.in_token and ("pkcs11" in output.lower() or "OSSL_STORE" in output):
        return (f"sign-file could not use the PKCS#11 key {key.shown} ({complaint}): OpenSSL "
                "needs its pkcs11 provider (Debian 13: apt-get install pkcs11-provider; "
                "Debian 12: from bookworm-backports, or OPENSSL_MODULES pointing at its "
                f"pkcs11.so), the token's module, and its PIN in the URI (pin-source=file:...); "
                f"log: {log}")
    return (f"sign-file refused the key {key.shown} ({key.named_by}): {complaint}; is it "
            f"the PEM private key of {key.certificate}? log: {log}")


def verify_module(module: Path, certificate: Certificate) -> Signature:
    """The module's appended signature, verified against ``certificate`` with OpenSSL
    (as the kernel would with that key trusted); one line when it does not verify."""
    try:
        content, signature = modsig.split_signature(module.read_bytes())
    except modsig.SignatureFormatError as error:
        raise SigningError(f"{module}: its signature is malformed: {error}") from None
    if signature is None:
        raise SigningError(f"{module}: carries no signature")
    with tempfile.TemporaryDirectory(prefix="kpb-verify-") as work:
        files = Path(work)
        (files / "content").write_bytes(content)
        (files / "signature.p7").write_bytes(signature.pkcs7)
        (files / "certificate.pem").write_bytes(certificate.pem())
        result = process.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER",
                              "-in", files / "signature.p7", "-content", files / "content",
                              "-certfile", files / "certificate.pem", "-nointern",
                              "-noverify", "-out", os.devnull],
                             check=False, error=SigningError,
                             missing="openssl not found: install openssl")
    if result.returncode != 0:
        raise SigningError(
            f"{module.name}: its signature by '{signature.signer}' does not verify against "
            f"{certificate.path} ('{certificate.signer}'): the certificate is not the key's; "
            "name the certificate of the signing key")
    return Signature(signature.signer, signature.hash, certificate.key_id, certificate.sha256)
