"""Symbol tables and livepatch positions, counted the way klp_find_object_symbol counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpatchbuild.differ.symbols import (
    AmbiguousSymbol,
    SymbolsError,
    load_module_symvers,
    load_symbol_table,
    module_objname,
)

SYSTEM_MAP = """\
ffffffff81000000 T _stext
ffffffff81001000 t helper
ffffffff81001100 t alpha_open
ffffffff81001200 t alpha_read
ffffffff81002000 t show
ffffffff81002010 t gamma_1
ffffffff81002020 t gamma_2
ffffffff81002030 t gamma_3
ffffffff81002040 t gamma_4
ffffffff81002100 t beta_open
ffffffff81002200 t beta_write
ffffffff81002300 t show
ffffffff81003000 T common
ffffffff81004000 t common
ffffffff81005000 t helper
ffffffff81006000 N debug_only
"""


@pytest.fixture
def system_map(tmp_path: Path) -> Path:
    path = tmp_path / "System.map"
    path.write_text(SYSTEM_MAP)
    return path


def test_unique_symbol_has_position_zero(system_map: Path) -> None:
    table = load_symbol_table(system_map)
    assert table.sympos("alpha_open", local=True) == 0
    assert "debug_only" not in table  # kallsyms drops debugging symbols


def test_duplicate_local_chosen_by_neighbours(system_map: Path) -> None:
    table = load_symbol_table(system_map)
    beta = frozenset({"beta_open", "beta_write", "show"})
    alpha = frozenset({"alpha_open", "alpha_read", "show", "helper"})
    # Positions are 1-based over every `show` in address order.
    assert table.sympos("show", local=True, neighbours=beta) == 2
    assert table.sympos("show", local=True, neighbours=alpha) == 1


def test_duplicate_local_without_evidence_is_refused(system_map: Path) -> None:
    table = load_symbol_table(system_map)
    with pytest.raises(AmbiguousSymbol) as caught:
        table.sympos("show", local=True, neighbours=frozenset({"unrelated"}))
    assert caught.value.exit_code == 2


def test_global_among_locals(system_map: Path) -> None:
    table = load_symbol_table(system_map)
    assert table.sympos("common", local=False) == 1
    assert table.sympos("common", local=True, neighbours=frozenset({"helper"})) == 2


def test_missing_symbol(system_map: Path) -> None:
    with pytest.raises(SymbolsError, match="not found"):
        load_symbol_table(system_map).sympos("nowhere", local=False)


def test_kallsyms_module_lines(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_text(
        "ffffffff81000000 T _stext\n"
        "ffffffffc0001000 t show\t[my_mod]\n"
        "ffffffffc0002000 t show\t[other]\n"
        "ffffffffc0003000 t show\t[my_mod]\n"
    )
    table = load_symbol_table(path, module_objname("my-mod.ko"))
    assert table.objname == "my_mod"
    assert [e.address for e in table.named("show")] == [0xFFFFFFFFC0001000, 0xFFFFFFFFC0003000]


def test_elf_table_uses_source_files(tmp_path: Path) -> None:
    import subprocess

    for name, body in (("a", "static int dup(int x) { return x + 1; }\n"),
                       ("b", "static int dup(int x) { return x + 2; }\n")):
        source = tmp_path / f"{name}.c"
        source.write_text(body + f"int use_{name}(int x) {{ return dup(x); }}\n")
        subprocess.run(["gcc", "-O0", "-c", "-o", str(tmp_path / f"{name}.o"), str(source)],
                       check=True)
    linked = tmp_path / "both.o"
    subprocess.run(["ld", "-r", "-o", str(linked), str(tmp_path / "a.o"), str(tmp_path / "b.o")],
                   check=True)
    table = load_symbol_table(linked, "both")
    assert table.has_source_files
    assert table.sympos("dup", local=True, source_file="b.c") == 2
    assert table.sympos("dup", local=True, source_file="a.c") == 1


def test_module_symvers(tmp_path: Path) -> None:
    path = tmp_path / "Module.symvers"
    path.write_text(
        "0x12345678\tseq_puts\tvmlinux\tEXPORT_SYMBOL\t\n"
        "0x9abcdef0\tusb_thing\tdrivers/usb/core/usbcore\tEXPORT_SYMBOL_GPL\tUSB_NS\n"
    )
    exports = load_module_symvers(path)
    assert exports["seq_puts"].module == "vmlinux"
    assert exports["usb_thing"].namespace == "USB_NS"
    assert module_objname(exports["usb_thing"].module) == "usbcore"


def test_bad_text_table(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_text("this is not a map\n")
    with pytest.raises(SymbolsError, match="not a System.map"):
        load_symbol_table(path)


def _link_units(tmp_path: Path, bodies: dict[str, str], relocatable: bool = False) -> Path:
    """An executable (a vmlinux stand-in) or ``ld -r`` object linked from C files, each
    ``dir/name.c`` compiled as kbuild does, so its STT_FILE is the file's base name."""
    import subprocess

    objects = []
    for path, body in bodies.items():
        source = tmp_path / path
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(body)
        obj = source.with_suffix(".o")
        subprocess.run(["gcc", "-O0", "-c", "-o", obj.name, source.name], check=True,
                       cwd=source.parent)
        objects.append(str(obj))
    linked = tmp_path / ("linked.o" if relocatable else "vmlinux")
    mode = ["-r"] if relocatable else ["-e", "0"]
    subprocess.run(["ld", *mode, "-o", str(linked), *objects], check=True)
    return linked


