"""Diff objects -> one livepatch kernel module (.ko), linked by kbuild, then rewritten.

``link_module`` writes into a work directory the registration generated from
``kmod/livepatch.c.in`` (one klp_func per changed function, grouped by patched object), the
diff objects as ``*.o_shipped`` (each with a global alias for every changed function, so the
registration can name functions that are static in their object), a placeholder object
defining every ``.klp.sym.*`` symbol the diff objects reference, and a Kbuild file; runs
``make -C <tree> M=<workdir> modules`` with all output in the log; then rewrites the .ko with
the ELF writer the way livepatch wants it (Documentation/livepatch/module-elf-format.rst):

- each ``.klp.sym.<object>.<name>,<sympos>`` symbol becomes undefined with section index
  SHN_LIVEPATCH (livepatch resolves it when <object> is patched);
- relocations against those symbols move out of the ordinary tables into
  ``.klp.rela.<object><section name>`` (e.g. ``.klp.rela.vmlinux.text.cmdline_proc_show``),
  flagged SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH, one per patched section and object;
- the placeholder section goes.

The placeholder, rather than KBUILD_MODPOST_WARN=1, keeps modpost strict: a reference to a
symbol nobody exports still fails the build instead of giving a module that cannot load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base.commands import HOST, Runner, run_step
from kpatchbuild.base.errors import BuildError, about
from kpatchbuild.base.store import PROJECT_ROOT
from kpatchbuild.differ.diff import DiffResult, FunctionChange
from kpatchbuild.differ.report import REPORT_VERSION
from kpatchbuild.differ.resolve import EARLY_VMLINUX_RELOCATIONS, kernel_version
from kpatchbuild.differ.symbols import module_objname
from kpatchbuild.elf import read_elf, read_elf_bytes, write_elf, write_elf_file
from kpatchbuild.elf.model import (
    SHF_ALLOC,
    SHF_INFO_LINK,
    SHF_RELA_LIVEPATCH,
    SHN_LIVEPATCH,
    SHT_PROGBITS,
    STB_GLOBAL,
    STT_FUNC,
    STT_NOTYPE,
    ElfObject,
    Relocation,
    RelocationTable,
    Section,
    Symbol,
)

KMOD = PROJECT_ROOT / "kmod"
TEMPLATE = KMOD / "livepatch.c.in"
HEADER = KMOD / "kpatchbuild.h"

MAIN_SOURCE = "kpb_main.c"
PLACEHOLDER_OBJECT = "kpb_klp_symbols.o"
PLACEHOLDER_SECTION = ".kpb.klp_symbols"
KLP_RELA_FLAGS = SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH
CALLBACK_KINDS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")

_KLP_SYMBOL = re.compile(r"^\.klp\.sym\.([^.]+)\.(.+),(\d+)$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,54}$")

# Sections the module loader itself reads or patches at load time (x86): a livepatch
# relocation there would still be unapplied when the loader uses the entry.
LOADER_SECTIONS = frozenset(
    {
        ".altinstructions",
        ".altinstr_replacement",
        ".parainstructions",
        ".retpoline_sites",
        ".return_sites",
        ".ibt_endbr_seal",
        ".smp_locks",
        ".static_call_sites",
        ".orc_unwind",
        ".orc_unwind_ip",
        "__jump_table",
        "__mcount_loc",
        "__ex_table",
        "__bug_table",
        "__ksymtab",
        "__ksymtab_gpl",
        ".gnu.linkonce.this_module",
    }
)


class ModuleLinkError(BuildError):
    """The livepatch module cannot be built right; the message names the log."""


@dataclass(frozen=True)
class ObjectDiff:
    """One diffed object, as the module needs it.

    ``object_name`` names it in messages and file names (e.g. ``fs/proc/cmdline.o``);
    ``target`` is what it was diffed against: "vmlinux" or the module it belongs to (as
    given to ``diff_objects``); ``patch_object`` is the differ's output (OUT.o);
    ``changed_functions`` become klp_funcs, ``new_functions`` are only carried.
    """

    object_name: str
    target: str
    patch_object: ElfObject
    changed_functions: tuple[FunctionChange, ...]
    new_functions: tuple[FunctionChange, ...] = ()
    # Callbacks the patched source registered (kpatch-macros.h): (kind, carried function).
    callbacks: tuple[tuple[str, str], ...] = ()

    @property
    def objname(self) -> str:
        """The klp_object name: "vmlinux" or the module's name with '-' as '_'."""
        return "vmlinux" if self.target == "vmlinux" else module_objname(self.target)

    @classmethod
    def from_result(cls, result: DiffResult, target: str) -> ObjectDiff:
        if result.output is None:
            raise ModuleLinkError(f"{result.object_name}: the differ wrote no patch object")
        return cls(result.object_name, target, result.output,
                   tuple(result.changed_functions), tuple(result.new_functions),
                   tuple(sorted(result.callbacks.items())))

    @classmethod
    def from_report(cls, report: Path, patch_object: Path | None = None) -> ObjectDiff:
        """From the differ's JSON report and its OUT.o (default: the report's ``output``,
        relative to the report's directory)."""
        try:
            data = json.loads(Path(report).read_text(encoding="utf-8"))
            if data.get("version") != REPORT_VERSION:
                raise ModuleLinkError(f"{report}: a differ report of version "
                                      f"{data.get('version')}, this kpatchbuild reads version "
                                      f"{REPORT_VERSION}; diff the object again")
            if data.get("status") != "written":
                raise ModuleLinkError(f"{report}: the differ wrote no patch object")
            output = patch_object or Path(report).parent / data["output"]
            changed = tuple(_function(f) for f in data["changed_functions"])
            new = tuple(_function(f) for f in data["new_functions"])
            callbacks = tuple(sorted(data.get("callbacks", {}).items()))
            return cls(data["object"], data["target"], read_elf(output), changed, new,
                       callbacks)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModuleLinkError(f"{report}: not a usable differ report: {error}") from None


