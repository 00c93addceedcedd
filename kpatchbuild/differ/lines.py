"""Changes that only move line numbers: lines added above a function are no change to it.

`__LINE__` reaches code in two ways. As an argument: might_sleep(), lockdep's RCU checks,
4.18-era WARN (warn_slowpath_fmt), ext4's and btrfs's error and journal helpers take
(file, line, ...), so a `mov $line, %reg` before the call changes. And as text: a string
literal that spells `file.c:123`. A function whose only differences are such immediates,
and such strings, has not changed.

Instructions are decoded (line_decode.py) with iced-x86 rather than scanned byte by byte:
its decoder gives each instruction's length and where its immediate lies (ConstantOffsets),
so a differing byte is known to sit in the immediate of a `mov` into the register that
carries the line argument of the next call, and in nothing else. (capstone would decode as
well; iced-x86 was chosen for those exact field offsets and for a decoder kept current with
new instructions, in one wheel with no system library.)
"""

from __future__ import annotations

import re

from kpatchbuild.differ.line_shift import LINE_ARGUMENT, LineShift

# `fs/foo.c:123` in a string: the number is the line the literal was written on.
_LINE_IN_TEXT = re.compile(rb"(\.[chS]:)\d+")


def without_line_numbers(text: bytes) -> bytes:
    """A string with every `file.c:N` line number blanked, to compare two versions."""
    return _LINE_IN_TEXT.sub(rb"\1#", text)


def line_shift(old: bytes, new: bytes, calls: dict[int, str],
               strings: dict[int, bytes] | None = None) -> LineShift | None:
    """How ``old`` and ``new`` differ in line numbers; None when they differ otherwise.

    ``calls`` maps the offset of each call's (or tail call's) rel32 field to the callee's
    name, ``strings`` the offset of each relocated immediate to the string it points at
    (both from the function's relocations). A printed immediate right after a `__FILE__`
    argument (`"... at %s:%d"`, ext4's assertions) is a line.
    """
    if len(old) != len(new):
        return None
    if old == new:
        return LineShift(frozenset())
    # The decoder costs a fifth of a one-shot diff's start-up: loaded when code differs.
    from kpatchbuild.differ.line_decode import decoded_line_shift

    return decoded_line_shift(old, new, calls, strings or {})


__all__ = ["LINE_ARGUMENT", "LineShift", "line_shift", "without_line_numbers"]
