"""The customer's workflow in a booted Debian system, 12 and 13: apt install a patch package,
reboot, apt upgrade to a newer patch, boot a kernel the package has no module for, boot with
kpatch.enable=0, apt remove and purge.

The packages are made by ``doit package`` of the default recipe (version 1, then version 2
with another marker) on the release's cloud kernel (Debian 12's 6.1, Debian 13's 6.12), in a
cache of the test's own (seeded with the project cache's downloads and build roots), so the
project's records of the default recipe stay as they are, and signed with a repository key
of the test's own: the guest installs that key from its release's repository disk, as the
README tells a user to, and apt verifies the repository with it. Debian 13's packages are
also checked with trixie's own lintian. The guest (tests/support/debian_guest.py) boots
Debian's own kernels and initramfs from its disk; it has the cell's kernel and another one
of its release installed (Debian 12: the 6.12 cloud kernel; Debian 13: the newest other 6.12
cloud kernel trixie serves).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kpatchbuild.base import roots
from kpatchbuild.base.store import Store, default_root
from kpatchbuild.graph.recipe import DebianKernel
from kpatchbuild.stages.fetch import debian
from kpatchbuild.stages.module import sign
from kpatchbuild.stages.package.repository import INSTALLED_KEYRING, KEY_HOME_ENV, KEYRING
from tests.conftest import PROJECT, run_doit
from tests.stages.package.test_packages import lintian
from tests.support import secure_boot
from tests.support.debian_guest import (
    REPOSITORY_MOUNT,
    Boot,
    DebianGuest,
    guest_root,
    suite_chroot,
)
from tests.support.signing import make_key

pytestmark = pytest.mark.kernel

SEEDED_KINDS = ("fetch-deb", "fetch-kernel", "fetch-source", "fetch-index", "fetch-module",
                "buildroot", "apt")


@dataclass(frozen=True)
class GuestRelease:
    """One Debian release's run of the workflow."""

    suite: str
    cell: str  # the default recipe's cell whose packages the guest installs
    # Also what is the same on every release (3 minutes more): the install step rebuilding
    # the running kernel's initramfs with kpatch's hook, which then loads the patch at boot,
    # and a boot with kpatch.enable=0. Debian 12's run proves those.
    whole: bool

    def other_kernel(self, store: Store, running: str) -> debian.DebianPackage:
        """A kernel image of the release the packages carry no module for."""
        if self.suite == "bookworm":
            return debian.resolve_release(DebianKernel(None, "6.12", "cloud-amd64", "12"),
                                          store).packages["image"]
        index = debian.index_for(store, "13")
        pattern = debian.image_pattern("6.12", "cloud-amd64")
        names = [n for n in index.apt_cache("pkgnames", "linux-image-6.12.").split()
                 if pattern.match(n) and n != f"linux-image-{running}"]
        served = debian.available_versions(index, names)
        best = debian.newest([v for versions in served.values() for v in versions])
        name = next(n for n, versions in served.items() if best in versions)
        return debian.package_record(index, name, best)


RELEASES = (GuestRelease("bookworm", "debian12-6.1-cloud-amd64", whole=True),
            GuestRelease("trixie", "debian13-6.12-cloud-amd64", whole=False))

# Read the kpatch command's JSON in the guest: the names of the enabled patches, and of
# the modules installed for the running kernel.
HELPERS = """loaded_patches() {
    kpatch list --json | python3 -c 'import json, sys
print(" ".join(p["name"] for p in json.load(sys.stdin)["loaded"] if p["enabled"]))'
}
installed_patches() {
    kpatch list --json | python3 -c 'import json, os, sys
print(" ".join(json.load(sys.stdin)["installed"].get(os.uname().release, [])))'
}
unit_says() {
    journalctl -b -u kpatch.service --no-pager | grep -q "$1"
}
info_says() {
    kpatch info "$1" | grep -q "$2"
}
# Loaded at boot: from the initramfs (the unit then finds it loaded) or by the unit.
loaded_at_boot() {
    unit_says "$1: already loaded" || unit_says "loaded $1: patch enabled"
}
unit_clean() {
    systemctl is-active kpatch.service &&
        test "$(systemctl show -p Result --value kpatch.service)" = success
}
# apt-get update, shown; then whether it succeeded and said nothing of a repository it could
# not verify (of some apt only warns, and goes on): the offending lines are the failure.
apt_update() {
    echo "KPB-RUN: apt-get update"
    apt-get update > /tmp/apt-update.log 2>&1
    echo "apt-get update: exit $?" >> /tmp/apt-update.log
    sed 's/^/  | /' /tmp/apt-update.log
}
apt_verified() {
    unverified='^(W|E):|not signed|insecure|unauthenticated|NO_PUBKEY|EXPKEYSIG|expired'
    ! grep -Ei "$unverified" /tmp/apt-update.log &&
        { grep -qx 'apt-get update: exit 0' /tmp/apt-update.log ||
              { tail -n 3 /tmp/apt-update.log; false; }; }
}
"""

