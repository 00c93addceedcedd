"""The .ko files of patched modules: found, ordered by their dependencies, refused by name."""

from __future__ import annotations

import lzma
import subprocess
from pathlib import Path

import pytest

from kpatchbuild.base.errors import BuildError, FetchError
from kpatchbuild.stages.fetch import target_modules


def fake_module(path: Path, modinfo: dict[str, str]) -> Path:
    """A relocatable object with a .modinfo section, as kbuild lays one out."""
    fields = "".join(f'"{key}={value}\\0"' for key, value in modinfo.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.with_suffix(".c")
    source.write_text(f'__attribute__((section(".modinfo"), used))\n'
                      f'static const char info[] = {fields};\n')
    subprocess.run(["gcc", "-c", "-o", str(path), str(source)], check=True)
    return path


def test_modinfo_fields_and_dependencies(tmp_path: Path) -> None:
    ko = fake_module(tmp_path / "a.ko", {"name": "a", "depends": "b-core,c",
                                         "vermagic": "6.1.0 SMP"})
    assert target_modules.modinfo(ko)["vermagic"] == "6.1.0 SMP"
    assert target_modules.dependencies(ko) == ["b_core", "c"]


def test_dependencies_come_first_and_once(tmp_path: Path) -> None:
    kos = {
        "top": fake_module(tmp_path / "top.ko", {"depends": "mid,base"}),
        "mid": fake_module(tmp_path / "mid.ko", {"depends": "base"}),
        "base": fake_module(tmp_path / "base.ko", {"depends": ""}),
    }
    ordered = target_modules.with_dependencies("top", kos.__getitem__)
    assert ordered == [kos["base"], kos["mid"], kos["top"]]


def test_soft_dependencies_load_first_where_a_module_provides_them(tmp_path: Path) -> None:
    # libcrc32c's init looks up the crc32c algorithm: modprobe loads crc32c_generic first.
    kos = {
        "xfs": fake_module(tmp_path / "xfs.ko", {"depends": "libcrc32c"}),
        "libcrc32c": fake_module(tmp_path / "libcrc32c.ko",
                                 {"softdep": "pre: crc32c", "depends": ""}),
        "crc32c_generic": fake_module(tmp_path / "crc32c_generic.ko", {"depends": ""}),
        "built": fake_module(tmp_path / "built.ko", {"softdep": "pre: in_vmlinux post: x",
                                                     "depends": ""}),
    }

    def find(name: str) -> Path:
        if name not in kos:
            raise FetchError(f"no module named {name}")
        return kos[name]

    assert target_modules.soft_dependencies(kos["libcrc32c"]) == ["crc32c"]
    assert target_modules.soft_dependencies(kos["built"]) == ["in_vmlinux"]
    assert target_modules.with_dependencies("xfs", find) == [
        kos["crc32c_generic"], kos["libcrc32c"], kos["xfs"]]
    # A soft dependency built into the kernel (no module of that name) needs nothing.
    assert target_modules.with_dependencies("built", find) == [kos["built"]]


def test_not_a_module_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.ko"
    bogus.write_text("not an ELF")
    with pytest.raises(BuildError, match=r"bogus.ko: not a readable kernel module"):
        target_modules.dependencies(bogus)


def test_built_modules_found_through_modules_order(tmp_path: Path) -> None:
    ko = fake_module(tmp_path / "fs" / "binfmt_misc.ko", {"name": "binfmt_misc"})
    (tmp_path / "modules.order").write_text("drivers/x/other.o\nfs/binfmt_misc.o\n")
    modules = target_modules.BuiltModules(tmp_path)
    assert modules.find("binfmt-misc") == ko
    with pytest.raises(BuildError, match=r"no module named zram \(not in modules.order\)"):
        modules.find("zram")


def test_compressed_modules_are_unpacked(tmp_path: Path) -> None:
    ko = fake_module(tmp_path / "x.ko", {"name": "x"})
    packed = tmp_path / "x.ko.xz"
    packed.write_bytes(lzma.compress(ko.read_bytes()))
    out = tmp_path / "out.ko"
    target_modules._decompress(packed, out)
    assert out.read_bytes() == ko.read_bytes()
    assert target_modules._module_stem("./lib/modules/r/kernel/fs/x-y.ko.zst") == "x_y"


@pytest.mark.parametrize(("root", "suffix", "pack"), [
    ("lib", ".ko", lambda data: data),                    # Debian 12
    ("usr/lib", ".ko.xz", lzma.compress),                 # Debian 13: merged /usr, xz
])
def test_an_image_packages_modules_are_found_where_its_release_puts_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: str, suffix: str,
        pack) -> None:
    from kpatchbuild.base.store import Store
    from kpatchbuild.stages.fetch.debian import DebianPackage

    release = "6.12.118+deb13-cloud-amd64"
    staged = tmp_path / "staged"
    ko = fake_module(tmp_path / "binfmt_misc.ko", {"name": "binfmt_misc", "depends": ""})
    member = staged / root / "modules" / release / "kernel/fs" / f"binfmt_misc{suffix}"
    member.parent.mkdir(parents=True)
    member.write_bytes(pack(ko.read_bytes()))
    (staged / "DEBIAN").mkdir()
    (staged / "DEBIAN/control").write_text(
        "Package: linux-image-test\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        "Description: test\n")
    deb = tmp_path / "image.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(staged), str(deb)],
                   check=True, capture_output=True)
    monkeypatch.setattr(target_modules, "fetch_package", lambda store, package: deb)
    image = DebianPackage("linux-image-test", "1", ("a" if root == "lib" else "b") * 64,
                          "image.deb")
    modules = target_modules.DebianModules(Store(tmp_path / "cache"), image, release)
    assert modules.find("binfmt_misc").read_bytes() == ko.read_bytes()
    with pytest.raises(FetchError, match="has no module named cifs"):
        modules.find("cifs")


@pytest.mark.kernel
def test_debian_13s_compressed_modules_come_out_whole(tmp_path: Path) -> None:
    """Debian 13's image ships /usr/lib/modules/<release>/**/*.ko.xz."""
    from kpatchbuild.base.store import Store
    from kpatchbuild.graph.recipe import DebianKernel
    from kpatchbuild.stages.fetch import debian

    store = Store()
    kernel = debian.resolve_release(DebianKernel(None, "6.12", "cloud-amd64", "13"), store)
    assert "+deb13" in kernel.release
    modules = target_modules.DebianModules(store, kernel.packages["image"], kernel.release)
    assert modules.members()["cifs"].startswith(f"./usr/lib/modules/{kernel.release}/")
    chain = target_modules.with_dependencies("cifs", modules.find)
    assert chain[-1].name == "cifs.ko" and "netfs.ko" in [p.name for p in chain]
    assert target_modules.modinfo(chain[-1])["vermagic"].startswith(kernel.release + " ")
