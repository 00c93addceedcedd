"""``python -m kpatchbuild``: the command line of the build side.

Each subcommand lives beside the stage it drives and registers itself here through
``add_parser(subparsers)``; this module only dispatches and turns a KpbError into one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kpatchbuild.base.errors import KpbError

# Each subcommand and the module providing it: add_parser(subparsers) sets func=run(args)->int.
# Only the named command's module is imported: a one-shot `diff` then loads the differ
# alone, not the build graph (a third of its start-up).
SUBCOMMANDS: dict[str, str] = {
    "diff": "kpatchbuild.differ.cli",
    "cells": "kpatchbuild.graph.cli",
    "merge-reports": "kpatchbuild.report.cli",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``command`` alone when it is known, else of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m kpatchbuild",
        description="Build Linux kernel livepatch modules from source patches.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    import importlib

    modules = [SUBCOMMANDS[command]] if command in SUBCOMMANDS else \
        list(dict.fromkeys(SUBCOMMANDS.values()))
    for name in modules:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments[0] if arguments else None)
    args = parser.parse_args(arguments)
    try:
        return int(args.func(args) or 0)
    except KpbError as error:
        print(f"kpatchbuild: error: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("kpatchbuild: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