# Two objects named core.c (sched/ and irq/), each with a static `__key.0`; a third file.
UNITS = {
    "sched/core.c": "static int __key_0 = 1; int sched_tick(void) { return __key_0; }\n"
                    "static int sched_local(void) { return 2; } int use_s(void) "
                    "{ return sched_local(); }\n",
    "irq/core.c": "static int __key_0 = 3; int irq_tick(void) { return __key_0; }\n"
                  "static int irq_local(void) { return 4; } int use_i(void) "
                  "{ return irq_local(); }\n",
    "fs/other.c": "static int __key_0 = 5; int other_tick(void) { return __key_0; }\n",
}


def test_local_resolved_by_the_unit_of_its_file(tmp_path: Path) -> None:
    table = load_symbol_table(_link_units(tmp_path, UNITS))
    assert table.has_source_files
    positions = {entry.source_file for entry in table.named("__key_0")}
    assert positions == {"core.c", "other.c"}
    irq = frozenset({"irq_tick", "irq_local", "use_i", "__key_0"})
    sched = frozenset({"sched_tick", "sched_local", "use_s", "__key_0"})
    by_address = [e.address for e in table.named("__key_0")]
    assert by_address == sorted(by_address)  # counted in kallsyms (address) order
    irq_pos = table.sympos("__key_0", local=True, source_file="core.c", neighbours=irq)
    sched_pos = table.sympos("__key_0", local=True, source_file="core.c", neighbours=sched)
    assert irq_pos != sched_pos
    entries = table.named("__key_0")
    assert "irq_local" in table._names_of_unit(entries[irq_pos - 1].unit)
    assert "sched_local" in table._names_of_unit(entries[sched_pos - 1].unit)
    other = next(p for p, e in enumerate(entries, 1) if e.source_file == "other.c")
    assert table.sympos("__key_0", local=True, source_file="other.c") == other


def test_local_in_two_units_of_one_file_name_without_evidence_is_refused(tmp_path: Path) -> None:
    table = load_symbol_table(_link_units(tmp_path, UNITS))
    with pytest.raises(AmbiguousSymbol) as caught:
        table.sympos("__key_0", local=True, source_file="core.c",
                     neighbours=frozenset({"__key_0"}))
    assert "2 objects named core.c" in caught.value.message


def test_compact_table_round_trip(tmp_path: Path) -> None:
    from kpatchbuild.differ.symbols import write_compact_table

    original = load_symbol_table(_link_units(tmp_path, UNITS))
    compact = tmp_path / "vmlinux.symbols"
    write_compact_table(original, compact)
    loaded = load_symbol_table(compact)
    assert loaded.names == original.names and len(loaded) == len(original)
    for name in ("__key_0", "irq_local", "use_s"):
        assert loaded.named(name) == original.named(name)
    irq = frozenset({"irq_tick", "irq_local", "use_i"})
    assert (loaded.sympos("__key_0", local=True, source_file="core.c", neighbours=irq)
            == original.sympos("__key_0", local=True, source_file="core.c", neighbours=irq))
    with pytest.raises(SymbolsError, match="not of my_mod"):
        load_symbol_table(compact, "my_mod")


def test_damaged_compact_table(tmp_path: Path) -> None:
    from kpatchbuild.differ.symbols import write_compact_table

    compact = tmp_path / "vmlinux.symbols"
    write_compact_table(load_symbol_table(_link_units(tmp_path, UNITS)), compact)
    compact.write_bytes(compact.read_bytes()[:-10])
    with pytest.raises(SymbolsError) as caught:
        load_symbol_table(compact)
    assert "damaged compact symbol table" in caught.value.message
    assert "\n" not in caught.value.message
