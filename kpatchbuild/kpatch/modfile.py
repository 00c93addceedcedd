"""What a livepatch module file says about itself, read without loading it.

- ``.modinfo``: ``name``, ``vermagic``, ``livepatch=Y``, ``description``, and the target a
  kpatchbuild module records, ``kpatchbuild_release`` / ``kpatchbuild_build_id``;
- the functions it patches, from the ``klp_func`` tables its registration
  (kmod/livepatch.c.in) defines: ``kpb_objects`` lists one ``klp_object`` per patched
  object, each pointing at a ``kpb_funcs_<n>`` array of ``klp_func``. The structures'
  sizes differ between kernels, but their first fields do not (``klp_object``: name,
  funcs; ``klp_func``: old_name, new_func, old_sympos), and only those fields carry
  relocations, so the entry size is the array's size over its entry count plus the
  terminator. Whether the patch is an atomic replace is ``klp_patch.replace``, after mod,
  objs and states (Linux 5.5 and later).

The module is a relocatable ELF file: pointers are zero in the data and live in its
relocations, which is how strings and tables are followed here. pyelftools is used
directly rather than through the build side's ELF model: this command runs on the patched
machine and imports nothing of the build side.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import Symbol, SymbolTableSection

from kpatchbuild.base import modsig
from kpatchbuild.kpatch.errors import KpatchError
from kpatchbuild.kpatch.trust import module_name

KLP_PATCH_REPLACE_OFFSET = 24  # struct klp_patch { mod; objs; states; bool replace; ... }


@dataclass(frozen=True)
class PatchedFunction:
    """A function the patch replaces: its object (``vmlinux`` or a module), name, sympos."""

    object: str
    function: str
    sympos: int

    @property
    def shown_sympos(self) -> int:
        """The position as livepatch shows it in sysfs: 0 (the name is unique) reads 1."""
        return self.sympos or 1

    def sysfs_name(self) -> str:
        return f"{self.function},{self.shown_sympos}"


@dataclass(frozen=True)
class ModuleFile:
    """A module file as read, with the descriptor it was read through.

    The descriptor stays open until :meth:`close`: it is the one handed to
    ``finit_module(2)``, so the kernel loads exactly the bytes that were checked, whatever
    happens to the path meanwhile. ``owner`` and ``mode`` come from that descriptor too.
    """

    path: Path
    name: str
    vermagic: str
    livepatch: bool
    release: str | None  # the kernel release kpatchbuild built it for
    build_id: str | None  # that kernel's GNU build id
    description: str
    replace: bool | None  # None: the file does not say (not a kpatchbuild module)
    functions: tuple[PatchedFunction, ...]
    sha256: str = ""
    # The signature appended to it (None: unsigned; a malformed one is refused on reading).
    signature: modsig.ModuleSignature | None = field(default=None, compare=False)
    status: os.stat_result | None = field(default=None, compare=False, repr=False)
    descriptor: int = field(default=-1, compare=False, repr=False)

    @property
    def vermagic_release(self) -> str:
        return self.vermagic.split(" ", 1)[0]

    @property
    def built_for(self) -> str:
        """The kernel it was built for, as messages name it."""
        release = self.release or self.vermagic_release or "an unknown kernel"
        return f"{release} (build id {self.build_id})" if self.build_id else release

    def content(self) -> bytes:
        """The file's bytes, read again through its descriptor: the ones that were checked
        (refused if they changed meanwhile)."""
        data = _read_all(self.descriptor, self.status.st_size if self.status else 0)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise KpatchError(f"{self.path}: changed while kpatch was reading it; try again")
        return data

    def close(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            object.__setattr__(self, "descriptor", -1)

    def __enter__(self) -> ModuleFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_module(path: Path) -> ModuleFile:
    """Open ``path`` once and read it through that descriptor, which the result keeps; a
    file that is not a regular file or not a kernel module is refused with one line."""
    try:
        # O_NONBLOCK: a FIFO put in the module's place must not hang the command.
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KpatchError(f"{path}: no such module file") from None
    except PermissionError:
        raise KpatchError(f"{path}: cannot read it (permission denied)") from None
    except OSError as error:
        raise KpatchError(f"{path}: cannot open it ({error.strerror})") from None
    try:
        status = os.fstat(descriptor)
        if stat.S_ISDIR(status.st_mode):
            raise KpatchError(f"{path}: is a directory, not a module file")
        if not stat.S_ISREG(status.st_mode):
            raise KpatchError(f"{path}: not a regular file, so not a module file")
        data = _read_all(descriptor, status.st_size)
        module = parse_module(path, data)
    except BaseException:
        os.close(descriptor)
        raise
    return replace(module, status=status, descriptor=descriptor)


def _read_all(descriptor: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(descriptor, max(size - offset, 1 << 16), offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def parse_module(path: Path, data: bytes) -> ModuleFile:
    """What the bytes ``data`` of the module file ``path`` say (no descriptor kept)."""
    try:
        signature = modsig.read_signature(data)
    except modsig.SignatureFormatError as error:
        raise KpatchError(f"{path}: its appended signature is malformed ({error}); "
                          "reinstall the package that carries it") from None
    try:
        module = _read(path, ELFFile(io.BytesIO(data)), hashlib.sha256(data).hexdigest())
    except (ELFError, struct.error, ValueError, IndexError, KeyError) as error:
        raise KpatchError(f"{path}: not a kernel module (unreadable ELF: {error})") from None
    return replace(module, signature=signature)


def _read(path: Path, elf: ELFFile, sha256: str) -> ModuleFile:
    if elf["e_type"] != "ET_REL" or elf["e_machine"] != "EM_X86_64" or elf.elfclass != 64:
        raise KpatchError(f"{path}: not a kernel module (an x86_64 relocatable ELF file)")
    modinfo_section = elf.get_section_by_name(".modinfo")
    if modinfo_section is None:
        raise KpatchError(f"{path}: not a kernel module (no .modinfo section)")
    info: dict[str, str] = {}
    for item in modinfo_section.data().split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, value)
    # The name becomes paths (/sys/kernel/livepatch/<name>, /var/lib/kpatch/.../<name>.ko).
    name = module_name(info.get("name") or path.name.removesuffix(".ko").replace("-", "_"),
                       f"{path}: its .modinfo name")
    tables = _Tables(elf)
    return ModuleFile(
        path=path,
        name=name,
        vermagic=info.get("vermagic", "").strip(),
        livepatch=info.get("livepatch") == "Y",
        release=info.get("kpatchbuild_release"),
        build_id=info.get("kpatchbuild_build_id"),
        description=info.get("description", ""),
        replace=tables.replace(),
        functions=tables.functions(),
        sha256=sha256,
    )


class _Tables:
    """The registration's tables, followed through their relocations."""

    def __init__(self, elf: ELFFile) -> None:
        self.elf = elf
        symtab = elf.get_section_by_name(".symtab")
        self.symbols = list(symtab.iter_symbols()) if isinstance(symtab,
                                                                 SymbolTableSection) else []
        self.by_name = {s.name: s for s in self.symbols if s["st_info"]["type"] == "STT_OBJECT"}
        self._relocations: dict[int, dict[int, tuple[Symbol, int]]] = {}

    def _relocs(self, section_index: int) -> dict[int, tuple[Symbol, int]]:
        """offset -> (symbol, addend) of the relocations applying to a section."""
        if section_index not in self._relocations:
            found: dict[int, tuple[Symbol, int]] = {}
            for section in self.elf.iter_sections():
                if (isinstance(section, RelocationSection) and section.is_RELA()
                        and section["sh_info"] == section_index
                        and not section.name.startswith(".klp.rela.")):
                    symtab = self.elf.get_section(section["sh_link"])
                    assert isinstance(symtab, SymbolTableSection)
                    for relocation in section.iter_relocations():
                        symbol = symtab.get_symbol(relocation["r_info_sym"])
                        found[relocation["r_offset"]] = (symbol, relocation["r_addend"])
            self._relocations[section_index] = found
        return self._relocations[section_index]

    def _section_data(self, index: int) -> bytes:
        return self.elf.get_section(index).data()

    def _target(self, symbol: Symbol, addend: int) -> tuple[int, int]:
        """(section index, offset) a relocation points to."""
        return symbol["st_shndx"], symbol["st_value"] + addend

    def _string(self, symbol: Symbol, addend: int) -> str:
        section, offset = self._target(symbol, addend)
        data = self._section_data(section)
        return data[offset:data.index(b"\0", offset)].decode(errors="replace")

    def replace(self) -> bool | None:
        patch = self.by_name.get("kpb_patch")
        if patch is None or not isinstance(patch["st_shndx"], int):
            return None
        data = self._section_data(patch["st_shndx"])
        return data[patch["st_value"] + KLP_PATCH_REPLACE_OFFSET] != 0

    def functions(self) -> tuple[PatchedFunction, ...]:
        objects = self.by_name.get("kpb_objects")
        if objects is None or not isinstance(objects["st_shndx"], int):
            return ()
        section = objects["st_shndx"]
        relocs = self._relocs(section)
        start, size = objects["st_value"], objects["st_size"]
        tables = {(s["st_shndx"], s["st_value"]): s for name, s in self.by_name.items()
                  if name.startswith("kpb_funcs_")}
        # Each klp_object entry's .funcs points at one kpb_funcs_<n> table; .name, 8 bytes
        # before it, points at the object's name, or is NULL (no relocation) for vmlinux.
        pointers = sorted((offset, tables[self._target(*target)])
                          for offset, target in relocs.items()
                          if start <= offset < start + size and self._target(*target) in tables)
        functions: list[PatchedFunction] = []
        for offset, table in pointers:
            entry = offset - 8  # .funcs follows .name
            name_target = relocs.get(entry)
            objname = self._string(*name_target) if name_target else "vmlinux"
            functions += self._funcs(objname, table)
        return tuple(functions)

    def _funcs(self, objname: str, table: Symbol) -> list[PatchedFunction]:
        section = table["st_shndx"]
        start, size = table["st_value"], table["st_size"]
        relocs = self._relocs(section)
        inside = sorted(offset for offset in relocs if start <= offset < start + size)
        count = len(inside) // 2  # old_name and new_func per entry
        if not count:
            return []
        entry_size = size // (count + 1)
        data = self._section_data(section)
        result = []
        for index in range(count):
            entry = start + index * entry_size
            old_name = relocs.get(entry)
            if old_name is None:
                continue
            (sympos,) = struct.unpack_from("<Q", data, entry + 16)
            result.append(PatchedFunction(objname, self._string(*old_name), sympos))
        return result


def package_metadata(module: Path) -> dict[str, Any] | None:
    """What the package that installed ``module`` says of it (``<name>.json`` beside it:
    package, version, recipe, patches and their hashes, changed functions), if any."""
    path = module.with_suffix(".json")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise KpatchError(f"{path}: unreadable package metadata ({error}); reinstall the "
                          "package that carries it") from None
    return data if isinstance(data, dict) else None
