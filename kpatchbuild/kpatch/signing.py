"""Whether the running kernel will take a module's signature, and what to say when it does not.

A kernel checks signatures when it is in lockdown (Secure Boot: ``/sys/kernel/security/
lockdown`` shows ``[integrity]`` or ``[confidentiality]``) or booted with
``module.sig_enforce=1`` (``/sys/module/module/parameters/sig_enforce`` reads ``Y``). It
trusts the keys of its built-in, secondary, platform and machine keyrings (keys enrolled
with mokutil land in the last, on kernels with ``CONFIG_INTEGRITY_MACHINE_KEYRING``); root
reads them in ``/proc/keys``, each X.509 key named ``<common name>: <subject key id>``.

A refusal for the signature (``EKEYREJECTED`` under module.sig_enforce, ``EPERM`` in
lockdown; ``ENOKEY`` where the key is missing) leaves nothing behind: the patch stays
installed, and a ``kpatch load`` or the next boot loads it once the signer is trusted.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base import modsig
from kpatchbuild.kpatch.errors import UntrustedSignatureError
from kpatchbuild.kpatch.modfile import ModuleFile
from kpatchbuild.kpatch.system import System

LOCKDOWN = "/sys/kernel/security/lockdown"
SIG_ENFORCE = "/sys/module/module/parameters/sig_enforce"
KEYS = "/proc/keys"
CERTIFICATES = "/usr/share/kpatch/certs"
SIGNATURE_ERRNOS = (errno.EKEYREJECTED, errno.ENOKEY)

_X509_KEY = re.compile(r"^(?P<name>.*): (?P<key_id>[0-9a-f]+): X509\.")


@dataclass(frozen=True)
class KernelChecks:
    """How the running kernel treats module signatures, where it can be read."""

    lockdown: str | None  # "none", "integrity", "confidentiality"; None: not readable
    enforced: bool | None  # module.sig_enforce; None: not readable (no CONFIG_MODULE_SIG)

    @property
    def checks_signatures(self) -> bool:
        return bool(self.enforced) or self.lockdown in ("integrity", "confidentiality")


def kernel_checks(system: System) -> KernelChecks:
    text = system.read_attribute(system.path(LOCKDOWN))
    selected = re.search(r"\[(\w+)\]", text or "")
    enforce = system.read_attribute(system.path(SIG_ENFORCE))
    return KernelChecks(selected[1] if selected else None,
                        None if enforce is None else enforce == "Y")


def trusted_key_names(system: System) -> list[tuple[str, str]] | None:
    """(common name, subject key id) of every X.509 key the caller can see in /proc/keys;
    None when it cannot be read."""
    text = system.read_attribute(system.path(KEYS))
    if text is None:
        return None
    found = []
    for line in text.splitlines():
        fields = line.split(None, 8)
        if len(fields) == 9 and fields[7].startswith("asymmetri"):
            match = _X509_KEY.match(fields[8])
            if match:
                found.append((match["name"], match["key_id"]))
    return found


def certificate_of(system: System, metadata: dict[str, object] | None) -> Path | None:
    """The signer's certificate the module's package ships (named in its metadata), if it
    is there under /usr/share/kpatch/certs."""
    signature = metadata.get("signature") if metadata else None
    named = signature.get("certificate") if isinstance(signature, dict) else None
    # Only a file directly in the certificates' directory: the metadata beside a module
    # given by path is not the package's, and must not point root's kpatch elsewhere.
    if not isinstance(named, str) or Path(named).parent != Path(CERTIFICATES) \
            or Path(named).name in ("", ".", "..") or not named.endswith(".der"):
        return None
    path = system.path(named)
    return path if path.is_file() and not path.is_symlink() else None


def signer_trusted(system: System, module: ModuleFile, certificate: Path | None) -> str:
    """"yes", "no" or "unknown (why)": whether the kernel trusts the module's signer.

    A loaded module the kernel did not taint 'E' passed its signature check: that is the
    kernel's own word. Otherwise the signer is looked up among the keys in /proc/keys, by
    the certificate's subject key identifier when the package shipped it (the kernel names
    a key "<organization>: <common name>: <key id>", or "<common name>: <key id>"), else by
    name."""
    if module.signature is None:
        return "no (unsigned)"
    loaded = system.loaded_module(module.name)
    if loaded is not None and kernel_checks(system).enforced is not None:
        return "no (the kernel loaded it unverified: taint E)" if "E" in loaded.taint \
            else "yes (the kernel verified it when loading it)"
    keys = trusted_key_names(system)
    if keys is None:
        return f"unknown ({KEYS} not readable: run as root)"
    if certificate is not None:
        try:
            _, key_id = modsig.certificate_key_id(certificate.read_bytes())
        except (OSError, modsig.SignatureFormatError):
            key_id = None
        if key_id is not None:
            return "yes" if any(found == key_id for _, found in keys) else "no"
    signer = module.signature.signer
    named = any(name == signer or name.endswith(f": {signer}") for name, _ in keys)
    return "yes (a key of that name)" if named else "no"


def shown_certificate(system: System, certificate: Path | None) -> str | None:
    """The certificate as the user should type it: its path on the system."""
    if certificate is None:
        return None
    return "/" + str(certificate.relative_to(system.root)).lstrip("/")


def refusal(system: System, module: ModuleFile, error: OSError,
            metadata: dict[str, object] | None) -> UntrustedSignatureError | None:
    """The one-line error for a load the kernel refused for the module's signature; None
    when the refusal was for something else."""
    checks = kernel_checks(system)
    for_signature = error.errno in SIGNATURE_ERRNOS or (
        error.errno == errno.EPERM and checks.lockdown in ("integrity", "confidentiality"))
    if not for_signature:
        return None
    certificate = shown_certificate(system, certificate_of(system, metadata))
    why = "lockdown" if checks.lockdown in ("integrity", "confidentiality") else \
        "module.sig_enforce"
    line = modsig.refusal_line(module.name, module.signature, certificate)
    return UntrustedSignatureError(f"{line} [the kernel checks signatures: {why}; nothing "
                                   "was changed]")
