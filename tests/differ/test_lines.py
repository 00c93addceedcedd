"""Line-number-only changes (kpatchbuild/differ/lines.py), on small C fixtures."""

from __future__ import annotations

from pathlib import Path

from kpatchbuild.differ.lines import LINE_ARGUMENT, without_line_numbers
from tests.differ.cfixtures import build_pair, diff_pair, names

PROTOTYPES = """
extern int printk(const char *fmt, ...);
extern void __ext4_journal_stop(const char *where, unsigned int line, void *handle);
extern void *__ext4_new_inode(void *a, void *b, void *c, void *d, void *e, void *f,
                             void *g, void *h, void *i, unsigned int line, int type);
"""


def _shifted(tmp_path: Path, body: str, lines: int = 3):  # noqa: ANN202
    """The body with ``lines`` empty lines added above it: its __LINE__s move."""
    source = PROTOTYPES + body
    return diff_pair(build_pair(tmp_path, source, PROTOTYPES + "\n" * lines + body))


def test_table_lists_known_line_callees() -> None:
    assert LINE_ARGUMENT["__might_sleep"] == frozenset({1})
    assert 9 in LINE_ARGUMENT["__ext4_new_inode"]
    assert "printk" not in LINE_ARGUMENT  # variadic: a printed value is not a parameter
    assert "serial8250_get_port" not in LINE_ARGUMENT  # its `line` is a port


def test_register_line_argument(tmp_path: Path) -> None:
    result = _shifted(tmp_path,
                      "void stop(void *h) { __ext4_journal_stop(__func__, __LINE__, h); }\n")
    assert result.line_only_changes == ["stop"] and not result.has_changes


def test_stack_line_argument(tmp_path: Path) -> None:
    """The tenth argument is pushed: its position counts the pushes after it."""
    body = ("void *make(void *p) { return __ext4_new_inode(p, p, p, p, p, p, p, p, p, "
            "__LINE__, 7); }\n")
    result = _shifted(tmp_path, body)
    assert result.line_only_changes == ["make"] and not result.has_changes


def test_pushed_value_in_another_position_is_a_change(tmp_path: Path) -> None:
    body = ("void *make(void *p) { return __ext4_new_inode(p, p, p, p, p, p, p, p, p, "
            "0, TYPE); }\n")
    source = PROTOTYPES + body.replace("TYPE", "7")
    result = diff_pair(build_pair(tmp_path, source, source.replace("0, 7)", "0, 9)")))
    assert names(result.changed_functions) == {"make"}


def test_printed_line_after_file_name(tmp_path: Path) -> None:
    """An assertion printing "%s:%d" with __FILE__ and __LINE__ (ext4's ASSERT)."""
    body = ('void check(int v) { if (v) printk("Assertion failure in %s() at %s:%d\\n", '
            '__func__, "fs/ext4/namei.c", __LINE__); }\n')
    result = _shifted(tmp_path, body)
    assert result.line_only_changes == ["check"] and not result.has_changes


def test_printed_number_without_evidence_is_a_change(tmp_path: Path) -> None:
    body = 'void check(int v) { if (v) printk("%s: %d\\n", __func__, 1000); }\n'
    source = PROTOTYPES + body
    result = diff_pair(build_pair(tmp_path, source, source.replace("1000)", "1003)")))
    assert names(result.changed_functions) == {"check"}


def test_printed_line_proven_by_a_known_line_argument_of_the_function(tmp_path: Path) -> None:
    body = ('void both(void *h) { __ext4_journal_stop(__func__, __LINE__, h); '
            'printk("%s %d\\n", __func__, __LINE__); }\n')
    result = _shifted(tmp_path, body)
    assert result.line_only_changes == ["both"] and not result.has_changes


def test_line_in_a_string(tmp_path: Path) -> None:
    body = ('#define S(x) #x\n#define PLACE(l) "fs/dcache.c:" S(l)\n'
            'void warn(void) { printk("field at %s\\n", PLACE(__LINE__)); }\n')
    source = PROTOTYPES + body
    patched = PROTOTYPES + "\n\n" + body
    result = diff_pair(build_pair(tmp_path, source, patched))
    assert result.line_only_changes == ["warn"] and not result.has_changes
    assert without_line_numbers(b"at fs/dcache.c:2930") == b"at fs/dcache.c:#"


def test_other_text_change_in_a_string_is_a_change(tmp_path: Path) -> None:
    source = PROTOTYPES + 'void warn(void) { printk("field at fs/dcache.c:12\\n"); }\n'
    result = diff_pair(build_pair(tmp_path, source, source.replace("dcache.c", "namei.c")))
    assert names(result.changed_functions) == {"warn"}