def _function(data: dict) -> FunctionChange:
    return FunctionChange(
        name=data["name"], old_name=data["old_name"], old_sympos=data["old_sympos"],
        section=data["section"], global_binding=data["global"],
        fingerprint=data["fingerprint"], old_fingerprint=data["old_fingerprint"],
        reason=data.get("reason", ""),
    )


@dataclass(frozen=True)
class PatchCallback:
    """A callback a patched object registered: ``alias`` is the global naming its function."""

    objname: str
    kind: str
    alias: str
    origin: str  # "fs/exec.o: fn", for messages


@dataclass(frozen=True)
class PatchedFunction:
    """One klp_func: ``alias`` is the global the registration uses for the new code."""

    objname: str
    old_name: str
    old_sympos: int
    alias: str


def link_module(
    tree: Path,
    name: str,
    diffs: Sequence[ObjectDiff],
    workdir: Path,
    *,
    release: str,
    log: Path,
    replace: bool = True,
    build_id: str | None = None,
    sources: Sequence[Path] = (),
    description: str = "",
    runner: Runner = HOST,
) -> Path:
    """Build the livepatch module ``<workdir>/<name>.ko`` and return its path (kbuild runs
    through ``runner``: the host, or the target's build root).

    ``tree``: a prepared or built kernel tree whose make speaks of ``release`` (its
    GNUmakefile pins it) and holding the target's Module.symvers. ``name``: the module name
    (letters, digits, '_'; it is also the /sys/kernel/livepatch/<name> directory).
    ``diffs``: the diff objects, at least one changed function in all. ``workdir``: filled
    with the generated sources, the shipped objects and kbuild's output, and kept: a file
    is rewritten only when its content changes, so kbuild, whose records say how each
    output was made, rebuilds only what changed (an edit inside a patched function does
    not recompile the registration: 0.7 s).
    ``replace``: klp_patch.replace (atomic replace). ``build_id``: the target kernel's GNU
    build id (``kernel_build_id``), recorded with ``release`` as modinfo
    ``kpatchbuild_release`` / ``kpatchbuild_build_id``; the module's vermagic is checked to
    name ``release``. ``sources``: the recipe's own C files compiled into the module (for
    callbacks, kmod/kpatchbuild.h). kbuild's whole output is appended to ``log``; failures
    raise ModuleLinkError, one line naming it.
    """
    subject = f"livepatch module {name}"
    with about(subject):
        _check_name(name, diffs)
    with about(subject, log=log):
        workdir.mkdir(parents=True, exist_ok=True)
        _write_if_changed(workdir / HEADER.name, HEADER.read_bytes())

        objects: list[str] = []
        functions: list[PatchedFunction] = []
        callbacks: list[PatchCallback] = []
        klp_symbols: dict[str, None] = {}
        for index, diff in enumerate(diffs):
            shipped, patched, registered = _ship_diff_object(diff, index, workdir)
            objects.append(shipped)
            functions += patched
            callbacks += registered
            for symbol in diff.patch_object.symbols:
                if symbol.is_undefined and symbol.name.startswith(".klp.sym."):
                    if not _KLP_SYMBOL.match(symbol.name):
                        raise ModuleLinkError(f"{diff.object_name}: malformed livepatch "
                                              f"symbol {symbol.name!r}")
                    klp_symbols[symbol.name] = None
        _check_unique(functions)
        if klp_symbols:
            _write_if_changed(workdir / (PLACEHOLDER_OBJECT + "_shipped"),
                              write_elf(_placeholder_object(list(klp_symbols))))
            objects.append(PLACEHOLDER_OBJECT)
        for shipped in objects:
            # modpost reads each object's kbuild record for the CRCs of its exports (#SYMVER
            # lines); shipped objects have no record and export nothing.
            _write_if_changed(workdir / f".{shipped}.cmd",
                              b"# shipped by kpatchbuild: no exports\n")
        extra = []
        for source in sources:
            if source.suffix != ".c" or source.name in (MAIN_SOURCE, HEADER.name):
                raise ModuleLinkError(f"{source}: module sources are .c files not named "
                                      f"{MAIN_SOURCE}")
            _write_if_changed(workdir / source.name, source.read_bytes())
            extra.append(source.with_suffix(".o").name)

        _check_one_callback_each(callbacks)
        _write_if_changed(workdir / MAIN_SOURCE, generate_registration(
            functions, callbacks=callbacks, replace=replace, release=release, build_id=build_id,
            description=description or f"livepatch {name}").encode())
        _write_if_changed(workdir / "Kbuild", (
            "# Generated by kpatchbuild: the livepatch module and what it links.\n"
            f"obj-m := {name}.o\n"
            f"{name}-y := {' '.join([MAIN_SOURCE[:-2] + '.o', *objects, *extra])}\n"
            "ccflags-y := -I$(src)\n").encode())
        # Linked anew every time: the livepatch relocations are rewritten into the fresh .ko.
        (workdir / f"{name}.ko").unlink(missing_ok=True)
        run_step(["make", "-C", str(tree), f"M={workdir}", "modules"], step=f"link {name}.ko",
                 log=log, runner=runner)
        module = workdir / f"{name}.ko"
        if not module.is_file():
            raise ModuleLinkError(f"kbuild made no {module.name}")
        _rewrite_livepatch_relocations(module, kernel_version(release))
        _check_modinfo(module, release)
        return module


