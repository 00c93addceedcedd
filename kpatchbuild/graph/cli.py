"""``python -m kpatchbuild cells``: the test matrix's cells, for a CI job to fan out.

Each cell is one (recipe, kernel target) pair; ``--json`` prints them as a list of objects
(``cell``, ``recipe``, ``target``, ``kind``, ``kernel``, ``not_applicable``, ``task``,
``recipe_hash`` and, with ``--resolve``, ``release``) that a CI system's matrix reads; each
matrix job then runs ``doit <task>`` (``doit test:cmdline/debian12-6.1-cloud-amd64``).
"""

from __future__ import annotations

import argparse
import json

from kpatchbuild.base.store import Store
from kpatchbuild.graph import matrix
from kpatchbuild.graph.pipeline import pipelines


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cells", help="list the test matrix's cells (recipe x kernel target)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", metavar="NAME", help="only this recipe's cells")
    parser.add_argument("--kernel", metavar="PATTERN",
                        help="only targets whose name matches this shell pattern")
    parser.add_argument("--json", action="store_true", help="print JSON (default: one per line)")
    parser.add_argument("--resolve", action="store_true",
                        help="add each cell's kernel release, as Debian's index has it now "
                        "(what a CI cache of the cell is keyed by)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cells = matrix.cell_list(matrix.select(pipelines(Store(), args.recipe), args.kernel),
                             resolve=args.resolve)
    if args.json:
        print(json.dumps(cells, indent=2))
    else:
        for cell in cells:
            note = f"  (not applicable: {cell['not_applicable']})" if cell["not_applicable"] \
                else ""
            print(f"{cell['cell']}{note}")
    return 0
