"""The GNU build id of the kernel inside a bzImage (``vmlinuz``).

A livepatch module is only right for the exact kernel its objects were compiled against; the
release string alone does not prove that (a rebuilt kernel keeps its release). The kernel's
own ELF notes carry an NT_GNU_BUILD_ID, also shown at run time in ``/sys/kernel/notes``. A
distribution ships only the compressed image, so this reads the x86 boot header for where the
compressed vmlinux lies (``payload_offset``/``payload_length``, boot protocol 2.08+),
decompresses it (the stdlib for gzip, xz, lzma and bzip2; the ``lz4`` and ``zstd`` commands,
as the kernel's scripts/extract-vmlinux does, for those two) and reads the note from its
program headers.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path

from kpatchbuild.base import process
from kpatchbuild.base.errors import KpbError, about
from kpatchbuild.base.notes import build_id_in_notes

_SETUP_SECTS = 0x1F1
_HEADER_MAGIC = 0x202  # "HdrS"
_VERSION = 0x206
_PAYLOAD = 0x248  # payload_offset, payload_length (u32 each)
_MIN_PROTOCOL = 0x208

PT_NOTE = 4


class BuildIdError(KpbError):
    """The image is not a bzImage we can read, or its kernel carries no build id."""

    exit_code = 1


def kernel_build_id(vmlinuz: Path) -> str:
    """The hex NT_GNU_BUILD_ID of the vmlinux compressed inside the bzImage ``vmlinuz``."""
    with about(str(vmlinuz)):
        try:
            image = Path(vmlinuz).read_bytes()
        except OSError as error:
            raise BuildIdError(f"cannot read: {error.strerror}") from None
        return elf_build_id(decompress_payload(image))


def decompress_payload(image: bytes) -> bytes:
    """The vmlinux ELF image inside a bzImage."""
    if len(image) < _PAYLOAD + 8 or image[_HEADER_MAGIC : _HEADER_MAGIC + 4] != b"HdrS":
        raise BuildIdError("not an x86 bzImage (no 'HdrS' boot header)")
    (protocol,) = struct.unpack_from("<H", image, _VERSION)
    if protocol < _MIN_PROTOCOL:
        raise BuildIdError(f"boot protocol {protocol:#x} predates payload_offset (2.08)")
    setup_sectors = image[_SETUP_SECTS] or 4  # 0 means 4, for historical reasons
    offset, length = struct.unpack_from("<II", image, _PAYLOAD)
    start = (setup_sectors + 1) * 512 + offset
    payload = image[start : start + length]
    if len(payload) != length or not length:
        raise BuildIdError("the compressed payload lies outside the file")
    return _decompress(payload)


def _decompress(payload: bytes) -> bytes:
    try:
        if payload.startswith(b"\x1f\x8b"):
            # The kernel appends the uncompressed size after the gzip stream.
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        if payload.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        if payload.startswith(b"\x5d\x00\x00"):
            return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
        if payload.startswith(b"BZh"):
            return bz2.BZ2Decompressor().decompress(payload)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile) as error:
        raise BuildIdError(f"corrupt compressed kernel: {error}") from None
    if payload.startswith(b"\x02\x21\x4c\x18"):  # lz4 legacy frame, as the kernel makes it
        return _with_tool(["lz4", "-dc"], payload, "lz4")
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        return _with_tool(["zstd", "-dcq"], payload, "zstd")
    raise BuildIdError(f"unknown compression (payload starts {payload[:6].hex()})")


def _with_tool(argv: list[str], payload: bytes, package: str) -> bytes:
    # lz4 stops at the kernel's trailing size word with a complaint but a full output.
    result = process.run(argv, input=payload, error=BuildIdError, what=argv[0],
                         succeeded=lambda r: bool(r.stdout),
                         missing=f"the kernel is {package}-compressed and '{argv[0]}' is not "
                         f"installed (apt-get install {package})")
    return bytes(result.stdout)


def elf_build_id(elf: bytes) -> str:
    """NT_GNU_BUILD_ID from the PT_NOTE segments of an ELF64 little-endian executable."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise BuildIdError("the decompressed kernel is not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + index * phentsize
        )
        if p_type != PT_NOTE:
            continue
        found = build_id_in_notes(elf[p_offset : p_offset + p_filesz])
        if found:
            return found
    raise BuildIdError("the decompressed kernel has no GNU build id note")
