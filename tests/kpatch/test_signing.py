"""Signed modules on the patched machine: a kernel that checks signatures refuses one whose
signer it does not trust, and kpatch says in one line what to enrol, changing nothing;
``kpatch info`` tells the signer, the certificate, lockdown and whether the key is trusted."""

from __future__ import annotations

import errno
import json
import tempfile
from pathlib import Path

import pytest

from kpatchbuild.base import modsig
from tests.kpatch.conftest import Machine
from tests.kpatch.fakekernel import RELEASE
from tests.support.signing import SigningFiles, appended_signature, make_key

CERTIFICATE = "/usr/share/kpatch/certs/kpatch-patch-cmdline.der"


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> SigningFiles:
    return make_key(tmp_path_factory.mktemp("keys"), "Team signing key")


def signed_module(machine: Machine, name: str, key: SigningFiles) -> Path:
    module = machine.module(name)
    with tempfile.TemporaryDirectory() as work:
        module.write_bytes(appended_signature(module.read_bytes(), key, Path(work)))
    return module


def checks_signatures(machine: Machine, *, lockdown: str = "none",
                      enforce: str = "Y") -> None:
    security = machine.kernel.path("sys/kernel/security")
    security.mkdir(parents=True, exist_ok=True)
    choices = " ".join(f"[{c}]" if c == lockdown else c
                       for c in ("none", "integrity", "confidentiality"))
    (security / "lockdown").write_text(choices + "\n")
    parameters = machine.kernel.path("sys/module/module/parameters")
    parameters.mkdir(parents=True, exist_ok=True)
    (parameters / "sig_enforce").write_text(enforce + "\n")


def installed_by_package(machine: Machine, module: Path, key: SigningFiles) -> None:
    assert machine.kpatch("install", str(module)).code == 0
    name = module.name.removesuffix(".ko")
    machine.kernel.path(f"var/lib/kpatch/{RELEASE}/{name}.json").write_text(json.dumps({
        "package": "kpatch-patch-cmdline", "version": "1", "recipe": "cmdline",
        "patches": [], "signature": {"signer": "Team signing key", "hash": "sha256",
                                     "certificate": CERTIFICATE}}))
    certificate = machine.kernel.path(CERTIFICATE.lstrip("/"))
    certificate.parent.mkdir(parents=True, exist_ok=True)
    certificate.write_bytes(key.der.read_bytes())


def test_an_unsigned_module_refused_under_sig_enforce_is_one_line_and_changes_nothing(
        machine: Machine) -> None:
    checks_signatures(machine)
    machine.kernel.refuse_insert = errno.EKEYREJECTED
    result = machine.kpatch("load", str(machine.module("lp_a")))
    assert result.code == 8
    assert result.err.strip() == (
        "kpatch: error: lp_a: unsigned: a kernel in lockdown (Secure Boot) refuses it; "
        "install a build of the patch signed with a key the kernel trusts [the kernel checks "
        "signatures: module.sig_enforce; nothing was changed]")
    assert machine.kernel.modules == []


def test_an_untrusted_signer_names_the_certificate_to_enrol(machine: Machine,
                                                            team: SigningFiles) -> None:
    checks_signatures(machine, lockdown="integrity", enforce="N")
    installed_by_package(machine, signed_module(machine, "lp_a", team), team)
    # In lockdown the kernel answers an untrusted module with EPERM.
    machine.kernel.refuse_insert = errno.EPERM
    result = machine.kpatch("load", "lp_a")
    assert result.code == 8
    assert result.err.strip() == (
        "kpatch: error: lp_a: the kernel does not trust its signer 'Team signing key': enrol "
        f"{CERTIFICATE} as a machine-owner key (mokutil --import {CERTIFICATE}, reboot, "
        "confirm in MokManager), then run kpatch load [the kernel checks signatures: "
        "lockdown; nothing was changed]")
    assert machine.kernel.modules == []
    assert machine.kernel.path(f"var/lib/kpatch/{RELEASE}/lp_a.ko").is_file()


def test_eperm_without_lockdown_is_not_called_a_signature_problem(machine: Machine) -> None:
    checks_signatures(machine, enforce="N")
    machine.kernel.refuse_insert = errno.EPERM
    result = machine.kpatch("load", str(machine.module("lp_a")))
    assert result.code == 7
    assert "the kernel refused to load it: EPERM" in result.err


