"""DiffResult -> the JSON report the module builder and people read."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kpatchbuild.differ.diff import DiffResult, FunctionChange

# 2: functions say why the patch carries them ("reason"); callbacks.
REPORT_VERSION = 2


def report_dict(result: DiffResult, *, target: str, output: str | None) -> dict[str, Any]:
    """A plain-data view: every undefined symbol of the output with how it is resolved."""
    symbols: list[dict[str, Any]] = []
    for resolution in result.resolutions:
        entry: dict[str, Any] = {
            "name": resolution.name,
            "target_name": resolution.target_name,
            "resolution": resolution.how,
            "object": resolution.objname,
        }
        if resolution.sympos is not None:
            entry["sympos"] = resolution.sympos
        symbols.append(entry)
    for included in result.included_symbols:
        symbols.append(
            {
                "name": included.name,
                "target_name": included.name,
                "resolution": "included",
                "kind": included.kind,
                "section": included.section,
                "new": included.new,
                **({"reason": included.reason} if included.reason else {}),
            }
        )
    return {
        "version": REPORT_VERSION,
        "object": result.object_name,
        "target": target,
        "status": "written" if result.has_changes else "no-change",
        "output": output,
        "changed_functions": [_function(f) for f in result.changed_functions],
        "new_functions": [_function(f) for f in result.new_functions],
        "symbols": symbols,
        "sections": [{"name": name, "size": size} for name, size in result.kept_sections],
        "line_only_changes": result.line_only_changes,
        "notes": result.notes,
        "callbacks": result.callbacks,
    }


def _function(change: FunctionChange) -> dict[str, Any]:
    data = asdict(change)
    data["global"] = data.pop("global_binding")
    return data


def write_report(
    result: DiffResult, path: str | os.PathLike[str], *, target: str, output: str | None
) -> None:
    text = json.dumps(report_dict(result, target=target, output=output), indent=2)
    Path(path).write_text(text + "\n", encoding="utf-8")