STEPS = {
    "install": f"""
check unpatched-before sh -c '! grep -q kpatch=1 /proc/cmdline'
check key-installed cp {REPOSITORY_MOUNT}/{KEYRING} {INSTALLED_KEYRING}
apt_update
check apt-verified apt_verified
show apt-get install -y kpatch-patch-cmdline
check patched-at-once grep -q kpatch=1 /proc/cmdline
show kpatch list
check listed-loaded test "$(loaded_patches)" = livepatch_cmdline
check listed-installed test "$(installed_patches)" = livepatch_cmdline
show kpatch info livepatch_cmdline
check info-names-package info_says livepatch_cmdline "^package: *kpatch-patch-cmdline 1+"
check manifest-installed test -s /var/lib/kpatch/$(uname -r)/livepatch_cmdline.manifest
""",
    # Part of the install step where the initramfs path is proven.
    "install-initramfs": """
# The kpatch package's trigger rebuilt only the newest kernel's initramfs: this one's too,
# so the next boot inserts the patch from the initramfs, through its checks.
show update-initramfs -u -k "$(uname -r)"
check initramfs-has-the-checks sh -c 'lsinitramfs /boot/initrd.img-$(uname -r) |
    grep -q "scripts/init-bottom/kpatch" && lsinitramfs /boot/initrd.img-$(uname -r) |
    grep -q "usr/bin/sha256sum"'
""",
    "reboot-upgrade": """
check patched-at-boot grep -q kpatch=1 /proc/cmdline
@LOADED_AT_BOOT@
check unit-clean unit_clean
show systemctl status kpatch.service --no-pager
show journalctl -b -u kpatch.service --no-pager -o cat
apt_update
check apt-verified apt_verified
show apt-get upgrade -y
check upgraded-at-once grep -q kpatch=2 /proc/cmdline
check old-patch-gone test ! -e /sys/kernel/livepatch/livepatch_cmdline
check old-module-gone test ! -e /sys/module/livepatch_cmdline
check new-patch-loaded test "$(loaded_patches)" = livepatch_cmdline_v2
check old-file-gone test ! -e /var/lib/kpatch/$(uname -r)/livepatch_cmdline.ko
""",
    "other-kernel": """
check running-other test "$(uname -r)" = "@OTHER@"
check unit-clean unit_clean
show journalctl -b -u kpatch.service --no-pager -o cat
check says-nothing-for-this-kernel unit_says "no patches installed for $(uname -r)"
check nothing-loaded test -z "$(ls /sys/kernel/livepatch)"
check no-failed-units test -z "$(systemctl --failed --no-legend)"
""",
    "disabled": """
check unit-skipped test "$(systemctl show -p ConditionResult --value kpatch.service)" = no
check nothing-loaded test -z "$(ls /sys/kernel/livepatch)"
check unpatched sh -c '! grep -q kpatch=2 /proc/cmdline'
""",
    "remove": """
check patched-at-boot grep -q kpatch=2 /proc/cmdline
check unit-clean unit_clean
show apt-get remove -y kpatch-patch-cmdline
check unpatched-at-once sh -c '! grep -q kpatch=2 /proc/cmdline'
check patch-gone test ! -e /sys/kernel/livepatch/livepatch_cmdline_v2
check module-gone test ! -e /sys/module/livepatch_cmdline_v2
check nothing-installed test -z "$(installed_patches)"
show apt-get purge -y kpatch-patch-cmdline
check purge-leaves-nothing test -z "$(find /var/lib/kpatch -type f)"
""",
}


def seeded_cache(path: Path) -> Path:
    """A cache of its own holding the project cache's downloads (hardlinked: immutable)."""
    path.mkdir(parents=True)
    for kind in SEEDED_KINDS:
        source = default_root() / kind
        if source.is_dir():
            subprocess.run(["cp", "-al", str(source), str(path / kind)], check=True)
    return path


