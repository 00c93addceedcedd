"""A gzip-compressed newc cpio archive, the format the kernel unpacks as its initramfs.

Written in Python rather than with ``cpio``: the archive can then hold a ``/dev/console``
device node and root-owned files without running as root, and its bytes depend only on its
contents (fixed mtimes and inode numbers), so the same inputs give the same initramfs.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from pathlib import Path

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: ``path`` without a leading slash, ``mode`` with its file type."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


def directory(path: str, permissions: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | permissions)


def regular_file(path: str, data: bytes, permissions: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | permissions, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def char_device(path: str, major: int, minor: int, permissions: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | permissions, rdev=(major, minor))


def with_parents(entries: list[Entry]) -> list[Entry]:
    """``entries`` in order, each preceded by any parent directory not yet in the archive.

    The first entry for a path wins: later duplicates (a directory two file groups both
    need) are dropped, so independently built groups of entries can be concatenated.
    """
    seen: set[str] = set()
    result: list[Entry] = []
    for entry in entries:
        path = entry.path.strip("/")
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in seen:
                seen.add(parent)
                result.append(directory(parent))
        if path not in seen:
            seen.add(path)
            result.append(entry)
    return result


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def newc_archive(entries: list[Entry]) -> bytes:
    """The uncompressed newc archive of ``entries``, in order, ending with the trailer.

    Parents must come before their children: the kernel creates members in archive order.
    """
    out = bytearray()
    for inode, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = entry.path.lstrip("/").encode() + b"\0"
        is_trailer = entry.path == TRAILER
        fields = (
            0 if is_trailer else inode,
            entry.mode,
            0, 0,  # uid, gid: root
            2 if stat.S_ISDIR(entry.mode) else 1,  # nlink
            0,  # mtime: fixed, for reproducible archives
            len(entry.data),
            0, 0,  # device holding the file
            entry.rdev[0], entry.rdev[1],
            len(name),
            0,  # checksum, unused by the newc (070701) format
        )
        header = NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)


def write_initramfs(dest: Path, entries: list[Entry]) -> Path:
    """Write ``entries`` as a gzip-compressed newc archive at ``dest``; return ``dest``."""
    # Level 1: the archive is mostly busybox and modules, rebuilt per proof; speed matters
    # more than a few hundred kilobytes.
    dest.write_bytes(gzip.compress(newc_archive(entries), compresslevel=1, mtime=0))
    return dest


def read_newc(data: bytes) -> list[Entry]:
    """Parse an uncompressed newc archive back into entries (without the trailer).

    The inverse of :func:`newc_archive`, for checking what an initramfs holds.
    """
    entries: list[Entry] = []
    offset = 0
    while True:
        header = data[offset:offset + 110]
        if header[:6] != NEWC_MAGIC:
            raise ValueError(f"not a newc cpio header at offset {offset}: {header[:6]!r}")
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev_major, rdev_minor, name_size = (
            fields[1], fields[6], fields[9], fields[10], fields[11])
        name_start = offset + 110
        name = data[name_start:name_start + name_size - 1].decode()
        data_start = name_start + name_size + (-(110 + name_size) % 4)
        if name == TRAILER:
            return entries
        entries.append(Entry(name, mode, data[data_start:data_start + size],
                             (rdev_major, rdev_minor)))
        offset = data_start + size + (-size % 4)


def read_initramfs(path: Path) -> list[Entry]:
    return read_newc(gzip.decompress(path.read_bytes()))
