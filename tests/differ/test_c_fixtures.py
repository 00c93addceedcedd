"""The differ on small C objects: each case asserts the exact functions and the outcome."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kpatchbuild.differ import CannotPatch, diff_objects
from kpatchbuild.differ.symbols import load_symbol_table
from kpatchbuild.elf import read_elf, write_elf_file
from kpatchbuild.elf.model import STB_GLOBAL, STB_LOCAL, STT_SECTION
from tests.differ import cfixtures
from tests.differ.cfixtures import available_compilers, build_pair, diff_pair, names


@pytest.fixture(autouse=True, params=available_compilers())
def compiler(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs once per compiler; a required one that is missing fails."""
    name = request.param
    if shutil.which(name) is None:
        pytest.fail(f"{name} is not installed: ./run installs it (apt-get install {name})")
    monkeypatch.setattr(cfixtures, "compiler", name)
    return name

BASE = """
extern int printk(const char *fmt, ...);
extern void __might_sleep(const char *file, int line);
int shared_total;
static int table[4] = {1, 2, 3, 4};

static __attribute__((noinline)) int scale(int x)
{
	return x * 7;
}

int count_calls(void)
{
	static int calls;
	return ++calls;
}

int report(int v)
{
	printk("value %d\\n", v);
	return scale(v) + table[v & 3];
}

int unchanged(int v)
{
	return v + shared_total;
}
"""


def _link(tmp_path: Path, result) -> Path:  # noqa: ANN001
    out = tmp_path / "out.o"
    write_elf_file(result.output, out)
    assert subprocess.run(["readelf", "-a", "-W", str(out)], capture_output=True,
                          text=True).stderr == ""
    subprocess.run(["ld", "-r", "-o", str(tmp_path / "linked.o"), str(out)], check=True)
    return out


def _defined_functions(path: Path) -> set[str]:
    return {s.name for s in read_elf(path).symbols if s.is_function and s.section is not None}


def test_objects_come_from_the_compiler(tmp_path: Path, compiler: str) -> None:
    """The parametrisation is real: the object's .comment names that compiler's version."""
    version = subprocess.run([compiler, "-dumpfullversion"], capture_output=True, text=True,
                             check=True).stdout.strip()
    pair = build_pair(tmp_path, BASE, BASE)
    comment = read_elf(pair.orig).section_by_name(".comment")
    assert comment is not None and f") {version}".encode() in comment.data


def test_no_change(tmp_path: Path) -> None:
    pair = build_pair(tmp_path, BASE, BASE)
    result = diff_pair(pair)
    assert not result.has_changes
    assert result.changed_functions == [] and result.new_functions == []


def test_string_change(tmp_path: Path) -> None:
    pair = build_pair(tmp_path, BASE, BASE.replace("value %d", "patched value %d"))
    result = diff_pair(pair)
    assert names(result.changed_functions) == {"report"}
    assert result.new_functions == []
    out = _link(tmp_path, result)
    assert _defined_functions(out) == {"report"}
    by_name = {r.target_name: r for r in result.resolutions}
    # scale and table are locals of the original: livepatch relocations, unique -> sympos 0.
    assert by_name["scale"].how == "klp" and by_name["scale"].sympos == 0
    assert by_name["table"].name == ".klp.sym.vmlinux.table,0"


def test_new_function(tmp_path: Path) -> None:
    patched = BASE.replace(
        "int report(int v)\n{",
        "static __attribute__((noinline)) int clamp(int v) { return v > 9 ? 9 : v; }\n"
        "int report(int v)\n{\n\tv = clamp(v);",
    )
    result = diff_pair(build_pair(tmp_path, BASE, patched))
    assert names(result.changed_functions) == {"report"}
    assert names(result.new_functions) == {"clamp"}
    assert _defined_functions(_link(tmp_path, result)) == {"report", "clamp"}


def test_static_local_renumbered(tmp_path: Path) -> None:
    """A new static local above renumbers `calls.N`; unchanged users stay unchanged."""
    patched = BASE.replace(
        "int shared_total;",
        "int shared_total;\nint first(void) { static int calls; return calls += 2; }",
    )
    result = diff_pair(build_pair(tmp_path, BASE, patched))
    assert result.changed_functions == []
    assert names(result.new_functions) == {"first"}


