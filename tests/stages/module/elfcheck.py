"""Independent looks at a built module through binutils' readelf (not our ELF reader)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


def readelf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True, check=True)


@dataclass(frozen=True)
class SectionHeader:
    index: int
    name: str
    type: str
    flags: str
    info: int


def section_headers(module: Path) -> list[SectionHeader]:
    headers = []
    pattern = re.compile(r"^\s*\[\s*(\d+)\]\s+(\S+)\s+(\S+)\s+\S+\s+\S+\s+\S+\s+\S+\s+(\S*?)\s*"
                         r"(\d+)\s+(\d+)\s+(\d+)$")
    for line in readelf("-S", str(module)).stdout.splitlines():
        found = pattern.match(line)
        if found and found.group(1) != "0":
            index, name, kind, flags, _link, info, _align = found.groups()
            headers.append(SectionHeader(int(index), name, kind, flags, int(info)))
    return headers


@dataclass(frozen=True)
class SymbolEntry:
    name: str
    type: str
    bind: str
    ndx: str


def symbols(module: Path) -> list[SymbolEntry]:
    entries = []
    for line in readelf("-s", str(module)).stdout.splitlines():
        # Num: Value Size Type Bind Vis Ndx Name; Ndx may read "OS [0xff20]".
        found = re.match(r"^\s*\d+:\s+\S+\s+\d+\s+(\S+)\s+(\S+)\s+\S+\s+(OS \[0x[0-9a-f]+\]|\S+)"
                         r"\s+(.*)$", line)
        if found:
            kind, bind, ndx, name = found.groups()
            entries.append(SymbolEntry(name, kind, bind, ndx))
    return entries


def modinfo(module: Path) -> dict[str, str]:
    """.modinfo's key=value strings, as readelf prints the section's strings."""
    info = {}
    for line in readelf("-p", ".modinfo", str(module)).stdout.splitlines():
        found = re.match(r"^\s*\[\s*[0-9a-f]+\]\s+([^=\s]+)=(.*)$", line)
        if found:
            info[found.group(1)] = found.group(2)
    return info


def relocations(module: Path) -> dict[str, list[str]]:
    """Symbol names referenced by each relocation section."""
    tables: dict[str, list[str]] = {}
    current = None
    for line in readelf("-r", str(module)).stdout.splitlines():
        header = re.match(r"^Relocation section '([^']+)'", line)
        if header:
            current = tables.setdefault(header.group(1), [])
            continue
        entry = re.match(r"^[0-9a-f]{16}\s+[0-9a-f]{16}\s+\S+\s+[0-9a-f]{16}\s+(.+?)\s+[+-]", line)
        if entry and current is not None:
            current.append(entry.group(1))
    return tables