def _check_name(name: str, diffs: Sequence[ObjectDiff]) -> None:
    if not _MODULE_NAME.match(name):
        raise ModuleLinkError("a module name is 1-55 letters, digits or '_'")
    if not any(d.changed_functions or d.callbacks for d in diffs):
        raise ModuleLinkError("no changed function to patch and no callback")


def _ship_diff_object(
    diff: ObjectDiff, index: int, workdir: Path
) -> tuple[str, list[PatchedFunction], list[PatchCallback]]:
    """Write the diff object with a global alias per changed function and callback;
    (object, klp_funcs, callbacks)."""
    # A private copy: the caller's ElfObject stays as the differ made it.
    obj = read_elf_bytes(write_elf(diff.patch_object), name=diff.object_name)
    defined = {s.name: s for s in obj.symbols if s.is_function and s.section is not None}
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(diff.object_name).stem)

    def add_alias(function_name: str, alias: str, what: str) -> None:
        """A global alias at the function's address, for the registration to name."""
        symbol = defined.get(function_name)
        if symbol is None:
            raise ModuleLinkError(f"{diff.object_name} does not define the {what} "
                                  f"{function_name}")
        obj.symbols.append(Symbol(alias, value=symbol.value, size=symbol.size, bind=STB_GLOBAL,
                                  type=STT_FUNC, section=symbol.section))

    patched = []
    for change in diff.changed_functions:
        alias = f"kpb_func_{index}_{re.sub(r'[^A-Za-z0-9_]', '_', change.name)}"
        add_alias(change.name, alias, "changed function")
        patched.append(PatchedFunction(diff.objname, change.old_name or change.name,
                                       change.old_sympos or 0, alias))
    registered = []
    for kind, function_name in diff.callbacks:
        alias = f"kpb_callback_{index}_{kind}"
        add_alias(function_name, alias, f"{kind} callback")
        registered.append(PatchCallback(diff.objname, kind, alias,
                                        f"{diff.object_name}: {function_name}"))
    shipped = f"kpb_{index}_{stem}.o"
    _write_if_changed(workdir / (shipped + "_shipped"), write_elf(obj))
    return shipped, patched, registered