def test_static_local_kept_by_changed_function(tmp_path: Path) -> None:
    patched = BASE.replace("return ++calls;", "calls += 2;\n\treturn calls;")
    result = diff_pair(build_pair(tmp_path, BASE, patched))
    assert names(result.changed_functions) == {"count_calls"}
    # The counter is the running kernel's: referenced with a livepatch relocation.
    klp = [r for r in result.resolutions if r.how == "klp"]
    assert [r.target_name for r in klp if r.target_name.startswith("calls")]


def test_changed_inline_callee(tmp_path: Path) -> None:
    source = BASE.replace(
        "int unchanged(int v)",
        "static inline int twice(int v) { return v * 2; }\n"
        "int user_a(int v) { return twice(v) + 1; }\n"
        "int user_b(int v) { return twice(v) - 1; }\n"
        "int unchanged(int v)",
    )
    patched = source.replace("return v * 2;", "return v * 2 + shared_total;")
    result = diff_pair(build_pair(tmp_path, source, patched))
    assert names(result.changed_functions) == {"user_a", "user_b"}


def test_cold_split(tmp_path: Path) -> None:
    source = BASE + """
extern void slow_path(int) __attribute__((cold));
int checked(int v, int w)
{
	int r = v * w;
	if (__builtin_expect(v < 0, 0)) {
		slow_path(v);
		r += printk("negative %d %d\\n", v, w);
	}
	return r + 1;
}
"""
    patched = source.replace("negative %d", "negative value %d")
    pair = build_pair(tmp_path, source, patched)
    assert "checked.cold" in _defined_functions(pair.orig)
    why = {s.name: s.reason for s in diff_pair(pair).included_symbols if s.kind == "function"}
    assert why["checked"] == "its out-of-line part checked.cold changed"
    assert why["checked.cold"] == "out-of-line part of checked"
    result = diff_pair(pair)
    assert names(result.changed_functions) == {"checked"}
    out = _link(tmp_path, result)
    assert _defined_functions(out) == {"checked", "checked.cold"}


def test_line_only_shift(tmp_path: Path) -> None:
    source = BASE + """
int sleepy(int v)
{
	__might_sleep("unit.c", __LINE__);
	return v + 3;
}
"""
    patched = source.replace("extern int printk", "/* one */\n/* two */\nextern int printk")
    result = diff_pair(build_pair(tmp_path, source, patched))
    assert not result.has_changes
    assert result.line_only_changes == ["sleepy"]


def test_data_layout_change_refused(tmp_path: Path) -> None:
    patched = BASE.replace("{1, 2, 3, 4}", "{1, 2, 3, 5}").replace("value %d", "v %d")
    with pytest.raises(CannotPatch) as caught:
        diff_pair(build_pair(tmp_path, BASE, patched))
    assert caught.value.exit_code == 2
    assert "data table" in caught.value.message and "shadow variable" in caught.value.message


def _marked_instruction_source(table: str) -> str:
    """A function whose instruction a ``table`` entry marks, as runtime_const_ptr() does."""
    return BASE + """
static inline unsigned long user_limit(void)
{
	unsigned long limit;

	asm("movabs $0x0123456789abcdef, %0\\n1:\\n"
		".pushsection TABLE,\\"a\\"\\n\\t.long 1b - 8 - .\\n\\t.popsection"
		: "=r"(limit));
	return limit;
}

int below_limit(unsigned long v)
{
	return v <= user_limit();
}

int (*const checkers[])(unsigned long) = { below_limit };
""".replace("TABLE", table)


def test_boot_time_constant_in_changed_function_refused(tmp_path: Path) -> None:
    source = _marked_instruction_source("runtime_ptr_USER_LIMIT")
    patched = source.replace("v <= user_limit()", "v < user_limit()")
    with pytest.raises(CannotPatch) as caught:
        diff_pair(build_pair(tmp_path, source, patched))
    assert "below_limit" in caught.value.message
    assert "boot-time constant USER_LIMIT" in caught.value.message


def test_unknown_table_into_changed_function_refused(tmp_path: Path) -> None:
    source = _marked_instruction_source(".kpb_unknown_sites")
    patched = source.replace("v <= user_limit()", "v < user_limit()")
    with pytest.raises(CannotPatch) as caught:
        diff_pair(build_pair(tmp_path, source, patched))
    assert "section .kpb_unknown_sites points into carried function below_limit+0x" in (
        caught.value.message
    )


