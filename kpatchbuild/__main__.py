"""``python -m kpatchbuild``: the command line of the build side.

Each subcommand lives beside the stage it drives and registers itself here through
``add_parser(subparsers)``; this module only dispatches and turns a KpbError into one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kpatchbuild.base.errors import KpbError

# Modules that provide a subcommand: each has add_parser(subparsers) setting func=run(args)->int.
SUBCOMMAND_MODULES: list[str] = ["kpatchbuild.differ.cli", "kpatchbuild.graph.cli",
                                   "kpatchbuild.report.cli"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kpatchbuild",
        description="Build Linux kernel livepatch modules from source patches.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    import importlib

    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
