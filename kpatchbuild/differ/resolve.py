"""How each symbol the patch refers to, but does not carry, will be found at load time.

Exported symbols are resolved by the module loader like any module's. A symbol another object
of the same patch defines (a new global function added in a.c, called from b.c) stays a plain
undefined symbol, bound when the patch's objects are linked into one module. Everything else becomes
a livepatch relocation naming the target object, the symbol and its position among namesakes
in kallsyms (sympos); such a symbol is written into the patch object under the name livepatch
itself uses, `.klp.sym.<object>.<name>,<sympos>`, so every object is self-describing and two
objects' references to the same symbol merge when linked into one module.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from kpatchbuild.base.errors import KpbError
from kpatchbuild.differ.index import ObjectIndex
from kpatchbuild.differ.symbols import Export, SymbolTable, module_objname

EXPORTED = "exported"
KLP = "klp"
INCLUDED = "included"
PROVIDED = "provided"  # defined by another object of the same patch


@dataclass(frozen=True, slots=True)
class Resolution:
    """One external reference of the patch object."""

    name: str  # the undefined symbol's name in the patch object
    target_name: str  # the symbol's name in the running kernel
    how: str  # EXPORTED, KLP or PROVIDED
    # "vmlinux" or the module that holds (KLP) or exports (EXPORTED) it; "patch" (PROVIDED)
    objname: str
    sympos: int | None = None  # KLP only


# Linux 5.8 ("livepatch: Apply vmlinux-specific KLP relocations early") applies a patch
# module's `.klp.rela.vmlinux.*` sections while the module loads, before the loader reads its
# jump labels, static calls and alternatives; relocations against other modules stay late.
EARLY_VMLINUX_RELOCATIONS = (5, 8)


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release or version text: "6.1.0-57-cloud-amd64" -> (6, 1)."""
    matched = re.match(r"^v?(\d+)\.(\d+)", release.strip())
    if matched is None:
        raise KpbError(f"kernel version {release!r}: expected MAJOR.MINOR[...], e.g. 6.1")
    return int(matched.group(1)), int(matched.group(2))


class ResolveError(KpbError):
    """A referenced symbol cannot be found unambiguously in the target."""

    exit_code = 2


class Resolver:
    """Decides EXPORTED, KLP (with sympos) or PROVIDED for the original object's symbols.

    ``provided_by_patch``: names other objects of the same patch define as globals.
    """

    def __init__(
        self,
        orig: ObjectIndex,
        target: str,
        table: SymbolTable | None,
        exports: dict[str, Export] | None,
        provided_by_patch: Collection[str] = (),
        version: tuple[int, int] | None = None,
    ) -> None:
        self.orig = orig
        # Unknown: assume a kernel older than 5.8, where every livepatch relocation is late.
        self.early_vmlinux = version is not None and version >= EARLY_VMLINUX_RELOCATIONS
        self.provided_by_patch = frozenset(provided_by_patch)
        self.objname = "vmlinux" if target == "vmlinux" else module_objname(target)
        self.table = table
        self.exports = exports
        self.neighbours = frozenset(
            s.name for s in orig.obj.symbols if s.section is not None and s.name
        )
        self._cache: dict[tuple[str, bool, bool], Resolution] = {}

    def resolve(self, name: str, *, defined: bool, local: bool) -> Resolution:
        """``defined``/``local``: how the original object has the symbol (undefined if absent)."""
        key = (name, defined, local)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._resolve(name, defined, local)
        return cached

    def _resolve(self, name: str, defined: bool, local: bool) -> Resolution:
        if not defined and name in self.provided_by_patch:
            # Only a reference this object leaves undefined can mean another object's global;
            # one this object defines itself (a static namesake, say) is its own.
            return Resolution(name, name, PROVIDED, "patch")
        export = self.exports.get(name) if self.exports is not None and not local else None
        if export is not None:
            exporter = "vmlinux" if export.module == "vmlinux" else module_objname(export.module)
            # A module's own symbols must go through livepatch: the patch may load first.
            if self.objname == "vmlinux" or exporter != self.objname:
                return Resolution(name, name, EXPORTED, exporter)
        if self.table is None:
            raise ResolveError(
                f"symbol {name}: not exported and no symbol table of {self.objname} given"
            )
        if name not in self.table:
            if not defined and self.exports is None:
                # Without Module.symvers an undefined reference may still be an export.
                return Resolution(name, name, EXPORTED, "unknown")
            raise ResolveError(
                f"symbol {name}: not exported and not in the {self.objname} symbol table"
            )
        try:
            sympos = self.table.sympos(
                name,
                local=local,
                neighbours=self.neighbours,
                source_file=self.orig.source_file,
            )
        except KpbError as error:
            raise ResolveError(f"symbol {name}: {error.message}") from None
        klp_name = f".klp.sym.{self.objname}.{name},{sympos}"
        return Resolution(klp_name, name, KLP, self.objname, sympos)

    def known_at_load(self, resolution: Resolution) -> bool:
        """Does the module loader know this address when it reads the module's own tables?

        Exports and the patch's own symbols, always; a livepatch relocation, only when the
        kernel applies it during the load (vmlinux's, since 5.8).
        """
        if resolution.how != KLP:
            return True
        return self.early_vmlinux and resolution.objname == "vmlinux"

    def old_sympos(self, name: str, *, local: bool) -> int:
        """Position of a patched function itself (klp_func.old_sympos)."""
        if self.table is None or name not in self.table:
            if self.table is None:
                return 0
            raise ResolveError(f"function {name}: not in the {self.objname} symbol table")
        try:
            return self.table.sympos(
                name, local=local, neighbours=self.neighbours, source_file=self.orig.source_file
            )
        except KpbError as error:
            raise ResolveError(f"function {name}: {error.message}") from None