def test_marked_instruction_in_unchanged_function_is_no_obstacle(tmp_path: Path) -> None:
    # The table and the function-pointer array point at below_limit, which stays home.
    source = _marked_instruction_source("runtime_ptr_USER_LIMIT")
    result = diff_pair(build_pair(tmp_path, source, source.replace("value %d", "v=%d")))
    assert names(result.changed_functions) == {"report"}
    assert _defined_functions(_link(tmp_path, result)) == {"report"}


@pytest.mark.parametrize("marker, section", [("__ksymtab_", "___ksymtab+kpb_added"),
                                             ("__export_symbol_", ".export_symbol")])
def test_new_export_refused(tmp_path: Path, marker: str, section: str) -> None:
    # What EXPORT_SYMBOL leaves in an object: before Linux 6.5, and since.
    patched = BASE.replace("value %d", "v=%d") + f"""
int kpb_added(int v) {{ return report(v) + 1; }}
static const char {marker}kpb_added[] __attribute__((used, section("{section}"))) = "";
"""
    with pytest.raises(CannotPatch) as caught:
        diff_pair(build_pair(tmp_path, BASE, patched))
    assert "new export kpb_added: a live patch cannot export symbols" in caught.value.message


def test_init_change_refused(tmp_path: Path) -> None:
    source = BASE + """
__attribute__((section(".init.text"), noinline)) int setup_thing(void)
{
	return printk("setup\\n");
}
"""
    patched = source.replace('"setup\\n"', '"setup v2\\n"')
    with pytest.raises(CannotPatch) as caught:
        diff_pair(build_pair(tmp_path, source, patched))
    assert "setup_thing" in caught.value.message and "__init" in caught.value.message


def test_new_global_variable_is_carried(tmp_path: Path) -> None:
    patched = BASE.replace("int shared_total;", "int shared_total;\nint patch_hits;").replace(
        "return v + shared_total;", "patch_hits++;\n\treturn v + shared_total;"
    )
    result = diff_pair(build_pair(tmp_path, BASE, patched))
    assert names(result.changed_functions) == {"unchanged"}
    included = {s.name: s for s in result.included_symbols}
    assert included["patch_hits"].new and included["patch_hits"].kind == "data"
    _link(tmp_path, result)


def test_binding_change_global_to_local(tmp_path: Path) -> None:
    patched = BASE.replace("int unchanged(int v)", "static int unchanged(int v)") + (
        "int caller(int v) { return unchanged(v); }\n"
    )
    source = BASE + "int caller(int v) { return unchanged(v); }\n"
    result = diff_pair(build_pair(tmp_path, source, patched))
    assert "unchanged" not in names(result.changed_functions)


def test_relocation_target_change_behind_equal_bytes(tmp_path: Path) -> None:
    source = BASE + "int other_total;\nint pick(void) { return shared_total; }\n"
    patched = BASE + "int other_total;\nint pick(void) { return other_total; }\n"
    result = diff_pair(build_pair(tmp_path, source, patched))
    assert names(result.changed_functions) == {"pick"}
    (pick,) = result.changed_functions
    assert pick.reason.startswith("changed reference at +0x") and \
        "(shared_total-0x4 -> other_total-0x4)" in pick.reason


def test_notrace_function_refused(tmp_path: Path) -> None:
    """Built for ftrace (-pg -mfentry), a function without its __fentry__ call cannot change."""
    source = BASE + "__attribute__((no_instrument_function)) int quiet(int v) { return v ^ 5; }\n"
    patched = source.replace("v ^ 5", "v ^ 6").replace("value %d", "value: %d")
    with pytest.raises(CannotPatch) as caught:
        diff_pair(build_pair(tmp_path, source, patched, extra=("-pg", "-mfentry")))
    assert "quiet" in caught.value.message and "__fentry__" in caught.value.message
    assert "report" not in caught.value.message