def _write_if_changed(path: Path, data: bytes) -> None:
    """Keep a file (and its mtime) whose content is already ``data``: make rebuilds from
    what is newer."""
    if path.is_file() and path.read_bytes() == data:
        return
    path.write_bytes(data)


def _check_one_callback_each(callbacks: list[PatchCallback]) -> None:
    seen: dict[tuple[str, str], PatchCallback] = {}
    for callback in callbacks:
        other = seen.setdefault((callback.objname, callback.kind), callback)
        if other is not callback:
            raise ModuleLinkError(f"two {callback.kind} callbacks for "
                                  f"{callback.objname} ({other.origin}, {callback.origin}): "
                                  f"livepatch runs one per object")


def _check_unique(functions: list[PatchedFunction]) -> None:
    seen: set[tuple[str, str, int]] = set()
    for function in functions:
        key = (function.objname, function.old_name, function.old_sympos)
        if key in seen:
            raise ModuleLinkError(f"{function.objname} function {function.old_name} "
                                  f"(sympos {function.old_sympos}) is patched twice")
        seen.add(key)


def _placeholder_object(names: list[str]) -> ElfObject:
    """Defines each livepatch symbol so kbuild links and modpost checks the rest strictly."""
    # Allocated, as modpost wants every section a module's code refers to; dropped after the
    # link, so it never reaches the kernel.
    section = Section(PLACEHOLDER_SECTION, SHT_PROGBITS, SHF_ALLOC, data=b"\0")
    symbols = [Symbol(n, bind=STB_GLOBAL, type=STT_NOTYPE, section=section) for n in names]
    return ElfObject(sections=[section], symbols=symbols, name=PLACEHOLDER_OBJECT)


def generate_registration(
    functions: Sequence[PatchedFunction],
    *,
    callbacks: Sequence[PatchCallback] = (),
    replace: bool,
    release: str,
    build_id: str | None,
    description: str,
) -> str:
    """The module's C registration (kmod/livepatch.c.in filled in)."""
    by_object: dict[str, list[PatchedFunction]] = {}
    for function in functions:
        by_object.setdefault(function.objname, []).append(function)
    registered = {(c.objname, c.kind): c.alias for c in callbacks}
    for callback in callbacks:  # an object may have callbacks and no function
        by_object.setdefault(callback.objname, [])
    # vmlinux first: livepatch patches it at once, modules when they load.
    objnames = sorted(by_object, key=lambda o: (o != "vmlinux", o))
    declarations = [f"extern void {f.alias}(void);" for f in functions]
    declarations += [f"extern {'int' if c.kind == 'pre_patch' else 'void'} "
                     f"{c.alias}(struct klp_object *obj);" for c in callbacks]
    tables, entries, slots, assignments = [], [], [], []
    for position, objname in enumerate(objnames):
        lines = [f"static struct klp_func kpb_funcs_{position}[] = {{"]
        for function in by_object[objname]:
            lines += [
                "\t{",
                f"\t\t.old_name = {_c_string(function.old_name)},",
                f"\t\t.new_func = {function.alias},",
                f"\t\t.old_sympos = {function.old_sympos},",
                "\t},",
            ]
        tables.append("\n".join([*lines, "\t{ }", "};"]))
        name = "NULL" if objname == "vmlinux" else _c_string(objname)
        entries.append(f"\t{{\n\t\t.name = {name},\n\t\t.funcs = kpb_funcs_{position},\n\t}},")
        for kind in CALLBACK_KINDS:
            slot = f"kpb_{kind}__{objname}"
            alias = registered.get((objname, kind))
            if alias is None:
                slots.append(f"kpb_{kind}_t {slot} __weak;")
            else:  # a recipe source defining it too is a link error, naming the slot
                slots.append(f"kpb_{kind}_t {slot} = {alias};")
            assignments.append(f"\tkpb_objects[{position}].callbacks.{kind} = {slot};")
    info = [f"MODULE_INFO(kpatchbuild_release, {_c_string(release)});"]
    if build_id:
        info.append(f"MODULE_INFO(kpatchbuild_build_id, {_c_string(build_id)});")
    text = TEMPLATE.read_text()
    for marker, value in {
        "DECLARATIONS": "\n".join(declarations),
        "FUNCTION_TABLES": "\n\n".join(tables),
        "OBJECTS": "\n".join(entries),
        "REPLACE": "true" if replace else "false",
        "CALLBACK_SLOTS": "\n".join(slots),
        "CALLBACK_ASSIGNMENTS": "\n".join(assignments),
        "DESCRIPTION": description.replace("\\", "\\\\").replace('"', '\\"'),
        "TARGET_INFO": "\n".join(info),
    }.items():
        text = text.replace(f"@@{marker}@@", value)
    return text