def package(cache: Path, recipes: Path, key_home: Path, cell: str) -> None:
    env = {"KPATCHBUILD_CACHE": str(cache), "KPATCHBUILD_DOIT_DB": str(cache / "db"),
           "KPATCHBUILD_RECIPES": str(recipes), KEY_HOME_ENV: str(key_home)}
    done = run_doit("package", "recipe=cmdline", f"kernel={cell}", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "apt repository:" in done.stdout + done.stderr
    assert "trusted=yes" not in done.stdout + done.stderr


def debs(repository: Path) -> dict[str, Path]:
    return {path.name: path for path in (repository / "pool").glob("*.deb")}


def release_lintian(guest: GuestRelease, debs: list[Path]) -> dict[str, list[str]]:
    """lintian's errors and warnings per package, from the guest's own release: the host's
    for bookworm; for trixie, trixie's own, installed for the occasion in an overlay of its
    root (debootstrap cannot --include lintian's perl modules), which is gone after."""
    if guest.suite == "bookworm":
        return {deb.name: lintian(deb) for deb in debs}
    root = suite_chroot(Store(), guest.suite).root
    script = ("apt-get update -q >/dev/null && apt-get install -q -y --no-install-recommends "
              "lintian >/dev/null && for deb; do echo \"== $deb\"; "
              "lintian --no-tag-display-limit \"$deb\"; done")
    result = subprocess.run(roots.entering_command(
        root, ["sh", "-c", script, "lintian", *map(str, debs)], cwd=None,
        binds=[deb.parent for deb in debs], network=True), capture_output=True, text=True)
    found: dict[str, list[str]] = {}
    current = None
    for line in result.stdout.splitlines():
        if line.startswith("== "):
            current = Path(line[3:]).name
            found[current] = []
        elif current and line[:2] in ("E:", "W:"):
            found[current].append(line)
    assert sorted(found) == sorted(deb.name for deb in debs), result.stderr[-2000:]
    return found


@pytest.mark.parametrize("guest_release", RELEASES, ids=lambda r: r.suite)
def test_apt_install_reboot_upgrade_other_kernel_remove(tmp_path: Path,
                                                        guest_release: GuestRelease) -> None:
    cell = guest_release.cell
    cache = seeded_cache(tmp_path / "cache")
    recipes = tmp_path / "recipes"
    shutil.copytree(PROJECT / "recipes" / "cmdline", recipes / "cmdline")
    # The test's own repository key, not the user's (gpg-agent's socket is made in it: a
    # short path).
    key_home = tmp_path / "key"
    package(cache, recipes, key_home, cell)
    repository = cache / "package" / guest_release.suite  # that release's machines' one
    assert not [other for other in (cache / "package").iterdir()
                if other.is_dir() and other.name != guest_release.suite]
    first = debs(repository)
    assert {name.split("_")[0] for name in first} == {"kpatch", "kpatch-patch-cmdline"}
    published_v1 = tmp_path / "repository-v1"
    shutil.copytree(repository, published_v1, ignore=shutil.ignore_patterns("records"))

    # The security team's next version: another marker, version 2 (its module is then
    # livepatch_cmdline_v2, which replaces livepatch_cmdline atomically).
    recipe = recipes / "cmdline" / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("kpatch=1", "kpatch=2") + "version: 2\n")
    patch_file = recipes / "cmdline" / "cmdline.patch"
    patch_file.write_text(patch_file.read_text().replace("kpatch=1", "kpatch=2"))
    package(cache, recipes, key_home, cell)
    second = debs(repository)
    new = set(second) - set(first)
    assert [name.split("_")[0] for name in new] == ["kpatch-patch-cmdline"]
    assert release_lintian(guest_release, sorted(second.values())) == \
        {name: [] for name in second}
    # Signed by the same key: the one the guest installed from the first still verifies.
    assert (repository / KEYRING).read_bytes() == (published_v1 / KEYRING).read_bytes()

    store = Store()
    fetched = json.loads((cache / "work/cmdline" / cell / "fetch.json").read_text())
    release = fetched["kernel"]["release"]
    image = debian.fetch_package(store, debian.DebianPackage(
        **fetched["kernel"]["packages"]["image"]))
    other = guest_release.other_kernel(store, release)
    other_release = other.name.removeprefix("linux-image-")
    other_image = debian.fetch_package(store, other)

    started = time.monotonic()
    root = guest_root(store, [image, other_image], guest_release.suite)
    made = time.monotonic() - started
    steps = dict(STEPS)
    install = steps.pop("install-initramfs")
    if guest_release.whole:
        steps["install"] += install
        loaded_at_boot = 'check loaded-at-boot unit_says "livepatch_cmdline: already loaded"'
    else:
        # The kpatch package's trigger rebuilds the newest kernel's initramfs, which may be
        # the running one: then the initramfs loads it, else the unit.
        loaded_at_boot = "check loaded-at-boot loaded_at_boot livepatch_cmdline"
    steps = {name: body.replace("@OTHER@", other_release)
             .replace("@LOADED_AT_BOOT@", loaded_at_boot) for name, body in steps.items()}
    guest = DebianGuest(root, tmp_path / "guest",
                        {name: HELPERS + body for name, body in steps.items()})
    boots: list[Boot] = []

    def boot(step: str, kernel: str, expected: list[str], extra: str = "") -> None:
        done = guest.boot(step, kernel, extra_args=extra)
        boots.append(done)
        assert not done.failures(expected), (done.failures(expected), done.console_log)

    guest.publish_repository(published_v1)
    boot("install", release, ["unpatched-before", "key-installed", "apt-verified",
                              "patched-at-once", "listed-loaded", "listed-installed",
                              "info-names-package", "manifest-installed",
                              *(["initramfs-has-the-checks"] if guest_release.whole
                                else [])])
    guest.publish_repository(repository)
    # Loaded at boot: by the initramfs (kpatch.service then finds it already loaded), or
    # by kpatch.service.
    boot("reboot-upgrade", release, ["patched-at-boot", "loaded-at-boot", "unit-clean",
                                     "apt-verified",
                                     "upgraded-at-once", "old-patch-gone", "old-module-gone",
                                     "new-patch-loaded", "old-file-gone"])
    boot("other-kernel", other_release, ["running-other", "unit-clean",
                                         "says-nothing-for-this-kernel", "nothing-loaded",
                                         "no-failed-units"])
    if guest_release.whole:
        boot("disabled", release, ["unit-skipped", "nothing-loaded", "unpatched"],
             extra="kpatch.enable=0")
    boot("remove", release, ["patched-at-boot", "unit-clean", "unpatched-at-once",
                             "patch-gone", "module-gone", "nothing-installed",
                             "purge-leaves-nothing"])
    summary = "; ".join(f"{b.step} ({b.release}, {b.accel}): step at "
                        f"{b.step_started_at()} s, {b.seconds:.0f} s in all" for b in boots)
    print(f"{guest_release.suite}: guest root {made:.0f} s; boots: {summary}")