# Dynamic-debug descriptors as the kernel lays them out: a static per call site in the
# descriptor section, and a jump entry whose key lies inside it. As with print_hex_dump_debug,
# the code names the descriptor only through its jump entry.
DYNDBG = """
extern int printk(const char *fmt, ...);
struct ddesc { const char *function; const char *format; long key[2]; } __attribute__((aligned(8)));

#define DDESC(name, function, fmt) \\
	static struct ddesc name __attribute__((section("SECTION"), used)) = { function, fmt }

static inline __attribute__((always_inline)) int debug_on(void *key)
{
	asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\\n"
	".pushsection __jump_table, \\"aw\\"\\n .balign 8\\n"
	".long 1b - ., %l[yes] - .\\n .quad %c0 - .\\n .popsection"
	: : "i"(key) : : yes);
	return 0;
yes:
	return 1;
}

int dumper(int v)
{
	DDESC(desc, "dumper", "dump");
	if (debug_on(&desc.key))
		printk("dump %d\\n", v);
	return v + 1;
}

DDESC(other_desc, "other", "other");

int other(int v)
{
	if (debug_on(&other_desc.key))
		printk("other %d\\n", v);
	return v * 3;
}
"""


def _descriptor_functions(path: Path, section_name: str) -> list[str]:
    """The function each descriptor of ``section_name`` names (its first field)."""
    obj = read_elf(path)
    table = obj.section_by_name(section_name)
    assert table is not None
    functions = []
    for relocation in table.relocations:
        assert relocation.symbol.section is not None
        if relocation.offset % 32 == 0:  # struct ddesc: `function` first, 32 bytes each
            data = relocation.symbol.section.data
            start = relocation.addend + (
                relocation.symbol.value if relocation.symbol.type != STT_SECTION else 0
            )
            functions.append(data[start : data.index(b"\0", start)].decode())
    return sorted(functions)


@pytest.mark.parametrize("section_name", ["__dyndbg", "__verbose"])
def test_dyndbg_descriptor_follows_its_function(tmp_path: Path, section_name: str) -> None:
    """The unchanged descriptor of a changed function is copied, not referenced (its jump
    entry is applied by the module loader, before livepatch relocations exist); the other
    function's descriptor stays behind. Older kernels call the section `__verbose`."""
    source = DYNDBG.replace("SECTION", section_name)
    result = diff_pair(build_pair(tmp_path, source, source.replace("v + 1", "v + 2")))
    assert names(result.changed_functions) == {"dumper"}
    out = _link(tmp_path, result)
    assert _descriptor_functions(out, section_name) == ["dumper"]
    jump_table = read_elf(out).section_by_name("__jump_table")
    keys = [r for r in jump_table.relocations if r.offset % 16 == 8]
    assert [k.symbol.section.name for k in keys] == [section_name]


def test_dyndbg_class_map_refused(tmp_path: Path) -> None:
    source = DYNDBG.replace("SECTION", "__dyndbg") + (
        'static const char *classes[2] __attribute__((section("__dyndbg_classes"), used))'
        ' = { "A", "B" };\n'
    )
    with pytest.raises(CannotPatch) as caught:
        diff_pair(build_pair(tmp_path, source, source.replace("v + 1", "v + 2")))
    assert "__dyndbg_classes" in caught.value.message


def test_changed_constant_next_to_printk_is_a_change(tmp_path: Path) -> None:
    """printk takes no __LINE__: a changed immediate argument is not a line shift."""
    source = BASE + 'int answer(void) { return printk("answer %d\\n", 42); }\n'
    result = diff_pair(build_pair(tmp_path, source, source.replace("42)", "43)")))
    assert names(result.changed_functions) == {"answer"}
    assert result.line_only_changes == []


def test_line_argument_must_be_the_line_register(tmp_path: Path) -> None:
    """For __cant_sleep(file, line, offset) only the line (%esi) may differ for a line shift."""
    source = BASE + """
extern void __cant_sleep(const char *file, int line, int preempt_offset);
int sleepy_offset(int v)
{
	__cant_sleep("unit.c", 10, 7);
	return v + 1;
}
"""
    result = diff_pair(build_pair(tmp_path, source, source.replace("10, 7)", "10, 8)")))
    assert names(result.changed_functions) == {"sleepy_offset"}
    (tmp_path / "shift").mkdir()
    shifted = diff_pair(build_pair(tmp_path / "shift", source, source.replace("10, 7)", "12, 7)")))
    assert shifted.line_only_changes == ["sleepy_offset"] and not shifted.has_changes


