"""A Debian binary package from a list of files, built with ``dpkg-deb``.

Why not debhelper: debhelper turns a source package (``debian/rules``, a build step) into
binary packages; what we package is already built and proven (modules) or plain files (the
``kpatch`` command), so a staged tree handed to ``dpkg-deb --build`` is the whole job, and
we write the few things debhelper would have generated (``md5sums``, the doc files, the
maintainer scripts) ourselves. ``lintian`` checks the result.

The package is staged in a temporary directory beside its destination and renamed into
place: a reader never sees half a ``.deb``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tempfile
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from kpatchbuild.base import process
from kpatchbuild.base.errors import BuildError

MAINTAINER_ENV = ("DEBFULLNAME", "DEBEMAIL")
DEFAULT_MAINTAINER = "kpatchbuild <kpatchbuild@example.org>"
SCRIPTS = ("preinst", "postinst", "prerm", "postrm")


# A control field is one line: a newline (or another control character) in a value would
# start a field of its own, such as Pre-Depends:, in every package made from it.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def check_one_line(value: str, what: str) -> str:
    """``value`` if it holds no control character; else a refusal naming ``what``."""
    found = _CONTROL_CHARACTER.search(value)
    if found:
        raise BuildError(f"{what}: {value!r} contains a control character "
                         f"(U+{ord(found.group()):04X}); a package's control fields are one "
                         "line of text: remove it")
    return value


def maintainer() -> str:
    """Who the packages say they are from: ``$DEBFULLNAME <$DEBEMAIL>``, as Debian's own
    tools read it, or a placeholder when neither is set."""
    name, email = (check_one_line(os.environ.get(key, ""), f"${key}")
                   for key in MAINTAINER_ENV)
    if email:
        return f"{name or email.split('@')[0]} <{email}>"
    return DEFAULT_MAINTAINER


@dataclass(frozen=True)
class File:
    """One file of a package: its content and mode."""

    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class DebSpec:
    """Everything a binary package says and carries.

    ``files`` maps absolute paths in the installed system to their contents; the
    copyright and changelog under ``/usr/share/doc/<package>/`` are added here.
    ``scripts`` are the maintainer scripts by name, ``triggers`` the DEBIAN/triggers lines.
    """

    package: str
    version: str
    architecture: str
    summary: str
    description: str
    section: str
    depends: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    files: Mapping[str, File] = field(default_factory=dict)
    scripts: Mapping[str, str] = field(default_factory=dict)
    triggers: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()
    date: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def file_name(self) -> str:
        return f"{self.package}_{self.version}_{self.architecture}.deb"

    def control(self, installed_kib: int) -> str:
        fields = [("Package", self.package), ("Version", self.version),
                  ("Architecture", self.architecture), ("Maintainer", maintainer()),
                  ("Installed-Size", str(installed_kib))]
        for name, relations in (("Depends", self.depends), ("Provides", self.provides),
                                ("Conflicts", self.conflicts)):
            if relations:
                fields.append((name, ", ".join(relations)))
        fields += [("Section", self.section), ("Priority", "optional"),
                   ("Description", self.summary)]
        lines = [f"{name}: {check_one_line(value, f'package {self.package}: its {name}')}"
                 for name, value in fields]
        # The long description is re-flowed below; anything else unprintable is refused.
        check_one_line(" ".join(self.description.split()),
                       f"package {self.package}: its Description")
        for paragraph in self.description.strip().split("\n\n"):
            wrapped = textwrap.wrap(" ".join(paragraph.split()), 78,
                                    break_on_hyphens=False, break_long_words=False)
            lines += [f" {line}" for line in wrapped]
            lines.append(" .")
        return "\n".join(lines[:-1]) + "\n"

    def changelog(self) -> str:
        entries = "".join(f"  * {textwrap.fill(c, 76, subsequent_indent='    ')}\n"
                          for c in self.changes or ("Built by kpatchbuild.",))
        return (f"{self.package} ({self.version}) unstable; urgency=medium\n\n{entries}\n"
                f" -- {maintainer()}  {format_datetime(self.date)}\n")

    def copyright(self) -> str:
        return ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
                f"Upstream-Name: {self.package}\n\n"
                "Files: *\n"
                f"Copyright: {self.date.year} {maintainer()}\n"
                "License: GPL-2\n"
                " On Debian systems, the full text of the GNU General Public License\n"
                " version 2 can be found in the file '/usr/share/common-licenses/GPL-2'.\n")


def gzip_n(data: bytes) -> bytes:
    """gzip -9n: no name, no time, as Debian wants compressed docs."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def _all_files(spec: DebSpec) -> dict[str, File]:
    doc = f"/usr/share/doc/{spec.package}"
    return {**spec.files,
            f"{doc}/copyright": File(spec.copyright().encode()),
            f"{doc}/changelog.gz": File(gzip_n(spec.changelog().encode()))}


def _stage(spec: DebSpec, root: Path) -> None:
    files = _all_files(spec)
    md5sums = []
    size = 0
    for destination, item in sorted(files.items()):
        path = root / destination.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data)
        path.chmod(item.mode)
        md5sums.append(f"{hashlib.md5(item.data).hexdigest()}  {destination.lstrip('/')}\n")
        size += len(item.data)
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)
    control = root / "DEBIAN"
    control.mkdir(mode=0o755)
    # Debian's Installed-Size: KiB, rounded up, files plus one block per directory.
    directories = sum(1 for p in root.rglob("*") if p.is_dir()) - 1
    (control / "control").write_text(spec.control(-(-size // 1024) + directories))
    (control / "md5sums").write_text("".join(md5sums))
    for name, text in spec.scripts.items():
        if name not in SCRIPTS:
            raise ValueError(f"{name}: not a maintainer script")
        (control / name).write_text(text)
        (control / name).chmod(0o755)
    if spec.triggers:
        (control / "triggers").write_text("".join(f"{line}\n" for line in spec.triggers))
    for path in control.iterdir():
        if path.name not in SCRIPTS:
            path.chmod(0o644)


def build(spec: DebSpec, directory: Path) -> Path:
    """Build ``spec`` into ``directory/<package>_<version>_<arch>.deb`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    destination = directory / spec.file_name
    with tempfile.TemporaryDirectory(dir=directory, prefix=f".{spec.package}.") as temp:
        root = Path(temp) / "root"
        root.mkdir()
        _stage(spec, root)
        built = Path(temp) / spec.file_name
        # Members' times clamped to the package's date: the same inputs, the same bytes.
        env_date = str(int(spec.date.timestamp()))
        process.run(["env", f"SOURCE_DATE_EPOCH={env_date}", "dpkg-deb", "--root-owner-group",
                     "-Zxz", "--build", root, built], error=BuildError,
                    what=f"dpkg-deb --build {spec.file_name}",
                    missing="dpkg-deb not found: install dpkg (the README's set-up does)")
        os.replace(built, destination)
    return destination