def booted_guest(cache: Path, guest_release: GuestRelease, workdir: Path,
                 steps: dict[str, str]) -> tuple[DebianGuest, str]:
    """The release's guest (its cell's kernel and another installed) with ``steps`` (their
    ``@RELEASE@`` is that kernel's release), and the release it boots."""
    store = Store()
    fetched = json.loads((cache / "work/cmdline" / guest_release.cell / "fetch.json")
                         .read_text())
    release = fetched["kernel"]["release"]
    image = debian.fetch_package(store, debian.DebianPackage(
        **fetched["kernel"]["packages"]["image"]))
    other = debian.fetch_package(store, guest_release.other_kernel(store, release))
    root = guest_root(store, [image, other], guest_release.suite)
    return DebianGuest(root, workdir, {name: HELPERS + body.replace("@RELEASE@", release)
                                       for name, body in steps.items()}), release


SECURE_BOOT_STEP = f"""
check running-the-cells-kernel test "$(uname -r)" = "@RELEASE@"
check secure-boot-on sh -c 'dmesg | grep -q "Secure boot enabled"'
check lockdown sh -c "grep -q '\\[integrity\\]' /sys/kernel/security/lockdown"
check key-installed cp {REPOSITORY_MOUNT}/{KEYRING} {INSTALLED_KEYRING}
apt_update
install() {{
    echo "KPB-RUN: apt-get install -y $1"
    apt-get install -y "$1" > "/tmp/$1.log" 2>&1
    echo "apt-get install: exit $?" >> "/tmp/$1.log"
    sed 's/^/  | /' "/tmp/$1.log"
}}
installed() {{
    grep -qx 'apt-get install: exit 0' "/tmp/$1.log" &&
        dpkg -s "$1" | grep -qx 'Status: install ok installed'
}}
install kpatch-patch-unsigned
check unsigned-installed installed kpatch-patch-unsigned
check unsigned-refused-in-one-line grep -q "livepatch_unsigned: unsigned: a kernel in \\
lockdown (Secure Boot) refuses it" /tmp/kpatch-patch-unsigned.log
check unsigned-not-loaded test ! -e /sys/module/livepatch_unsigned
install kpatch-patch-untrusted
check untrusted-installed installed kpatch-patch-untrusted
check untrusted-refusal-names-the-certificate grep -q "livepatch_untrusted: the kernel does \\
not trust its signer 'Another key': enrol /usr/share/kpatch/certs/kpatch-patch-untrusted.der \\
as a machine-owner key (mokutil --import /usr/share/kpatch/certs/kpatch-patch-untrusted.der" \\
    /tmp/kpatch-patch-untrusted.log
check untrusted-not-loaded test -z "$(ls /sys/kernel/livepatch)"
show kpatch info livepatch_untrusted
check info-says-untrusted info_says livepatch_untrusted "^trusted: *no"
check load-exits-8 sh -c 'kpatch load livepatch_untrusted; test $? -eq 8'
check certificate-shipped test -s /usr/share/kpatch/certs/kpatch-patch-untrusted.der
install kpatch-patch-cmdline
check signed-installed installed kpatch-patch-cmdline
check patched-at-once grep -q kpatch=1 /proc/cmdline
check signed-loaded test "$(loaded_patches)" = livepatch_cmdline
show kpatch info livepatch_cmdline
check info-lockdown info_says livepatch_cmdline "^kernel: *lockdown: integrity"
check info-names-the-signer info_says livepatch_cmdline "^signed by: *Team signing key (sha256"
check info-trusted info_says livepatch_cmdline "^trusted: *yes"
check signature-accepted sh -c 'test $(( $(cat /proc/sys/kernel/tainted) & 8192 )) -eq 0'
"""


