"""Bad inputs past the recipe itself: packages, checksums, compilers, patches, Kconfig."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from kpatchbuild.base import kbuild
from kpatchbuild.base.commands import run_step
from kpatchbuild.base.errors import BuildError, FetchError, RecipeError
from kpatchbuild.base.store import Store, sha256_file
from kpatchbuild.graph.recipe import ConfigOption, DebianKernel, Place, SourceSpec
from kpatchbuild.stages.config import kconfig
from kpatchbuild.stages.fetch import debian, source, suites
from kpatchbuild.stages.original import original
from kpatchbuild.stages.patches.patching import check_patches_apply, touched_files


@pytest.mark.parametrize(("left", "right", "sign"), [
    ("6.1.192-2", "6.1.192-1", 1),
    ("6.1.192-2", "6.1.190-1", 1),
    ("6.12.117-1~deb12u1", "6.12.117-1", -1),
    ("6.1.76-1", "6.1.192-1", -1),
    ("1:1.0-1", "2.0-1", 1),
    ("1.0", "1.0", 0),
    ("1.0a", "1.0", 1),
    ("1.0~rc1", "1.0", -1),
])
def test_debian_version_order(left: str, right: str, sign: int) -> None:
    result = debian.compare_versions(left, right)
    assert (result > 0) - (result < 0) == sign


def test_newest_by_debian_order() -> None:
    assert debian.newest(["6.1.190-1", "6.1.192-2", "6.1.76-1", "6.1.192-1"]) == "6.1.192-2"


@pytest.mark.kernel
def test_unknown_debian_package(tmp_path: Path) -> None:
    spec = DebianKernel(image="linux-image-6.1.0-999-cloud-amd64", series=None, flavour=None)
    with pytest.raises(FetchError) as caught:
        debian.resolve_release(spec, Store(tmp_path))
    assert "unknown Debian package linux-image-6.1.0-999-cloud-amd64" in caught.value.message
    assert "cloud-amd64" in caught.value.message.split("serves", 1)[1]


@pytest.mark.kernel
def test_unknown_series_and_flavour(tmp_path: Path) -> None:
    spec = DebianKernel(image=None, series="6.1", flavour="no-such-flavour")
    with pytest.raises(FetchError, match="no kernel image for series 6.1 and flavour "
                                         "no-such-flavour"):
        debian.resolve_release(spec, Store(tmp_path))


@pytest.mark.kernel
def test_series_resolves_to_a_release_with_matching_source(tmp_path: Path) -> None:
    kernel = debian.resolve_release(DebianKernel(None, "6.1", "cloud-amd64"), Store(tmp_path))
    assert kernel.release.startswith("6.1.0-") and kernel.release.endswith("-cloud-amd64")
    assert {p.version for p in kernel.packages.values()} == {kernel.version}
    assert kernel.packages["source"].name == "linux-source-6.1"


class FakeIndex:
    """Stands in for a Debian release's index: apt-cache's answers from a table."""

    def __init__(self, served: dict[str, list[str]], release: str = "12") -> None:
        self.served = served
        self.release = suites.RELEASES[release]
        self.stamp = "1"

    def apt_cache(self, command: str, *args: str) -> str:
        if command == "show":
            return f"Architecture: amd64\nSHA256: {'0' * 64}\n"
        assert command == "pkgnames"
        return "\n".join(n for n in self.served if n.startswith(args[0]))


def fake_index(monkeypatch: pytest.MonkeyPatch, served: dict[str, list[str]]) -> FakeIndex:
    index = FakeIndex(served)
    monkeypatch.setattr(debian, "index_for", lambda store, release: index)
    monkeypatch.setattr(debian, "available_versions",
                        lambda index, names: {n: list(index.served.get(n, [])) for n in names})
    return index


def test_an_image_served_without_its_headers_and_symbols_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """trixie-security keeps older signed images after their headers and -dbg are gone."""
    release = "6.12.90+deb13-cloud-amd64"
    index = fake_index(monkeypatch, {f"linux-image-{release}": ["6.12.90-1"],
                                     "linux-source-6.12": ["6.12.118-1"]})
    with pytest.raises(FetchError) as caught:
        debian._packages_for(index, release, "6.12.90-1")  # type: ignore[arg-type]
    assert caught.value.message == (
        f"{release}: Debian 12 (bookworm)'s index still serves its image but no longer its "
        f"headers (linux-headers-{release}) and debug symbols (linux-image-{release}-dbg): "
        "Debian keeps older signed images after dropping those, which a patch needs "
        "(Module.symvers, System.map); target the series' newest release, or an image that "
        "still has them")


def test_source_version_must_match_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    index = fake_index(monkeypatch, {
        "linux-source-6.1": ["6.1.190-1", "6.1.187-1"],
        **{f"linux-{kind}-6.1.0-56-cloud-amd64{dbg}": ["6.1.192-2"]
           for kind, dbg in (("image", ""), ("image", "-dbg"), ("headers", ""))}})
    with pytest.raises(FetchError) as caught:
        debian._packages_for(index, "6.1.0-56-cloud-amd64", "6.1.192-2")  # type: ignore[arg-type]
    message = caught.value.message
    assert "linux-source-6.1 6.1.192-2 (the image's version) is not in Debian 12 (bookworm)'s " \
           "index" in message
    assert "versions found: 6.1.190-1, 6.1.187-1" in message


def test_pinned_source_version_gone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_index(monkeypatch, {"linux-source-6.1": ["6.1.192-2"]})
    with pytest.raises(FetchError, match="linux-source-6.1 6.1.100-1 is no longer in Debian 12 "
                                         "\\(bookworm\\)'s index \\(it serves 6.1.192-2\\); "
                                         "pin one of those"):
        debian.source_package(Store(tmp_path), "linux-source-6.1", "6.1.100-1", "12")


def test_tarball_checksum_mismatch(tmp_path: Path) -> None:
    tree = tmp_path / "linux-9.9"
    tree.mkdir()
    (tree / "Makefile").write_text("all:\n")
    tarball = tmp_path / "linux.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tree, arcname="linux-9.9")
    spec = SourceSpec(kind="tarball", path=tarball, sha256="0" * 64)
    with pytest.raises(RecipeError) as caught:
        source.obtain_source(Store(tmp_path / "cache"), spec, "r.yaml:3: targets[0].source")
    assert caught.value.message.startswith("r.yaml:3: targets[0].source: tarball ")
    assert f"has sha256 {sha256_file(tarball)}, the recipe says {'0' * 64}" in \
        caught.value.message
    good = SourceSpec(kind="tarball", path=tarball, sha256=sha256_file(tarball))
    unpacked = source.obtain_source(Store(tmp_path / "cache"), good, "r")
    assert (unpacked.path / "Makefile").read_text() == "all:\n"


def test_xz_tarball_is_unpacked(tmp_path: Path) -> None:
    """xz tarballs go through xz's threaded decompressor (Debian's kernel tarballs)."""
    tree = tmp_path / "linux-9.9"
    (tree / "fs").mkdir(parents=True)
    (tree / "Makefile").write_text("all:\n")
    (tree / "fs" / "a.c").write_bytes(bytes(range(256)) * 4000)
    tarball = tmp_path / "linux.tar.xz"
    with tarfile.open(tarball, "w:xz") as archive:
        archive.add(tree, arcname="linux-9.9")
    spec = SourceSpec(kind="tarball", path=tarball, sha256=sha256_file(tarball))
    unpacked = source.obtain_source(Store(tmp_path / "cache"), spec, "r")
    assert (unpacked.path / "fs" / "a.c").read_bytes() == bytes(range(256)) * 4000


@pytest.mark.parametrize(("text", "package", "version"), [
    ("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0", "12.2.0-14+deb12u1", "12.2.0"),
    ("x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0", "12.2.0-14+deb12u1", "12.2.0"),
    ("gcc (GCC) 13.2.1 20231011 (Red Hat 13.2.1-4)", None, "13.2.1"),
])
def test_compiler_text(text: str, package: str | None, version: str) -> None:
    parsed = kbuild.parse_compiler_text(text)
    assert parsed.version == version
    if package:
        assert parsed.package == package


def make_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "fs/proc").mkdir(parents=True)
    (tree / "fs/proc/cmdline.c").write_text("".join(f"line {n}\n" for n in range(1, 30)))
    return tree


def write_patch(tmp_path: Path, old: str, new: str, at: int) -> Path:
    patch = tmp_path / "fix.patch"
    patch.write_text(f"--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -{at},1 +{at},1 @@\n"
                     f"-{old}\n+{new}\n")
    return patch


def test_patch_applies_without_touching_the_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    patch = write_patch(tmp_path, "line 12", "line twelve", 12)
    assert touched_files(patch) == ["fs/proc/cmdline.c"]
    assert check_patches_apply([patch], tree) == ["fs/proc/cmdline.c"]
    assert "twelve" not in (tree / "fs/proc/cmdline.c").read_text()


def test_patch_that_does_not_apply_names_hunk_file_and_line(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    patch = write_patch(tmp_path, "line 99", "line ninety-nine", 12)
    with pytest.raises(RecipeError) as caught:
        check_patches_apply([patch], tree)
    assert caught.value.message == (f"{patch}: hunk #1 for fs/proc/cmdline.c does not apply at "
                                    "line 12; rebase the patch onto this kernel's source")


def test_patch_for_a_missing_file(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    patch = tmp_path / "fix.patch"
    patch.write_text("--- a/fs/nope.c\n+++ b/fs/nope.c\n@@ -1,1 +1,1 @@\n-a\n+b\n")
    with pytest.raises(RecipeError, match="a file it patches does not exist"):
        check_patches_apply([patch], tree)


HUNK = "@@ -12,1 +12,1 @@\n-line 12\n+line twelve\n"
PATCH_SHAPES = {
    # kpatch's own: diff -Nupr src.orig/ src/, with timestamps after a tab
    "kpatch": ("diff -Nupr src.orig/fs/proc/cmdline.c src/fs/proc/cmdline.c\n"
               "--- src.orig/fs/proc/cmdline.c\t2016-11-30 19:39:49.317737234 +0000\n"
               "+++ src/fs/proc/cmdline.c\t2016-11-30 19:39:52.696737234 +0000\n" + HUNK),
    # git format-patch: mail headers, a message quoting a diff-like line, the diffstat
    "mail": ("From 1234abcd Mon Sep 17 00:00:00 2001\nFrom: A Developer <dev@example.org>\n"
             "Subject: [PATCH] proc: fix line twelve\n\nThe old code read\n"
             "--- not a header\nso fix it.\n\nSigned-off-by: A Developer <dev@example.org>\n"
             "---\n fs/proc/cmdline.c | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)\n\n"
             "diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c\nindex 1111111..2222222 100644\n"
             "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n" + HUNK + "-- \n2.39.5\n"),
    "crlf": ("--- a/fs/proc/cmdline.c\r\n+++ b/fs/proc/cmdline.c\r\n"
             + HUNK.replace("\n", "\r\n")),
}


@pytest.mark.parametrize("shape", sorted(PATCH_SHAPES))
def test_patches_as_people_write_them(tmp_path: Path, shape: str) -> None:
    tree = make_tree(tmp_path)
    patch = tmp_path / "fix.patch"
    patch.write_bytes(PATCH_SHAPES[shape].encode())
    assert touched_files(patch) == ["fs/proc/cmdline.c"]
    assert check_patches_apply([patch], tree) == ["fs/proc/cmdline.c"]


def test_patch_without_prefix_needs_strip_zero(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    patch = tmp_path / "fix.patch"
    patch.write_text("--- fs/proc/cmdline.c\n+++ fs/proc/cmdline.c\n" + HUNK)
    assert touched_files(patch, strip=0) == ["fs/proc/cmdline.c"]
    assert check_patches_apply([patch], tree, strip=0) == ["fs/proc/cmdline.c"]
    assert touched_files(patch) == ["proc/cmdline.c"]  # as patch -p1 would read it
    flat = tmp_path / "flat.patch"
    flat.write_text("--- cmdline.c\n+++ cmdline.c\n" + HUNK)
    with pytest.raises(RecipeError, match="set the recipe's 'strip'"):
        touched_files(flat)


def test_not_a_patch(tmp_path: Path) -> None:
    patch = tmp_path / "fix.patch"
    patch.write_text("hello\n")
    with pytest.raises(RecipeError, match="not a unified diff"):
        touched_files(patch)


def test_kconfig_expressions() -> None:
    config = {"CONFIG_PCI": "y", "CONFIG_X": "m", "CONFIG_S": '"abc"'}
    assert kconfig.evaluate("PCI && !X", config) == 1
    assert kconfig.evaluate("!(SPARC32 && SMP)", config) == 2
    assert kconfig.evaluate("VIRTIO_MENU && PCI", config) == 0
    assert kconfig.evaluate('S = "abc"', config) == 2
    assert kconfig.evaluate("S != abc", config) == 0


def test_merge_options_replaces_and_appends() -> None:
    base = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n"
    place = Place(Path("f"), 1, "k")
    merged = kconfig.merge_options(base, [ConfigOption("CONFIG_B", "y", place),
                                          ConfigOption("CONFIG_C", "n", place),
                                          ConfigOption("CONFIG_D", "m", place)])
    assert kconfig.parse_config(merged) == {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "n",
                                            "CONFIG_D": "m"}


def test_dropped_option_names_its_unmet_dependencies(tmp_path: Path) -> None:
    (tmp_path / "drivers/virtio").mkdir(parents=True)
    (tmp_path / "drivers/virtio/Kconfig").write_text(
        "menuconfig VIRTIO_MENU\n\tbool \"Virtio drivers\"\n\nif VIRTIO_MENU\n\n"
        "config VIRTIO_PCI\n\ttristate \"PCI driver for virtio devices\"\n\tdepends on PCI\n\n"
        "endif # VIRTIO_MENU\n\nconfig FUTEX\n\tbool \"Futexes\" if EXPERT\n\tdefault y\n"
    )
    fragment_place = Place(Path("recipes/x/guest.config"), 4, "CONFIG_VIRTIO_PCI")
    final = "CONFIG_PCI=y\n# CONFIG_VIRTIO_MENU is not set\n# CONFIG_FUTEX is not set\n"
    with pytest.raises(RecipeError) as caught:
        kconfig.verify_options(tmp_path, final, [
            ConfigOption("CONFIG_VIRTIO_PCI", "y", fragment_place)])
    assert caught.value.message == (
        "recipes/x/guest.config:4: CONFIG_VIRTIO_PCI: CONFIG_VIRTIO_PCI=y did not stick (the "
        "final .config has it unset): it depends on VIRTIO_MENU, which the config leaves off "
        "(drivers/virtio/Kconfig:6); turn those on in the config too")
    with pytest.raises(RecipeError, match="FUTEX=y did not stick .* depends on EXPERT"):
        kconfig.verify_options(tmp_path, final, [ConfigOption("CONFIG_FUTEX", "y",
                                                              fragment_place)])
    with pytest.raises(RecipeError, match="CONFIG_NOPE is not an option of this kernel"):
        kconfig.verify_options(tmp_path, final, [ConfigOption("CONFIG_NOPE", "y",
                                                              fragment_place)])
    kconfig.verify_options(tmp_path, final, [ConfigOption("CONFIG_PCI", "y", fragment_place),
                                             ConfigOption("CONFIG_FUTEX", "n", fragment_place)])


def test_run_step_failure_names_the_log(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    with pytest.raises(BuildError) as caught:
        run_step(["sh", "-c", "echo compiling; echo broken >&2; exit 3"], step="make all",
                 log=log)
    assert caught.value.message == f"make all failed (exit 3); full log: {log}"
    assert "broken" in log.read_text() and "[exit 3" in log.read_text()


def test_run_step_unchecked_returns_the_exit_and_prints_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """make -k passes fail by design; their caller reads the log, the terminal stays quiet."""
    log = tmp_path / "make.log"
    assert run_step(["sh", "-c", "echo linking; exit 2"], step="make -k", log=log,
                    check=False) == 2
    assert "last lines" not in capsys.readouterr().out
    assert "linking" in log.read_text() and "[exit 2" in log.read_text()


SERVED_IMAGES = {
    "linux-image-6.1.0-57-amd64": ["6.1.192-3"],
    "linux-image-6.1.0-57-cloud-amd64": ["6.1.192-3"],
    "linux-image-6.1.0-57-rt-amd64": ["6.1.192-3"],
    "linux-image-6.1.0-57-amd64-dbg": ["6.1.192-3"],
    "linux-image-6.1.0-56-amd64": ["6.1.192-2"],
    "linux-image-6.12.117+deb12-amd64": ["6.12.117-1~deb12u1"],
    "linux-image-6.12.117+deb12-rt-amd64": ["6.12.117-1~deb12u2"],
    "linux-image-6.12.117+deb12-cloud-amd64-unsigned": ["6.12.117-1~deb12u2"],
    "linux-image-6.12.117+deb12-amd64-unsigned": ["6.12.117-1~deb12u2"],
}


@pytest.mark.parametrize(("series", "flavour", "release"), [
    ("6.1", "amd64", "6.1.0-57-amd64"),
    ("6.1", "cloud-amd64", "6.1.0-57-cloud-amd64"),
    ("6.1", "rt-amd64", "6.1.0-57-rt-amd64"),
    ("6.12", "amd64", "6.12.117+deb12-amd64"),
])
def test_a_flavour_matches_only_its_own_images(
        monkeypatch: pytest.MonkeyPatch, series: str, flavour: str, release: str) -> None:
    """``amd64`` is a suffix of ``cloud-amd64`` and ``rt-amd64``: a newer rt upload must not
    become the generic kernel, nor an -unsigned or -dbg package an image."""
    index = fake_index(monkeypatch, SERVED_IMAGES)
    assert debian.newest_release(DebianKernel(None, series, flavour),
                                 index)[0] == release  # type: ignore[arg-type]


@pytest.mark.parametrize(("release", "hint"), [
    ("6.1.0-99-amd64", "it serves 6.1.0-56-amd64, 6.1.0-57-amd64"),
    ("6.12.999+deb12-amd64", "it serves 6.12.117+deb12-amd64"),
    ("6.12.999+deb12-cloud-amd64", "it serves none of this series"),
])
def test_an_unknown_image_is_told_the_releases_of_its_own_flavour(
        monkeypatch: pytest.MonkeyPatch, release: str, hint: str) -> None:
    index = fake_index(monkeypatch, SERVED_IMAGES)
    assert debian._known_images_hint(index, release) == hint  # type: ignore[arg-type]


def test_newest_release_is_asked_again_only_when_the_index_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def resolve(spec: DebianKernel, index: FakeIndex) -> tuple[str, str]:
        calls.append(spec.label)
        return f"6.1.0-{len(calls)}-cloud-amd64", "6.1.192-2"

    index = fake_index(monkeypatch, {})
    monkeypatch.setattr(debian, "newest_release", resolve)
    store = Store(tmp_path / "cache")
    spec = DebianKernel(None, "6.1", "cloud-amd64")
    assert debian.newest_release_known(spec, store)[0] == "6.1.0-1-cloud-amd64"
    assert debian.newest_release_known(spec, store)[0] == "6.1.0-1-cloud-amd64"
    assert len(calls) == 1
    index.stamp = "2"  # a refresh of the release's index
    assert debian.newest_release_known(spec, store)[0] == "6.1.0-2-cloud-amd64"


def test_newest_source_version_is_asked_again_only_when_the_index_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = {"linux-source-6.1": ["6.1.190-1", "6.1.192-2"]}
    calls = []
    index = fake_index(monkeypatch, served)

    def madison(index: FakeIndex, names: list[str]) -> dict[str, list[str]]:
        calls.append(names)
        return {name: list(served.get(name, [])) for name in names}

    monkeypatch.setattr(debian, "available_versions", madison)
    store = Store(tmp_path / "cache")
    assert debian.newest_version_known("linux-source-6.1", store, "12") == "6.1.192-2"
    assert debian.newest_version_known("linux-source-6.1", store, "12") == "6.1.192-2"
    assert len(calls) == 1
    served["linux-source-6.1"].append("6.1.193-1")
    index.stamp = "2"
    assert debian.newest_version_known("linux-source-6.1", store, "12") == "6.1.193-1"
    with pytest.raises(FetchError, match="Debian 12 \\(bookworm\\)'s index has no "
                                         "linux-source-9.9"):
        debian.newest_version_known("linux-source-9.9", store, "12")


def test_olddefconfig_may_change_only_toolchain_facts_of_a_distribution_config(
        tmp_path: Path) -> None:
    debian_config = ('CONFIG_CC_VERSION_TEXT="x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14) 12.2.0"\n'
                     "CONFIG_PAHOLE_VERSION=124\nCONFIG_DEBUG_INFO_BTF=y\n"
                     "CONFIG_DEBUG_INFO_BTF_MODULES=y\nCONFIG_SCHED_CLASS_EXT=n\n")
    without_pahole = ('CONFIG_CC_VERSION_TEXT="gcc (Debian 12.2.0-14) 12.2.0"\n'
                      "CONFIG_PAHOLE_VERSION=0\nCONFIG_MODULE_SIG_ALL=y\n"
                      'CONFIG_CC_OPT_INLINE_MEMSET="-finline-stringops=memset"\n')
    changes = original.config_changes(debian_config, without_pahole)
    assert "CONFIG_SCHED_CLASS_EXT" not in changes  # "n" and unset are the same
    assert set(original.significant_config_changes(changes)) == {
        "CONFIG_DEBUG_INFO_BTF", "CONFIG_DEBUG_INFO_BTF_MODULES"}
    with pytest.raises(BuildError) as caught:
        original.check_config_kept(changes, "r/debian-6.12", tmp_path / "prepare.log")
    assert str(caught.value.message) == (
        "r/debian-6.12: make olddefconfig changed the distribution's config: "
        "CONFIG_DEBUG_INFO_BTF (y -> unset), CONFIG_DEBUG_INFO_BTF_MODULES (y -> unset); "
        "modules built from it would not match the running kernel: install dwarves (pahole) "
        f"and run again; log: {tmp_path / 'prepare.log'}")
    tools_only = original.config_changes(debian_config, debian_config.replace("124", "125"))
    original.check_config_kept(tools_only, "r/debian-6.12", tmp_path / "prepare.log")