def test_load_all_at_boot_reports_the_untrusted_patch_and_loads_the_rest(
        machine: Machine, team: SigningFiles) -> None:
    checks_signatures(machine)
    installed_by_package(machine, signed_module(machine, "lp_a", team), team)
    machine.kernel.refuse_insert = errno.EKEYREJECTED
    result = machine.kpatch("load", "--all")
    assert result.code == 8
    assert "lp_a: the kernel does not trust its signer 'Team signing key'" in result.err


def test_info_names_signer_certificate_lockdown_and_trust(machine: Machine,
                                                          team: SigningFiles) -> None:
    checks_signatures(machine, lockdown="integrity", enforce="N")
    installed_by_package(machine, signed_module(machine, "lp_a", team), team)
    state = json.loads(machine.kpatch("info", "--json", "lp_a").out)
    assert state["kernel_checks_signatures"] == {"lockdown": "integrity",
                                                 "sig_enforce": False}
    signature = state["signature"]
    assert (signature["signer"], signature["hash"], signature["certificate"]) == (
        "Team signing key", "sha256", CERTIFICATE)
    assert signature["trusted"].startswith("unknown (/proc/keys not readable")

    _, key_id = modsig.certificate_key_id(team.der.read_bytes())
    assert key_id is not None
    keys = machine.kernel.path("proc/keys")
    keys.write_text("0b9d7b55 I------     1 perm 1f030000     0     0 asymmetri Debian Secure "
                    "Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1: X509.rsa 4c6c0d1f []\n")
    assert json.loads(machine.kpatch("info", "--json", "lp_a").out)["signature"]["trusted"] \
        == "no"
    # The kernel names the key after the subject's organization and common name.
    keys.write_text(keys.read_text() + f"2f1a8c03 I------     1 perm 1f010000     0     0 "
                    f"asymmetri Example Security: Team signing key: {key_id}: X509.rsa "
                    f"{key_id[-8:]} []\n")
    human = machine.kpatch("info", "lp_a").out
    assert "kernel:      lockdown: integrity; no module.sig_enforce" in human
    assert "signed by:   Team signing key (sha256, serial" in human
    assert f"certificate: {CERTIFICATE} (mokutil --import it to enrol the signer)" in human
    assert "trusted:     yes" in human


def test_info_of_an_unsigned_module_says_lockdown_refuses_it(machine: Machine) -> None:
    human = machine.kpatch("info", str(machine.module("lp_a"))).out
    assert "signature:   unsigned: a kernel in lockdown (Secure Boot) refuses it" in human
    assert "kernel:      lockdown: unknown (no securityfs); the kernel checks no signatures" \
        in human


def test_a_malformed_signature_is_refused_on_reading(machine: Machine) -> None:
    module = machine.module("lp_a")
    module.write_bytes(module.read_bytes() + modsig.TRAILER.pack(0, 0, 2, 0, 0, 1 << 30)
                       + modsig.MAGIC)
    result = machine.kpatch("info", str(module))
    assert result.code == 1
    assert "its appended signature is malformed" in result.err


@pytest.mark.parametrize(("verified", "said"), [
    (True, "yes (the kernel verified it when loading it)"),
    (False, "no (the kernel loaded it unverified: taint E)")])
def test_a_loaded_modules_taint_is_the_kernels_word_on_its_signature(
        machine: Machine, team: SigningFiles, verified: bool, said: str) -> None:
    checks_signatures(machine, enforce="N")
    machine.kernel.verifies_signatures = verified
    installed_by_package(machine, signed_module(machine, "lp_a", team), team)
    assert machine.kpatch("load", "lp_a").code == 0
    state = json.loads(machine.kpatch("info", "--json", "lp_a").out)
    assert state["signature"]["trusted"] == said


@pytest.mark.parametrize("named", ["/usr/share/kpatch/certs/../../../../etc/passwd",
                                   "/etc/kpatch-patch-cmdline.der",
                                   "/usr/share/kpatch/certs/sub/x.der"])
def test_metadata_naming_a_certificate_elsewhere_is_ignored(machine: Machine,
                                                            team: SigningFiles,
                                                            named: str) -> None:
    checks_signatures(machine)
    machine.kernel.refuse_insert = errno.EKEYREJECTED
    module = signed_module(machine, "lp_a", team)
    for path in (named, CERTIFICATE):  # the one named, and the good one, both there
        target = machine.kernel.path(path.lstrip("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_bytes(team.der.read_bytes())
    module.with_suffix(".json").write_text(json.dumps({"signature": {"certificate": named}}))
    result = machine.kpatch("load", str(module))
    assert result.code == 8
    assert "enrol the signer's certificate as a machine-owner key (mokutil --import <its " \
           "DER file>" in result.err