def test_secure_boot_takes_the_enrolled_signers_package_and_refuses_the_others(
        tmp_path: Path) -> None:
    """Debian 12 booted by OVMF with Secure Boot, Microsoft's keys, Debian's signed shim,
    grub and kernel, the team's certificate enrolled as a machine-owner key: the kernel is
    in lockdown. An unsigned package, and one signed by a key nobody enrolled, install, load
    nothing and say in one line what is wrong (the second, which certificate to enrol;
    ``kpatch info`` says its signer is not trusted, ``kpatch load`` exits 8); the enrolled
    signer's package loads at once, its signer trusted."""
    guest_release = RELEASES[0]
    cache = seeded_cache(tmp_path / "cache")
    recipes = tmp_path / "recipes"
    team = make_key(tmp_path / "signing", "Team signing key")
    another = make_key(tmp_path / "signing", "Another key")
    env = {"KPATCHBUILD_CACHE": str(cache), "KPATCHBUILD_DOIT_DB": str(cache / "db"),
           "KPATCHBUILD_RECIPES": str(recipes), KEY_HOME_ENV: str(tmp_path / "key")}
    # Three copies of the default recipe, each its own module: unsigned, signed by a key
    # nobody enrolled, signed by the enrolled one.
    for recipe, key in (("unsigned", None), ("untrusted", another), ("cmdline", team)):
        shutil.copytree(PROJECT / "recipes" / "cmdline", recipes / recipe)
        copied = recipes / recipe / "recipe.yaml"
        copied.write_text(copied.read_text().replace("module: livepatch_cmdline",
                                                     f"module: livepatch_{recipe}"))
        signing = {sign.KEY_ENV: str(key.key), sign.CERT_ENV: str(key.certificate)} \
            if key else {}
        done = run_doit("package", f"recipe={recipe}", f"kernel={guest_release.cell}",
                        env={**env, **signing})
        assert done.returncode == 0, done.stdout + done.stderr
    repository = cache / "package" / guest_release.suite
    assert {name.split("_")[0] for name in debs(repository)} == {
        "kpatch", "kpatch-patch-cmdline", "kpatch-patch-unsigned", "kpatch-patch-untrusted"}

    guest, release = booted_guest(cache, guest_release, tmp_path / "guest",
                                  {"secure-boot": SECURE_BOOT_STEP})
    guest.publish_repository(repository)
    chain = secure_boot.firmware(Store(), tmp_path / "firmware", [team.der])
    booted = secure_boot.boot(guest, chain, "secure-boot", release)
    expected = ["running-the-cells-kernel", "secure-boot-on", "lockdown", "key-installed",
                "unsigned-installed", "unsigned-refused-in-one-line", "unsigned-not-loaded",
                "untrusted-installed", "untrusted-refusal-names-the-certificate",
                "untrusted-not-loaded", "info-says-untrusted", "load-exits-8",
                "certificate-shipped", "signed-installed", "patched-at-once", "signed-loaded",
                "info-lockdown", "info-names-the-signer", "info-trusted", "signature-accepted"]
    assert not booted.failures(expected), (booted.failures(expected), booted.console_log)
    print(f"secure boot: {booted.seconds:.0f} s ({booted.accel})")
