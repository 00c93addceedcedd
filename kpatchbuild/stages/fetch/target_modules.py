"""The loadable modules a patch targets: their ``.ko`` files, for symbols and for the proof.

A patched object that kbuild links into a module (``fs/binfmt_misc.o`` -> ``binfmt_misc``)
is diffed against that module's own symbol table (livepatch resolves its relocations in the
module, counting sympos there), and the proof in a VM loads the module, and the modules it
depends on, before the patch. The ``.ko`` comes from where the kernel came from:
- a Debian kernel: its image package, which holds every module under
  ``lib/modules/<release>/kernel/`` (Debian 12: plain ``.ko``) or
  ``usr/lib/modules/<release>/kernel/`` (Debian 13, merged /usr: ``.ko.xz``), or compressed
  with zstd; each one is extracted once and kept in the store, decompressed;
- a kernel built here: the build tree, found through ``modules.order``.
Dependencies come from the ``depends=`` field of each module's ``.modinfo``, as modprobe
would read them from modules.dep (which Debian generates at install time, not in the package).
"""

from __future__ import annotations

import lzma
import shutil
from collections.abc import Callable
from pathlib import Path

from kpatchbuild.base import process
from kpatchbuild.base.errors import BuildError, FetchError
from kpatchbuild.base.store import Store, content_key
from kpatchbuild.elf import ElfFormatError, read_elf
from kpatchbuild.stages.fetch.debian import DebianPackage, extract_members, fetch_package

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst")


def module_key(name: str) -> str:
    """Module names compare with '-' and '_' the same, as the kernel compares them."""
    return name.replace("-", "_")


def _module_stem(path: str) -> str | None:
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            return module_key(base[: -len(suffix)])
    return None


def modinfo(ko: Path) -> dict[str, str]:
    """The ``key=value`` fields of a module's ``.modinfo`` section (the first of each)."""
    return {key: values[0] for key, values in modinfo_all(ko).items()}


def dependencies(ko: Path) -> list[str]:
    """The modules ``ko`` needs loaded first, by name."""
    depends = modinfo(ko).get("depends", "")
    return [module_key(d) for d in depends.split(",") if d]


def soft_dependencies(ko: Path) -> list[str]:
    """What ``ko`` asks modprobe to load before it (``softdep=pre: crc32c``): not symbols
    it links against, but services its init looks up (libcrc32c's init fails with ENOENT
    without a crc32c algorithm)."""
    wanted: list[str] = []
    for field in modinfo_all(ko).get("softdep", []):
        before = False  # `pre: a b post: c`: only what comes after pre:
        for word in field.split():
            if word.endswith(":"):
                before = word == "pre:"
            elif before:
                wanted.append(module_key(word))
    return wanted


def modinfo_all(ko: Path) -> dict[str, list[str]]:
    """Every value of each ``.modinfo`` key (a module may have several softdep lines)."""
    try:
        sections = read_elf(ko).sections
    except (ElfFormatError, OSError) as error:
        raise BuildError(f"{ko}: not a readable kernel module ({error})") from None
    data = next((s.data for s in sections if s.name == ".modinfo"), b"")
    fields: dict[str, list[str]] = {}
    for entry in data.split(b"\0"):
        key, sep, value = entry.decode(errors="replace").partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    return fields


# A soft dependency names a service, often a crypto algorithm, which its generic module
# provides under the service's name with `_generic` (crc32c -> crc32c_generic).
_PROVIDER_SUFFIXES = ("", "_generic")


def with_dependencies(name: str, find: Callable[[str], Path]) -> list[Path]:
    """``name``'s module and everything it depends on, in an order insmod can load them;
    soft dependencies too, where a module of the kernel provides them (one built into the
    kernel needs nothing)."""
    ordered: list[Path] = []
    seen: set[str] = set()

    def visit(wanted: str) -> None:
        key = module_key(wanted)
        if key in seen:
            return
        seen.add(key)
        ko = find(key)
        for soft in soft_dependencies(ko):
            provider = _provider(soft, find)
            if provider is not None:
                visit(provider)
        for needed in dependencies(ko):
            visit(needed)
        ordered.append(ko)

    visit(name)
    return ordered


def _provider(service: str, find: Callable[[str], Path]) -> str | None:
    for suffix in _PROVIDER_SUFFIXES:
        try:
            find(service + suffix)
        except (FetchError, BuildError):
            continue
        return service + suffix
    return None


def _decompress(source: Path, dest: Path) -> None:
    if source.name.endswith(".xz"):
        with lzma.open(source) as packed, dest.open("wb") as out:
            shutil.copyfileobj(packed, out)
    elif source.name.endswith(".zst"):
        process.run(["zstd", "-q", "-d", "-f", source, "-o", dest], error=FetchError,
                    what=f"decompressing {source.name} with zstd")
    else:
        shutil.move(source, dest)


class DebianModules:
    """The modules of one Debian kernel image package, extracted on demand into the store."""

    def __init__(self, store: Store, image: DebianPackage, release: str) -> None:
        self.store = store
        self.image = image
        self.release = release
        self._members: dict[str, str] | None = None

    def members(self) -> dict[str, str]:
        """Module name -> its path in the package (read once: listing the .deb takes ~1 s)."""
        if self._members is None:
            listing = self.store.recall(("image-modules", self.image.sha256))
            if listing is None:
                deb = fetch_package(self.store, self.image)
                result = process.run(["dpkg-deb", "-c", deb], error=FetchError,
                                     what=f"listing {deb.name} with dpkg-deb")
                # Debian 13 ships them under /usr (merged /usr), Debian 12 under /lib.
                prefixes = tuple(f"./{root}lib/modules/{self.release}/"
                                 for root in ("", "usr/"))
                listing = {}
                for line in result.stdout.splitlines():
                    member = line.split()[-1]
                    stem = _module_stem(member)
                    if stem and member.startswith(prefixes):
                        listing[stem] = member
                self.store.remember(("image-modules", self.image.sha256), listing)
            self._members = listing
        return self._members

    def find(self, name: str) -> Path:
        """The uncompressed ``.ko`` of module ``name``."""
        key = content_key("fetch-module", self.image.sha256, module_key(name))
        artifact = self.store.lookup("fetch-module", key)
        if not artifact:
            member = self.members().get(module_key(name))
            if member is None:
                raise FetchError(f"{self.image.filename} has no module named {name}; it may be "
                                 f"built into {self.release} (then its objects are vmlinux's)")
            deb = fetch_package(self.store, self.image)
            with self.store.publishing("fetch-module", key, {"module": name,
                                                              "member": member}) as work:
                extract_members(deb, [member], work)
                _decompress(work / member, work / f"{module_key(name)}.ko")
                shutil.rmtree(work / Path(member).parts[0])  # lib or usr
            artifact = self.store.lookup("fetch-module", key)
            assert artifact is not None
        return artifact.path / f"{module_key(name)}.ko"


class BuiltModules:
    """The modules of a kernel built here, found in its tree through ``modules.order``."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree

    def find(self, name: str) -> Path:
        order = self.tree / "modules.order"
        entries = order.read_text().split() if order.is_file() else []
        for entry in entries:
            ko = self.tree / (entry.removesuffix(".o").removesuffix(".ko") + ".ko")
            if module_key(ko.name.removesuffix(".ko")) == module_key(name):
                if not ko.is_file():
                    raise BuildError(f"{ko}: listed in modules.order but not built")
                return ko
        raise BuildError(f"{self.tree}: the kernel built no module named {name} (not in "
                         "modules.order): is it configured =m?")