def _c_string(text: str) -> str:
    if not re.fullmatch(r"[\x20-\x7e]*", text) or '"' in text or "\\" in text:
        raise ModuleLinkError(f"cannot write {text!r} as a C string literal")
    return f'"{text}"'


def _rewrite_livepatch_relocations(module: Path, version: tuple[int, int]) -> None:
    obj = read_elf(module)
    placeholder = obj.section_by_name(PLACEHOLDER_SECTION)
    if placeholder is None:
        if any(s.name.startswith(".klp.sym.") for s in obj.symbols):
            raise ModuleLinkError("livepatch symbols but no placeholder section "
                                  "after the link")
        return
    klp_objname: dict[int, str] = {}
    for symbol in obj.symbols:
        if symbol.section is placeholder and symbol.name:
            if symbol.is_section_symbol:
                continue
            matched = _KLP_SYMBOL.match(symbol.name)
            if matched is None:
                raise ModuleLinkError(f"unexpected symbol {symbol.name!r} in the "
                                      f"livepatch placeholder")
            klp_objname[id(symbol)] = matched.group(1)
            symbol.section, symbol.shndx = None, SHN_LIVEPATCH
            symbol.value = symbol.size = 0
            symbol.bind, symbol.type = STB_GLOBAL, STT_NOTYPE
    for section in obj.sections:
        if not section.relocations:
            continue
        kept: list[Relocation] = []
        moved: dict[str, list[Relocation]] = {}
        for relocation in section.relocations:
            objname = klp_objname.get(id(relocation.symbol))
            if relocation.symbol.section is placeholder:
                raise ModuleLinkError(f"{section.name} refers into the livepatch "
                                      f"placeholder itself")
            if objname is None:
                kept.append(relocation)
            else:
                moved.setdefault(objname, []).append(relocation)
        if not moved:
            continue
        # Since 5.8 the loader applies vmlinux's livepatch relocations before it reads its
        # own tables; those against a module come later.
        early = {"vmlinux"} if version >= EARLY_VMLINUX_RELOCATIONS else set()
        late = {o: rs for o, rs in moved.items() if o not in early or not section.is_alloc}
        if not section.is_alloc or (section.name in LOADER_SECTIONS and late):
            names = sorted({r.symbol.name for rs in late.values() for r in rs})
            raise ModuleLinkError(
                f"section {section.name} needs livepatch relocations ({', '.join(names)})"
                f" but the module loader reads it before livepatch can apply them"
            )
        section.relocations = kept or None
        for objname, relocations in sorted(moved.items()):
            section.extra_relocation_tables.append(
                RelocationTable(f".klp.rela.{objname}{section.name}", relocations,
                                KLP_RELA_FLAGS)
            )
    placeholder_symbol = obj.section_symbol(placeholder)
    obj.symbols = [s for s in obj.symbols if s is not placeholder_symbol]
    obj.sections = [s for s in obj.sections if s is not placeholder]
    write_elf_file(obj, module)


def read_modinfo(module: Path) -> list[tuple[str, str]]:
    """The ``key=value`` entries of a module's .modinfo, in order."""
    section = read_elf(module).section_by_name(".modinfo")
    if section is None:
        return []
    entries = []
    for item in section.data.split(b"\0"):
        if b"=" in item:
            key, _, value = item.decode(errors="replace").partition("=")
            entries.append((key, value))
    return entries


def _check_modinfo(module: Path, release: str) -> None:
    info = dict(read_modinfo(module))
    vermagic = info.get("vermagic", "")
    if vermagic.split(" ", 1)[0] != release:
        raise ModuleLinkError(f"vermagic '{vermagic}' does not name the target "
                              f"release {release}: the tree is not pinned to it")
    if info.get("livepatch") != "Y":
        raise ModuleLinkError("no livepatch=Y modinfo")