def test_removed_static_replaced_by_external_global(tmp_path: Path) -> None:
    """The patched code calls a global `helper` after dropping its own static `helper`: the
    reference must go to the global, not to the original object's static namesake."""
    source = BASE + """
static __attribute__((noinline)) int helper(int v) { return v - 1; }
int use_helper(int v) { return helper(v) * 2; }
"""
    patched = BASE + "extern int helper(int v);\nint use_helper(int v) { return helper(v) * 2; }\n"
    pair = build_pair(tmp_path, source, patched)
    other = tmp_path / "other"
    other.mkdir()
    (other / "helper.c").write_text("int helper(int v) { return v + 100; }\n")
    subprocess.run([cfixtures.compiler, "-O2", "-c", "-o", str(other / "helper.o"),
                    str(other / "helper.c")], check=True)
    kernel = tmp_path / "vmlinux.o"
    subprocess.run(["ld", "-r", "-o", str(kernel), str(pair.orig), str(other / "helper.o")],
                   check=True)
    table = load_symbol_table(kernel, "vmlinux")
    result = diff_objects(pair.orig, pair.patched, symbols=table, exports={}, require_fentry=False)
    assert names(result.changed_functions) == {"use_helper"}
    (helper,) = [r for r in result.resolutions if r.target_name == "helper"]
    matches = table.named("helper")
    assert len(matches) == 2 and helper.how == "klp"
    assert matches[helper.sympos - 1].is_global


def test_new_variable_sharing_a_section_with_existing_ones_refused(tmp_path: Path) -> None:
    """A new `__read_mostly`-style variable cannot be carried without copying its neighbours,
    which would leave the carried code reading a copy instead of the kernel's variable."""
    existing = 'static int existing __attribute__((section(".data..read_mostly"))) = 5;\n'
    source = BASE + existing + "int getit(void) { return existing; }\n"
    patched = BASE + existing + (
        'static int added __attribute__((section(".data..read_mostly"))) = 1;\n'
        "int getit(void) { return existing + added; }\n"
    )
    with pytest.raises(CannotPatch) as caught:
        diff_pair(build_pair(tmp_path, source, patched))
    assert "added" in caught.value.message and ".data..read_mostly" in caught.value.message
    assert caught.value.exit_code == 2


def test_reference_into_and_past_a_static_array(tmp_path: Path) -> None:
    """`big_table + 1000` and the loop bound `big_table + 2048` (one past its end) are the running
    kernel's table plus an offset, not unnamed data."""
    source = BASE + """
static int big_table[2048];
int sum_table(void)
{
	int s = big_table[1000];

	for (int *p = big_table; p < big_table + 2048; p++)
		s += *p;
	return s;
}
"""
    result = diff_pair(build_pair(tmp_path, source, source.replace("s += *p;", "s += *p * 2;")))
    assert names(result.changed_functions) == {"sum_table"}
    assert {r.target_name for r in result.resolutions} >= {"big_table"}
    text = result.output.section_by_name(".text.sum_table")
    addends = {r.addend for r in text.relocations if r.symbol.name.endswith(".big_table,0")}
    assert 0x2000 in addends  # one past the end, on the table itself


def test_out_of_line_part_reached_only_by_an_annotation_travels_with_its_function(
        tmp_path: Path) -> None:
    """An R_X86_64_NONE from fn to `.text.unlikely.fn` (no jump, no symbol at the target):
    the section is fn's out-of-line part and comes with it."""
    source = BASE + r"""
int annotated(int v)
{
	asm volatile(".reloc ., R_X86_64_NONE, .text.unlikely.annotated");
	if (v > 100)
		return v + 1;
	return v - 1;
}
asm(".pushsection .text.unlikely.annotated,\"ax\",@progbits\n\tnop\n\tnop\n"
    "\t.type annotated.cold, @function\nannotated.cold:\n\tud2\n"
    "\t.size annotated.cold, .-annotated.cold\n.popsection\n");
"""
    result = diff_pair(build_pair(tmp_path, source, source.replace("v - 1", "v - 2")))
    assert names(result.changed_functions) == {"annotated"}
    assert (".text.unlikely.annotated", 4) in result.kept_sections
    out = _link(tmp_path, result)
    assert {"annotated", "annotated.cold"} <= _defined_functions(out)


STATICS = BASE + """
int blocks(int v)
{
	if (v > 10) { static int hits = 11; hits += v; v = hits; }
	if (v > 20) { static int hits = 22; hits += v; v = hits; }
	return v;
}
"""


