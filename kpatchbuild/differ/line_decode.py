"""The decoding half of lines.py: which differing bytes are line numbers, instruction by
instruction (iced-x86 gives each instruction's length and where its immediate lies).

Imported only when two versions of a function differ: the decoder is most of the differ's
start-up otherwise.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_left
from collections.abc import Sequence
from enum import Enum

from iced_x86 import (
    Code,
    Decoder,
    FlowControl,
    Instruction,
    InstructionInfoFactory,
    Mnemonic,
    OpAccess,
    OpKind,
    Register,
    RegisterInfo,
)

from kpatchbuild.differ.line_shift import LINE_ARGUMENT, LineShift

_ARGUMENT_REGISTERS = (Register.RDI, Register.RSI, Register.RDX, Register.RCX, Register.R8,
                       Register.R9)


def decoded_line_shift(old: bytes, new: bytes, calls: dict[int, str],
                       strings: dict[int, bytes]) -> LineShift | None:
    """line_shift() for two versions of equal length that differ (see lines.py)."""
    new_code = _decode(new)
    old_code = {offset: instruction for offset, instruction, _ in _decode(old)}
    by_offset = {offset: index for index, (offset, _, _) in enumerate(new_code)}
    differing = [i for i in range(len(new)) if old[i] != new[i]]
    deltas: set[int] = set()
    unproven: set[int] = set()
    for position, (offset, instruction, immediate) in enumerate(new_code):
        end = offset + instruction.len
        inside = differing[bisect_left(differing, offset):bisect_left(differing, end)]
        if not inside:
            continue
        before = old_code.get(offset)
        if before is None or before.code != instruction.code or immediate is None:
            return None
        start, size = immediate
        if not all(offset + start <= i < offset + start + size for i in inside):
            return None
        register = _line_register(instruction)
        if register is None:
            return None
        use = _use_of(register, position + 1, new_code, by_offset, calls)
        if use is _Use.PRINTED and _follows_file_argument(register, position, new_code, strings):
            use = _Use.LINE
        delta = _immediate(instruction) - _immediate(before)
        if use is _Use.LINE:
            deltas.add(delta)
        elif use is _Use.PRINTED:
            unproven.add(delta)
        else:
            return None
    return LineShift(frozenset(deltas), frozenset(unproven))



def _decode(code: bytes) -> list[tuple[int, Instruction, tuple[int, int] | None]]:
    """(offset, instruction, (immediate offset, size) or None) for each instruction."""
    decoder = Decoder(64, code, ip=0)
    decoded = []
    for instruction in decoder:
        offsets = decoder.get_constant_offsets(instruction)
        immediate = ((offsets.immediate_offset, offsets.immediate_size)
                     if offsets.has_immediate else None)
        decoded.append((instruction.ip, instruction, immediate))
    return decoded


# Where an immediate goes: a register, or the stack (a `push`, for arguments 7 and on).
STACK = -1


def _line_register(instruction: Instruction) -> int | None:
    """The full register a `mov $imm, %reg` writes, STACK for a `push $imm`, else None."""
    if instruction.code in (Code.PUSHQ_IMM32, Code.PUSHQ_IMM8):
        return STACK
    if instruction.code not in (Code.MOV_R32_IMM32, Code.MOV_RM32_IMM32, Code.MOV_RM64_IMM32,
                                Code.MOV_R64_IMM64):
        return None
    if instruction.op0_kind != OpKind.REGISTER:
        return None
    return RegisterInfo(instruction.op0_register).full_register


class _Use(Enum):
    LINE = "line"  # the line argument of a function known to take one
    PRINTED = "printed"  # an argument of a printf-like function
    OTHER = "other"


# Variadic printing functions: a line may be one of their arguments.
_PRINTF_LIKE = re.compile(r"printk|^_dev_|^dev_printk|^panic$|^__dynamic_|^__drm_|_msg$|"
                          r"^seq_printf$|^v?s?n?printf$|^scnprintf$")


def _use_of(register: int, start: int, code: Sequence[tuple[int, Instruction, object]],
            by_offset: dict[int, int], calls: dict[int, str]) -> _Use:
    """What the code from ``code[start]`` on, after a `mov $imm, register` (or `push $imm`),
    does with the value (``by_offset``: instruction index by offset, for jump targets).

    Every path is followed, through the function's own jumps and both ways of each
    conditional one, to its first call, tail jump or write of the register: the value is a
    line if some path passes it as a line argument and no path uses it as anything else
    (a path that overwrites it first never sees it). A pushed value is argument 6 plus the
    number of pushes after it on its path. A jump into the function's `.cold` part leaves
    the value unproven.
    """
    uses: set[_Use] = set()
    pending = [(start, 0)]
    seen: set[tuple[int, int]] = set()
    while pending:
        index, pushes = pending.pop()
        while index < len(code) and (index, pushes) not in seen:
            seen.add((index, pushes))
            offset, instruction, _ = code[index]
            flow = instruction.flow_control
            field = offset + instruction.len - 4  # where a rel32 branch's relocation lies
            if flow == FlowControl.CALL or (
                    flow in (FlowControl.UNCONDITIONAL_BRANCH, FlowControl.CONDITIONAL_BRANCH)
                    and field in calls):
                uses.add(_argument_use(register, pushes, calls.get(field, ""), flow))
                if flow != FlowControl.CONDITIONAL_BRANCH:
                    break
                index += 1
                continue
            if flow in (FlowControl.UNCONDITIONAL_BRANCH, FlowControl.CONDITIONAL_BRANCH):
                target = by_offset.get(instruction.near_branch_target)
                if target is None:
                    uses.add(_Use.OTHER)
                    break
                if flow == FlowControl.CONDITIONAL_BRANCH:
                    pending.append((target, pushes))
                    index += 1
                else:
                    index = target
                continue
            if flow == FlowControl.RETURN:
                break  # the register dies here (a line is never a return value)
            if flow != FlowControl.NEXT:
                uses.add(_Use.OTHER)  # indirect branches and calls: cannot tell
                break
            if register == STACK:
                if instruction.mnemonic == Mnemonic.PUSH:
                    pushes += 1
                elif _writes(instruction, Register.RSP):
                    uses.add(_Use.OTHER)
                    break
            elif _reads(instruction, register):
                uses.add(_Use.OTHER)  # copied or computed with: not only an argument
                break
            elif _writes(instruction, register):
                break  # overwritten: dead on this path
            index += 1
    if not uses or _Use.OTHER in uses:
        return _Use.OTHER
    return _Use.PRINTED if _Use.PRINTED in uses else _Use.LINE


def _argument_use(register: int, pushes_after: int, callee: str, flow: int) -> _Use:
    if register == STACK:
        argument = 6 + pushes_after
    elif register in _ARGUMENT_REGISTERS:
        argument = _ARGUMENT_REGISTERS.index(register)
    else:
        return _Use.OTHER
    if argument in LINE_ARGUMENT.get(callee, frozenset()):
        return _Use.LINE
    # A clone (`.constprop`, `.isra`) may have lost parameters: its line moved position.
    clone_of = _CLONE_SUFFIX.sub("", callee)
    if argument >= 1 and (_PRINTF_LIKE.search(callee) or (
            flow == FlowControl.UNCONDITIONAL_BRANCH and _COLD_PART.search(callee)) or (
            clone_of != callee and clone_of in LINE_ARGUMENT)):
        return _Use.PRINTED
    return _Use.OTHER


_CLONE_SUFFIX = re.compile(r"\.(constprop|isra|part)\.\d+.*$")


_SOURCE_FILE = re.compile(rb"\.[chS]$")


def _follows_file_argument(register: int, position: int,
                           code: Sequence[tuple[int, Instruction, tuple[int, int] | None]],
                           strings: dict[int, bytes]) -> bool:
    """Is the argument before ``register``'s a source file name (`__FILE__`), loaded in the
    same call's setup (between the previous call and the next)?"""
    if register not in _ARGUMENT_REGISTERS[1:]:
        return False
    previous = _ARGUMENT_REGISTERS[_ARGUMENT_REGISTERS.index(register) - 1]
    for direction in (range(position - 1, -1, -1), range(position + 1, len(code))):
        for index in direction:
            offset, instruction, immediate = code[index]
            if instruction.flow_control != FlowControl.NEXT:
                break
            if _writes(instruction, previous):
                text = strings.get(offset + immediate[0]) if immediate else None
                if text is not None and _SOURCE_FILE.search(text):
                    return True
                break
    return False


