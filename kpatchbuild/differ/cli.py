"""`python -m kpatchbuild diff ORIG.o PATCHED.o -o OUT.o --symbols FILE --target T`.

Exit 0: OUT.o written. Exit 3: no functional change, nothing written. Exit 2: the change
cannot be live-patched safely (the message names the function or section and why). Any
other non-zero: bad input (missing, not ELF, not relocatable, not x86_64, corrupt).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kpatchbuild.base.errors import KpbError
from kpatchbuild.differ.diff import diff_objects
from kpatchbuild.differ.report import write_report
from kpatchbuild.differ.resolve import kernel_version
from kpatchbuild.differ.symbols import load_module_symvers, load_symbol_table, module_objname
from kpatchbuild.differ.trace import PASSES, Trace
from kpatchbuild.elf.read import read_elf
from kpatchbuild.elf.write import write_elf_file

EXIT_WRITTEN = 0
EXIT_CANNOT_PATCH = 2
EXIT_NO_CHANGE = 3


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "diff",
        help="diff an original and a patched object into a livepatch object",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("orig", metavar="ORIG.o")
    parser.add_argument("patched", metavar="PATCHED.o")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.o")
    parser.add_argument(
        "--symbols",
        required=True,
        metavar="FILE",
        help="the target's symbols: vmlinux/.ko/.o ELF, System.map or kallsyms text",
    )
    parser.add_argument("--target", required=True, metavar="vmlinux|MODNAME")
    parser.add_argument(
        "--kernel-version",
        metavar="RELEASE",
        help="the target kernel's release or version (6.1, 6.1.0-57-cloud-amd64): from 5.8 "
        "on, jump labels and static calls may use unexported vmlinux keys; default: as before 5.8",
    )
    parser.add_argument("--symvers", metavar="Module.symvers", help="exported symbols")
    parser.add_argument("--json", metavar="REPORT.json", help="write the decision report")
    parser.add_argument(
        "--entry-sizes",
        metavar="SIZES.json",
        help='special-section entry sizes measured on the target kernel, {"__bug_table": 12}',
    )
    parser.add_argument(
        "--provided-by-patch",
        metavar="NAMES",
        help="file of global symbol names (one a line) other objects of the same patch define",
    )
    parser.add_argument(
        "--debug",
        action="append",
        default=[],
        metavar="PASS",
        help=f"print what a pass decided, to stderr: {', '.join(PASSES)}, or all (repeatable)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    objname = "vmlinux" if args.target == "vmlinux" else module_objname(args.target)
    orig = read_elf(args.orig)
    patched = read_elf(args.patched)
    table = load_symbol_table(args.symbols, objname)
    exports = load_module_symvers(args.symvers) if args.symvers else None
    sizes = _load_sizes(args.entry_sizes) if args.entry_sizes else None
    provided = _load_names(args.provided_by_patch) if args.provided_by_patch else ()
    version = kernel_version(args.kernel_version) if args.kernel_version else None
    try:
        trace = Trace(args.debug)
    except ValueError as error:
        raise KpbError(f"--debug: {error}") from None
    try:
        result = diff_objects(
            orig,
            patched,
            target=args.target,
            symbols=table,
            exports=exports,
            entry_sizes=sizes,
            object_name=Path(args.patched).name,
            provided_by_patch=provided,
            kernel_version=version,
            trace=trace,
        )
    finally:  # what the passes decided, also (above all) when the change is refused
        for line in trace.lines:
            print(line, file=sys.stderr)
    for line in result.decision_lines():
        print(line)
    output = None
    if result.output is not None:
        write_elf_file(result.output, args.output)
        output = args.output
    if args.json:
        write_report(result, args.json, target=args.target, output=output)
    if result.output is None:
        print(f"{result.object_name}: no functional change", file=sys.stderr)
        return EXIT_NO_CHANGE
    return EXIT_WRITTEN


def _load_sizes(path: str) -> dict[str, int]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise KpbError(f"{path}: cannot read entry sizes: {error}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in data.items()
    ):
        raise KpbError(f"{path}: entry sizes must be a JSON object of section name -> int")
    return data


def _load_names(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, ValueError) as error:
        raise KpbError(f"{path}: cannot read symbol names: {error}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