def test_static_locals_paired_when_their_count_changes(tmp_path: Path) -> None:
    """A third `hits` added: the two the original had pair by what they hold."""
    patched = STATICS.replace("\treturn v;\n}", "\tif (v > 30) { static int hits = 33; "
                              "hits += v; v = hits; }\n\treturn v;\n}")
    result = diff_pair(build_pair(tmp_path, STATICS, patched))
    assert names(result.changed_functions) == {"blocks"}
    references = {r.target_name for r in result.resolutions}
    assert sum(name.startswith("hits.") for name in references) == 2  # the running kernel's
    carried = {s.name for s in result.included_symbols if s.kind == "data"}
    assert sum(name.startswith("hits.") for name in carried) == 1  # the new one


def test_indistinguishable_static_locals_refused_naming_them(tmp_path: Path) -> None:
    source = STATICS.replace("hits = 11", "hits").replace("hits = 22", "hits")
    patched = source.replace("\treturn v;\n}", "\tif (v > 30) { static int hits; "
                             "hits += v; v = hits; }\n\treturn v;\n}")
    with pytest.raises(CannotPatch) as caught:
        diff_pair(build_pair(tmp_path, source, patched))
    message = caught.value.message
    assert "static variable hits." in message and "cannot tell which original" in message
    assert "unpaired in the original: hits." in message


def test_static_local_moved_into_a_cold_part_keeps_its_original(tmp_path: Path) -> None:
    source = BASE + """
int tally(int v)
{
	static int seen;

	seen += v;
	return seen;
}
"""
    patched = source.replace("\tseen += v;\n", "\tif (__builtin_expect(v < 0, 0)) {\n"
                             '\t\tprintk("negative %d\\n", v);\n\t\tseen = 0;\n\t}\n'
                             "\tseen += v;\n")
    result = diff_pair(build_pair(tmp_path, source, patched))
    assert names(result.changed_functions) == {"tally"}
    assert any(r.target_name.startswith("seen") for r in result.resolutions)


def test_aliases_of_one_function_are_one_change(tmp_path: Path) -> None:
    """SYSCALL_DEFINE0 makes __x64_sys_x and __ia32_sys_x aliases of __do_sys_x, in one
    section: one function, redirected once, by a global name."""
    source = BASE + """
static long __do_sys_thing(void *regs) { return shared_total + 42; }
long __x64_sys_thing(void *regs) __attribute__((alias("__do_sys_thing")));
long __ia32_sys_thing(void *regs) __attribute__((alias("__do_sys_thing")));
"""
    result = diff_pair(build_pair(tmp_path, source, source.replace("42", "43")))
    (change,) = [f for f in result.changed_functions if "thing" in f.name]
    assert change.global_binding and change.name in ("__x64_sys_thing", "__ia32_sys_thing")


PADDED = r"""
/* What objtool makes of a module object with CONFIG_CALL_PADDING (Debian's 6.12): the
   16 bytes in front of each function named __pfx_<function>, in the function's section. */
asm(".pushsection .text.thing,\"ax\",@progbits\n"
    ".type __pfx_thing, @function\n__pfx_thing:\n.skip 16, 0x90\n.size __pfx_thing, 16\n"
    ".globl thing\n.type thing, @function\nthing:\n\tmovl $41, %eax\n\tret\n"
    ".size thing, .-thing\n.popsection\n");
int other(void) { return 7; }
"""


def test_the_padding_in_front_of_a_function_is_part_of_it(tmp_path: Path) -> None:
    """`__pfx_thing` and `thing` share .text.thing: one function, carried with its padding."""
    pair = build_pair(tmp_path, PADDED, PADDED.replace("$41", "$42"))
    result = diff_pair(pair)
    assert names(result.changed_functions) == {"thing"}
    assert result.output is not None
    carried = {s.name for s in result.output.symbols if s.section is not None and s.is_function}
    assert {"thing", "__pfx_thing"} <= carried


def test_carried_functions_are_local_and_new_globals_global(tmp_path: Path) -> None:
    # report() is global in the kernel: its copy in the patch must not take over its name.
    patched = BASE.replace("printk(\"value %d\\n\", v);",
                           "printk(\"value: %d\\n\", v);").replace(
        "int unchanged(int v)", "int kpb_helper(int v) { return v - 1; }\n\n"
                                "int unchanged(int v)")
    result = diff_pair(build_pair(tmp_path, BASE, patched))
    assert names(result.changed_functions) == {"report"}
    assert result.output is not None
    binding = {s.name: s.bind for s in result.output.symbols if s.section is not None}
    assert binding["report"] == STB_LOCAL
    assert binding["kpb_helper"] == STB_GLOBAL
