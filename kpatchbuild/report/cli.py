"""``python -m kpatchbuild merge-reports``: the reports of a matrix's jobs, as one.

Each CI job runs some cells and uploads its ``test.json``; the last job downloads them all
and merges them: one table, one JUnit file, one JSON, and the exit status of the whole
(non-zero when any cell failed). A cell reported twice keeps the later report's result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kpatchbuild.report import junit, table
from kpatchbuild.report.results import merge, read_report, write_text


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "merge-reports", help="merge the test.json reports of several runs into one",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", metavar="test.json", type=Path)
    parser.add_argument("-o", "--output", required=True, metavar="DIR", type=Path,
                        help="where test.json, junit.xml and table.txt go")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = merge([read_report(path) for path in args.reports])
    text = table.render(report)
    write_text(args.output / "test.json", json.dumps(report.to_json(), indent=2) + "\n")
    write_text(args.output / "junit.xml", junit.to_junit(report).decode())
    write_text(args.output / "table.txt", text)
    print(text, end="")
    return 1 if report.failed else 0
