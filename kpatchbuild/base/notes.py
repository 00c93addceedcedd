"""ELF notes: the GNU build id in a run of notes.

Both sides need it: the module stage reads it from the kernel image a patch is built for,
and the ``kpatch`` command from the running kernel's ``/sys/kernel/notes``. It stays on the
ground floor, with the standard library only, so that the command (which runs in guests and
on users' machines) imports neither the ELF model nor pyelftools for it.
"""

from __future__ import annotations

import struct

NT_GNU_BUILD_ID = 3


def build_id_in_notes(notes: bytes) -> str | None:
    """NT_GNU_BUILD_ID in a run of ELF notes (a PT_NOTE segment, or /sys/kernel/notes)."""
    position = 0
    while position + 12 <= len(notes):
        namesz, descsz, note_type = struct.unpack_from("<III", notes, position)
        name_start = position + 12
        desc_start = name_start + _aligned(namesz)
        name = notes[name_start : name_start + namesz].rstrip(b"\0")
        if note_type == NT_GNU_BUILD_ID and name == b"GNU" and descsz:
            return notes[desc_start : desc_start + descsz].hex()
        position = desc_start + _aligned(descsz)
    return None


def _aligned(size: int) -> int:
    return (size + 3) & ~3