_COLD_PART = re.compile(r"\.cold(\.\d+)?$")


_IMMEDIATE_KINDS = frozenset({OpKind.IMMEDIATE8, OpKind.IMMEDIATE16, OpKind.IMMEDIATE32,
                              OpKind.IMMEDIATE64, OpKind.IMMEDIATE8TO32, OpKind.IMMEDIATE8TO64,
                              OpKind.IMMEDIATE32TO64})


def _immediate(instruction: Instruction) -> int:
    operand = next(i for i in range(instruction.op_count)
                   if instruction.op_kind(i) in _IMMEDIATE_KINDS)
    return instruction.immediate(operand)


_INFO = InstructionInfoFactory()
_WRITES = frozenset({OpAccess.WRITE, OpAccess.COND_WRITE, OpAccess.READ_WRITE,
                     OpAccess.READ_COND_WRITE})


_READS = frozenset({OpAccess.READ, OpAccess.COND_READ, OpAccess.READ_WRITE,
                    OpAccess.READ_COND_WRITE})


_SAME_REGISTER_IDIOMS = frozenset({Mnemonic.XOR, Mnemonic.SUB, Mnemonic.SBB, Mnemonic.PXOR})


def _reads(instruction: Instruction, register: int) -> bool:
    """Does the instruction depend on the register's value? (`xor r,r`, `sbb r,r` do not.)"""
    return register in _register_access(instruction)[0]


def _writes(instruction: Instruction, register: int) -> bool:
    return register in _register_access(instruction)[1]


@functools.lru_cache(maxsize=65536)
def _register_access(instruction: Instruction) -> tuple[frozenset[int], frozenset[int]]:
    """(full registers read, full registers written); instructions compare by value, so the
    answer is shared by every function holding the same instruction."""
    used = _INFO.info(instruction).used_registers()
    reads = frozenset(RegisterInfo(u.register).full_register for u in used if u.access in _READS)
    writes = frozenset(RegisterInfo(u.register).full_register for u in used
                       if u.access in _WRITES)
    if (instruction.mnemonic in _SAME_REGISTER_IDIOMS and instruction.op_count == 2
            and instruction.op0_kind == OpKind.REGISTER == instruction.op1_kind
            and instruction.op0_register == instruction.op1_register):
        reads = frozenset()
    return reads, writes
