"""A SoftHSM token holding a key generated in it, and OpenSSL set up to sign with it.

Debian's softhsm2 is the token, opensc's pkcs11-tool generates the key pair inside it, and
OpenSSL reaches it through the pkcs11 provider: the host's when installed (Debian 13's
pkcs11-provider), else Debian 12's from bookworm-backports, downloaded with a private apt
state (its index verified with Debian's archive keyring) and unpacked into the store. The
provider is loaded from an OPENSSL_CONF with ``pkcs11-module-load-behavior = early`` (loaded
on demand it deadlocks with SoftHSM, which uses OpenSSL itself, in C_OpenSession) and
``pkcs11-module-quirks = no-deinit no-atfork`` (else every command crashes on exit, when
SoftHSM's OpenSSL is torn down under the provider).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base.store import Store
from tests.support.chroots import MIRROR

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
HOST_PROVIDER = Path("/usr/lib/x86_64-linux-gnu/ossl-modules/pkcs11.so")
BACKPORTS = "bookworm-backports"
PIN = "1234"


class TokenUnavailable(Exception):
    """What the token needs is missing from this host: the message says what."""


@dataclass(frozen=True)
class Token:
    environment: dict[str, str]  # SOFTHSM2_CONF and OPENSSL_CONF, for sign-file and openssl
    key_uri: str  # the private key, with its PIN
    certificate: Path  # self-signed by the token's key


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise TokenUnavailable(f"{' '.join(argv[:3])} failed: {result.stderr.strip()}")
    return result.stdout


def provider(store: Store) -> Path:
    """OpenSSL's pkcs11 provider: the host's, else bookworm-backports' (kept in the store)."""
    if HOST_PROVIDER.is_file():
        return HOST_PROVIDER

    def fetch(work: Path) -> None:
        state = work / "apt"
        for directory in ("lists/partial", "cache/archives/partial", "etc/preferences.d"):
            (state / directory).mkdir(parents=True)
        (state / "sources.list").write_text(f"deb {MIRROR} {BACKPORTS} main\n")
        (state / "status").write_text("")
        options = [f"-oDir::Etc::SourceList={state / 'sources.list'}",
                   "-oDir::Etc::SourceParts=-", f"-oDir::Etc::Preferences={state}/none",
                   f"-oDir::Etc::PreferencesParts={state / 'etc/preferences.d'}",
                   f"-oDir::State::Lists={state / 'lists'}",
                   f"-oDir::State::Status={state / 'status'}",
                   f"-oDir::Cache={state / 'cache'}", "-oAPT::Sandbox::User=root",
                   "-oDebug::NoLocking=1"]
        _run(["apt-get", *options, "update"])
        subprocess.run(["apt-get", *options, "download", f"pkcs11-provider/{BACKPORTS}"],
                       cwd=work, check=True, capture_output=True, timeout=120)
        deb = next(work.glob("pkcs11-provider_*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(work / "root")])
        shutil.rmtree(state)

    artifact = store.make("test-pkcs11-provider", "bookworm-backports-1",
                          {"suite": BACKPORTS}, fetch)
    return artifact.path / "root" / HOST_PROVIDER.relative_to("/")


def make_token(store: Store, where: Path, label: str = "kpb") -> Token:
    """A fresh token under ``where`` holding an RSA key pair made in it, and a certificate
    the token's key signed."""
    for tool in ("softhsm2-util", "pkcs11-tool"):
        if shutil.which(tool) is None:
            raise TokenUnavailable(f"{tool} is not installed (./run test installs softhsm2 "
                                   "and opensc)")
    if not SOFTHSM_MODULE.is_file():
        raise TokenUnavailable(f"{SOFTHSM_MODULE} missing: install softhsm2")
    where.mkdir(parents=True, exist_ok=True)
    (where / "tokens").mkdir()
    (where / "softhsm2.conf").write_text(f"directories.tokendir = {where / 'tokens'}\n"
                                         "objectstore.backend = file\nlog.level = ERROR\n")
    (where / "openssl.cnf").write_text(f"""openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = {provider(store)}
pkcs11-module-path = {SOFTHSM_MODULE}
pkcs11-module-load-behavior = early
pkcs11-module-quirks = no-deinit no-atfork
activate = 1
""")
    environment = {"SOFTHSM2_CONF": str(where / "softhsm2.conf"),
                   "OPENSSL_CONF": str(where / "openssl.cnf")}
    # The token's own tools use OpenSSL too: they must not load the provider that uses
    # them (pkcs11-tool aborts).
    plain = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
             "SOFTHSM2_CONF": environment["SOFTHSM2_CONF"]}
    env = {**plain, **environment}
    _run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN,
          "--so-pin", "5678"], plain)
    _run(["pkcs11-tool", "--module", str(SOFTHSM_MODULE), "--token-label", label, "--login",
          "--pin", PIN, "--keypairgen", "--key-type", "rsa:2048", "--label", "modules",
          "--id", "01"], plain)
    key_uri = f"pkcs11:token={label};object=modules;type=private?pin-value={PIN}"
    certificate = where / "token.pem"
    _run(["openssl", "req", "-new", "-x509", "-key", key_uri, "-days", "30",
          "-subj", "/O=Example Security/CN=Token signing key", "-out", str(certificate)], env)
    return Token(environment, key_uri, certificate)
