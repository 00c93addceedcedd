"""A recipe: YAML in, frozen values out, every mistake reported with its file, key and line.

A recipe lives in its own directory (``recipes/<name>/recipe.yaml``) with its patches and
config fragments beside it; relative paths are relative to that directory. The recipe's name
is its directory's name.

Validation works on pyyaml's node tree rather than on loaded dicts, because only nodes still
know the line they came from, and "line 7: targets[0].debian: unknown key 'flavor'" is what
lets a user fix a recipe without reading our code.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kpatchbuild.base.errors import RecipeError
from kpatchbuild.stages.fetch.suites import RELEASES as DEBIAN_RELEASES

RECIPE_FILE = "recipe.yaml"

# The bases kbuild can make itself; anything else is a path to a .config.
KCONFIG_BASE_TARGETS = ("tinyconfig", "defconfig", "allnoconfig", "olddefconfig")

_OPTION_LINE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_NOT_SET_LINE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_MODULE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,54}$")
# It becomes a package's one-line synopsis: a newline there would add a control field.
_ONE_LINE = re.compile(r"^[^\x00-\x1f\x7f]*$")
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SERIES = re.compile(r"^\d+\.\d+$")
# The Debian releases whose archives serve each kernel series (the series a recipe names
# without a release is taken from the one release that has it; one several have is asked).
SERIES_RELEASES = {"6.1": ("12",), "6.12": ("12", "13")}
_DEBIAN_RELEASE = re.compile(r"^(?:\d+|[a-z]+)$")
# Debian's 6.12 releases say whose they are: 6.12.118+deb13-cloud-amd64.
_RELEASE_IN_IMAGE = re.compile(r"\+deb(\d+)")
_FLAVOUR = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_IMAGE_PACKAGE = re.compile(r"^linux-image-(\d+\.\d+[^\s]*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SOURCE_PACKAGE = re.compile(r"^(linux-source-\d+\.\d+)(?:=(\S+))?$")
_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEBIAN_GCC_VERSION = re.compile(r"^\d+\.\d+(?:\.\d+)?-[0-9A-Za-z.+~]+$")
# Whose gcc builds a kernel configured and built here, unless its target's 'toolchain' or
# its Debian source's release says otherwise: Debian 12's gcc-12.
DEFAULT_TOOLCHAIN = "12"


@dataclass(frozen=True)
class Place:
    """Where a value came from, for error messages: ``recipes/x/recipe.yaml:7: targets[0]``."""

    file: Path
    line: int
    key: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}"


@dataclass(frozen=True)
class ConfigOption:
    """One ``CONFIG_X=value`` request; ``value`` is ``n`` for "is not set"."""

    name: str
    value: str
    place: Place


@dataclass(frozen=True)
class DebianKernel:
    """A kernel Debian ships: an exact image package, or a series and flavour to resolve,
    in one Debian release's archive (``12``, ``13``): Debian 12's 6.12 and Debian 13's are
    different kernels from different compilers."""

    image: str | None
    series: str | None
    flavour: str | None
    release: str = "12"

    @property
    def label(self) -> str:
        if self.image:
            return self.image.removeprefix("linux-image-")
        return f"debian{self.release}-{self.series}-{self.flavour}"


@dataclass(frozen=True)
class SourceSpec:
    """Where a built kernel's source comes from."""

    kind: Literal["debian", "tarball", "tree"]
    package: str | None = None  # linux-source-6.1
    version: str | None = None  # pinned Debian version, or None for the newest
    path: Path | None = None  # tarball or tree
    sha256: str | None = None  # tarball only
    release: str | None = None  # debian only: the Debian release whose archive serves it


@dataclass(frozen=True)
class ConfigSpec:
    """A base config plus fragments and inline options, in the order they apply."""

    base: str  # a KCONFIG_BASE_TARGETS name, or "file"
    base_path: Path | None
    fragments: tuple[Path, ...]
    options: tuple[ConfigOption, ...]  # fragments' options first, then inline ones


@dataclass(frozen=True)
class KernelTarget:
    """One kernel a recipe's patch is built for: Debian's own, or one configured and built."""

    name: str
    place: Place
    debian: DebianKernel | None = None
    source: SourceSpec | None = None
    config: ConfigSpec | None = None
    # A Debian kernel may index which objects include each header (a one-time pass over
    # its tree), so that patches to headers can be built; a built kernel always knows.
    header_index: bool = False
    # The target's own patches, where its backport differs; None: the recipe's.
    patches: tuple[Path, ...] | None = None
    # Why the recipe's change does not apply to this kernel (``expect: not-applicable``):
    # the cell then passes when its patches do not apply, and fails when they do.
    not_applicable: str | None = None
    # The words of the refusal expected on this kernel only (``refused:`` on the target):
    # where the change is safe on one kernel but not on another.
    refused: str | None = None
    # A Debian kernel whose exact gcc its release no longer serves: the Debian version of
    # the build of that gcc to use instead (``accept_compiler: 14.2.0-20``), which every
    # report of the cell then names. None: the kernel's own compiler or a refusal.
    accept_compiler: str | None = None
    # A kernel built here: the Debian release whose gcc configures and builds it (in that
    # release's build root unless the host's gcc is exactly that one). None for Debian's.
    toolchain: str | None = None
    # A kernel built here whose config trusts the module signing certificate
    # (CONFIG_SYSTEM_TRUSTED_KEYS) and whose proof boots with module.sig_enforce=1.
    trusts_signing_key: bool = False

    @property
    def kind(self) -> Literal["debian", "built"]:
        return "debian" if self.debian else "built"


@dataclass(frozen=True)
class SigningSpec:
    """The recipe's module signing key (a PEM file's path or a pkcs11: URI) and certificate."""

    key: str
    certificate: Path
    place: Place


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    module: str
    description: str
    targets: tuple[KernelTarget, ...]
    patches: tuple[Path, ...]  # for every target that names none of its own
    check: str | None
    replace: bool
    sources: tuple[Path, ...] = ()  # the recipe's own C files, compiled into the module
    refused: str | None = None  # the words an expected refusal must contain
    strip: int = 1  # the patches' -p level: path components to drop from their file names
    version: str = "1"  # the patch's own version: its package's, and its module's name after 1
    network: bool = False  # the proof's guest gets a network card (none by default)
    signing: SigningSpec | None = None  # else the environment's, the command line's or none

    @property
    def directory(self) -> Path:
        return self.path.parent

    def patches_for(self, target: KernelTarget) -> tuple[Path, ...]:
        return self.patches if target.patches is None else target.patches

    def refused_on(self, target: KernelTarget) -> str | None:
        """The words of the refusal expected on ``target``: its own, else the recipe's."""
        return target.refused or self.refused


class _NodeReader:
    """Typed accessors over yaml nodes that raise RecipeError naming file, line and key."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def place(self, node: Node, key: str) -> Place:
        return Place(self.file, node.start_mark.line + 1, key)

    def fail(self, node: Node, key: str, message: str) -> RecipeError:
        return RecipeError(f"{self.place(node, key)}: {message}")

    def mapping(
        self, node: Node, key: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> dict[str, Node]:
        if not isinstance(node, MappingNode):
            raise self.fail(node, key, f"expected a mapping, found {_describe(node)}")
        allowed = required + optional
        found: dict[str, Node] = {}
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, ScalarNode) else None
            sub = f"{key}.{name}" if key else str(name)
            if name not in allowed:
                hint = difflib.get_close_matches(str(name), allowed, n=1)
                advice = f"did you mean '{hint[0]}'?" if hint else "remove it"
                raise self.fail(
                    key_node, sub,
                    f"unknown key; expected one of {', '.join(allowed)} ({advice})",
                )
            if name in found:
                raise self.fail(key_node, sub, "key given twice; keep one")
            found[name] = value_node
        for name in required:
            if name not in found:
                raise self.fail(node, key or "(top level)", f"missing required key '{name}'")
        return found

    def string(self, node: Node, key: str, pattern: re.Pattern[str] | None = None,
               what: str = "") -> str:
        if not isinstance(node, ScalarNode) or node.tag not in (
            "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
        ):
            raise self.fail(node, key, f"expected a string, found {_describe(node)}")
        # An unquoted 6.1 is a float to YAML: keep the text the user wrote, not 6.1 as a number.
        text = node.value
        if not text.strip():
            raise self.fail(node, key, "must not be empty")
        if pattern is not None and not pattern.match(text):
            shown = f"'{text}'" if _ONE_LINE.match(text) else repr(text)  # errors are one line
            raise self.fail(node, key, f"{shown} is not {what}")
        return text

    def integer(self, node: Node, key: str, low: int, high: int) -> int:
        if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            raise self.fail(node, key, f"expected a number, found {_describe(node)}")
        try:
            value = int(node.value)
        except ValueError:
            raise self.fail(node, key, f"expected a number, found '{node.value}'") from None
        if not low <= value <= high:
            raise self.fail(node, key, f"{value} is not between {low} and {high}")
        return value

    def boolean(self, node: Node, key: str) -> bool:
        if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.fail(node, key, f"expected true or false, found {_describe(node)}")
        return node.value.lower() in ("true", "yes", "on")

    def sequence(self, node: Node, key: str, allow_empty: bool = False) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.fail(node, key, f"expected a list, found {_describe(node)}")
        if not node.value and not allow_empty:
            raise self.fail(node, key, "must list at least one entry")
        return list(node.value)

    def existing_file(self, node: Node, key: str) -> Path:
        text = self.string(node, key)
        path = (self.file.parent / text).resolve()
        if not path.is_file():
            raise self.fail(node, key, f"file '{text}' not found (looked for {path})")
        return path


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "nothing"
    kind = node.tag.rsplit(":", 1)[-1]
    return f"{kind} '{node.value}'"


def parse_config_line(text: str) -> tuple[str, str] | None:
    """``CONFIG_X=y`` or ``# CONFIG_X is not set`` -> (name, value); other lines -> None."""
    text = text.strip()
    match = _OPTION_LINE.match(text)
    if match:
        return match.group(1), match.group(2)
    match = _NOT_SET_LINE.match(text)
    if match:
        return match.group(1), "n"
    return None


def read_fragment(path: Path) -> list[ConfigOption]:
    """A Kconfig fragment: option lines, comments and blank lines; anything else is an error."""
    options = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parsed = parse_config_line(line)
        if parsed is None:
            if line.strip() and not line.lstrip().startswith("#"):
                raise RecipeError(
                    f"{path}:{number}: '{line.strip()}' is not a config line; "
                    "write CONFIG_NAME=value or '# CONFIG_NAME is not set'"
                )
            continue
        options.append(ConfigOption(parsed[0], parsed[1], Place(path, number, parsed[0])))
    return options


def load_recipe(path: Path) -> Recipe:
    """Read and validate ``path`` (a recipe.yaml, or the directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / RECIPE_FILE
    if not path.is_file():
        raise RecipeError(
            f"{path}: recipe not found; a recipe is a directory holding {RECIPE_FILE}"
        )
    try:
        root = yaml.compose(path.read_text())
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise RecipeError(
            f"{path}{line}: YAML syntax error: {error.problem or error.context}; fix the recipe"
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise RecipeError(f"{path}: not readable as YAML: {error}") from None
    if root is None:
        raise RecipeError(f"{path}: the recipe is empty; it needs at least 'targets' and 'patches'")

    reader = _NodeReader(path)
    name = path.parent.name
    top = reader.mapping(
        root, "", required=("targets",),
        optional=("patches", "description", "module", "check", "replace", "sources", "refused",
                  "strip", "version", "network", "signing"),
    )
    module = f"livepatch_{re.sub(r'[^a-z0-9_]', '_', name.lower())}"
    if "module" in top:
        module = reader.string(top["module"], "module", _MODULE_NAME,
                               "a module name (lower case, digits and _, at most 55 characters)")
    version = "1"
    if "version" in top:
        version = reader.string(top["version"], "version", _VERSION,
                                "a version (numbers and dots: 2, 1.1)")
        module = versioned_module(module, version)
        if not _MODULE_NAME.match(module):
            raise reader.fail(top["version"], "version", f"the module's name with it, "
                              f"{module}, is longer than 55 characters: shorten 'module'")
    targets = tuple(
        cell
        for index, node in enumerate(reader.sequence(top["targets"], "targets"))
        for cell in _read_target(reader, node, f"targets[{index}]")
    )
    seen: dict[str, KernelTarget] = {}
    for target in targets:
        if target.name in seen:
            raise RecipeError(
                f"{target.place}: target name '{target.name}' is used twice; give one a 'name'"
            )
        seen[target.name] = target
    patches: tuple[Path, ...] = ()
    if "patches" in top:
        patches = _read_patches(reader, top["patches"], "patches")
    else:
        for target in targets:
            if target.patches is None:
                raise RecipeError(f"{target.place}: no patches for this target: give "
                                  "'patches' at the top of the recipe or on the target")
    return Recipe(
        name=name,
        path=path.resolve(),
        module=module,
        description=reader.string(top["description"], "description", _ONE_LINE,
                                  "one line of text without control characters")
        if "description" in top else "",
        targets=targets,
        patches=patches,
        check=reader.string(top["check"], "check") if "check" in top else None,
        replace=reader.boolean(top["replace"], "replace") if "replace" in top else True,
        network=reader.boolean(top["network"], "network") if "network" in top else False,
        sources=tuple(
            reader.existing_file(node, f"sources[{index}]")
            for index, node in enumerate(reader.sequence(top["sources"], "sources"))
        ) if "sources" in top else (),
        refused=reader.string(top["refused"], "refused") if "refused" in top else None,
        strip=reader.integer(top["strip"], "strip", 0, 9) if "strip" in top else 1,
        version=version,
        signing=_read_signing(reader, top["signing"], "signing") if "signing" in top else None,
    )


def _read_signing(reader: _NodeReader, node: Node, key: str) -> SigningSpec:
    fields = reader.mapping(node, key, required=("key", "certificate"))
    named = reader.string(fields["key"], f"{key}.key")
    if not named.startswith("pkcs11:"):
        path = (reader.file.parent / named).resolve()
        if not path.is_file():
            raise reader.fail(fields["key"], f"{key}.key", f"'{named}' is neither a pkcs11: "
                              f"URI nor an existing key file (looked for {path})")
        named = str(path)
    return SigningSpec(named, reader.existing_file(fields["certificate"], f"{key}.certificate"),
                       reader.place(node, key))


def versioned_module(module: str, version: str) -> str:
    """The module's name for a patch version: as written for version 1, then with the
    version after it, so that a newer version can replace an older one that is loaded (the
    kernel cannot load a second module of one name)."""
    if version == "1":
        return module
    return f"{module}_v{version.replace('.', '_')}"


def _read_patches(reader: _NodeReader, node: Node, key: str) -> tuple[Path, ...]:
    return tuple(reader.existing_file(item, f"{key}[{index}]")
                 for index, item in enumerate(reader.sequence(node, key)))


def _read_target(reader: _NodeReader, node: Node, key: str) -> list[KernelTarget]:
    """One target entry; a Debian entry with lists of series or flavours is one per pair."""
    fields = reader.mapping(node, key, required=(),
                            optional=("name", "debian", "source", "config", "header_index",
                                      "patches", "expect", "reason", "refused",
                                      "accept_compiler", "toolchain", "trust_signing_key"))
    patches = _read_patches(reader, fields["patches"], f"{key}.patches") \
        if "patches" in fields else None
    not_applicable = _read_expectation(reader, node, fields, key)
    refused = reader.string(fields["refused"], f"{key}.refused") if "refused" in fields \
        else None
    if refused is not None and not_applicable is not None:
        raise reader.fail(fields["refused"], f"{key}.refused", "a target whose patches do not "
                          "apply is not refused: keep 'expect: not-applicable' or 'refused'")
    return [replace(target, patches=patches, not_applicable=not_applicable, refused=refused)
            for target in _read_kernels(reader, node, fields, key)]


def _read_expectation(reader: _NodeReader, node: Node, fields: dict[str, Node],
                      key: str) -> str | None:
    if "expect" not in fields:
        if "reason" in fields:
            raise reader.fail(fields["reason"], f"{key}.reason",
                              "a reason goes with 'expect: not-applicable'; add that or drop it")
        return None
    expect = reader.string(fields["expect"], f"{key}.expect")
    if expect != "not-applicable":
        raise reader.fail(fields["expect"], f"{key}.expect",
                          f"'{expect}' is not an expectation a target can have; the one "
                          "there is: not-applicable (with a 'reason')")
    if "reason" not in fields:
        raise reader.fail(node, key, "'expect: not-applicable' needs a 'reason': say why the "
                          "change does not apply to this kernel")
    return reader.string(fields["reason"], f"{key}.reason")


def _read_kernels(reader: _NodeReader, node: Node, fields: dict[str, Node],
                  key: str) -> list[KernelTarget]:
    place = reader.place(node, key)
    if "debian" in fields:
        if "source" in fields or "config" in fields:
            raise reader.fail(
                node, key,
                "a target is either 'debian' (Debian's own kernel) or 'source' + 'config' "
                "(a kernel to build), not both",
            )
        if "trust_signing_key" in fields:
            raise reader.fail(fields["trust_signing_key"], f"{key}.trust_signing_key",
                              "Debian's kernel trusts the keys Debian built it with (and "
                              "enrolled machine-owner keys): only a kernel built here can be "
                              "configured to trust the signing key")
        if "toolchain" in fields:
            raise reader.fail(fields["toolchain"], f"{key}.toolchain",
                              "a Debian kernel is compiled by its own gcc, from its release "
                              "(or 'accept_compiler'); 'toolchain' is for kernels built here")
        kernels = _read_debian(reader, fields["debian"], f"{key}.debian")
        header_index = ("header_index" in fields
                        and reader.boolean(fields["header_index"], f"{key}.header_index"))
        accept = reader.string(fields["accept_compiler"], f"{key}.accept_compiler",
                               _DEBIAN_GCC_VERSION, "a Debian gcc version such as 14.2.0-20") \
            if "accept_compiler" in fields else None
        if "name" in fields:
            if len(kernels) > 1:
                raise reader.fail(fields["name"], f"{key}.name",
                                  "the targets of a series or flavour list are named by their "
                                  "kernels; drop 'name' or list one kernel")
            name = reader.string(fields["name"], f"{key}.name", _TARGET_NAME, "a target name")
            return [KernelTarget(name=name, place=place, debian=kernels[0],
                                 header_index=header_index, accept_compiler=accept)]
        return [KernelTarget(name=debian.label, place=place, debian=debian,
                             header_index=header_index, accept_compiler=accept)
                for debian in kernels]
    if "header_index" in fields:
        raise reader.fail(fields["header_index"], f"{key}.header_index",
                          "only a 'debian' target needs a header index: a built kernel "
                          "knows which objects include each header from its build")
    if "accept_compiler" in fields:
        raise reader.fail(fields["accept_compiler"], f"{key}.accept_compiler",
                          "a kernel built here is compiled by its toolchain's gcc, so there "
                          "is no other compiler to accept; drop it (or set 'toolchain')")
    if "source" not in fields or "config" not in fields:
        raise reader.fail(
            node, key,
            "a target needs 'debian' (Debian's own kernel) or both 'source' and 'config' "
            "(a kernel to build)",
        )
    if "name" not in fields:
        raise reader.fail(node, key, "a built kernel target needs a 'name'")
    source = _read_source(reader, fields["source"], f"{key}.source")
    if "toolchain" in fields:
        toolchain = _one_release(reader, fields["toolchain"], f"{key}.toolchain")
    else:
        toolchain = source.release or DEFAULT_TOOLCHAIN
    return [KernelTarget(
        name=reader.string(fields["name"], f"{key}.name", _TARGET_NAME, "a target name"),
        place=place,
        source=source,
        config=_read_config(reader, fields["config"], f"{key}.config"),
        toolchain=toolchain,
        trusts_signing_key=("trust_signing_key" in fields
                            and reader.boolean(fields["trust_signing_key"],
                                               f"{key}.trust_signing_key")),
    )]


def _debian_releases(reader: _NodeReader, fields: dict[str, Node], key: str) -> list[str]:
    """The Debian releases a target names (``release: 12``, ``[12, 13]``, or codenames)."""
    if "release" not in fields:
        return []
    names = _one_or_more(reader, fields["release"], f"{key}.release", _DEBIAN_RELEASE,
                         "a Debian release (12, 13, or bookworm, trixie)")
    return [_release_number(reader, fields["release"], f"{key}.release", name)
            for name in names]


def _one_release(reader: _NodeReader, node: Node, key: str) -> str:
    name = reader.string(node, key, _DEBIAN_RELEASE, "a Debian release (12, 13, or bookworm, "
                                                     "trixie)")
    return _release_number(reader, node, key, name)


def _release_number(reader: _NodeReader, node: Node, key: str, name: str) -> str:
    number = next((r.number for r in DEBIAN_RELEASES.values()
                   if name in (r.number, r.codename)), None)
    if number is None:
        known = ", ".join(f"{r.number} ({r.codename})" for r in DEBIAN_RELEASES.values())
        raise reader.fail(node, key, f"Debian {name} is not a release kpatchbuild knows ({known})")
    return number


def release_of_series(series: str) -> str | None:
    """The one Debian release that serves ``series``, or None (several, or none known)."""
    serving = SERIES_RELEASES.get(series, ())
    return serving[0] if len(serving) == 1 else None


def _ambiguous_series(series: str, spelled: str) -> str:
    serving = SERIES_RELEASES.get(series, ())
    if len(serving) > 1:
        which = " and ".join(f"Debian {r} ({series}.x+deb{r})" for r in serving)
        return (f"series {series} is in {which}, different kernels: say which with "
                f"'release: {serving[-1]}' (or a list, [{', '.join(serving)}]){spelled}")
    known = ", ".join(f"{one} ({'/'.join(rs)})" for one, rs in SERIES_RELEASES.items())
    return (f"kpatchbuild does not know which Debian release serves series {series} (it "
            f"knows {known}): say it with 'release: 13' or the like{spelled}")


def _read_debian(reader: _NodeReader, node: Node, key: str) -> list[DebianKernel]:
    """An exact image, or every (release, series, flavour) of the lists given."""
    fields = reader.mapping(node, key, required=(),
                            optional=("image", "series", "flavour", "release"))
    releases = _debian_releases(reader, fields, key)
    if "image" in fields:
        if "series" in fields or "flavour" in fields:
            raise reader.fail(node, key, "give either 'image' or 'series' + 'flavour', not both")
        image = reader.string(fields["image"], f"{key}.image", _IMAGE_PACKAGE,
                              "a Debian kernel image package (linux-image-6.1.0-56-cloud-amd64)")
        if image.endswith(("-dbg", "-unsigned")):
            raise reader.fail(fields["image"], f"{key}.image",
                              f"'{image}' is not the image itself; name linux-image-<release>")
        said = _RELEASE_IN_IMAGE.search(image)
        series = _IMAGE_PACKAGE.match(image).group(1)  # type: ignore[union-attr]
        implied = said.group(1) if said else release_of_series(
            ".".join(series.split(".")[:2]))
        if len(releases) > 1 or (releases and implied and releases[0] != implied):
            raise reader.fail(fields["release"], f"{key}.release",
                              f"{image} is Debian {implied}'s; drop 'release' or name that one")
        release = releases[0] if releases else implied
        if release is None:
            raise reader.fail(fields["image"], f"{key}.image",
                              f"say which Debian release serves {image}: 'release: 13' or "
                              "the like")
        return [DebianKernel(image=image, series=None, flavour=None, release=release)]
    if "series" not in fields or "flavour" not in fields:
        raise reader.fail(node, key, "give 'image', or both 'series' (6.1) and 'flavour' "
                                     "(cloud-amd64)")
    series = _one_or_more(reader, fields["series"], f"{key}.series", _SERIES,
                          "a kernel series such as \"6.1\" (quote it)")
    flavours = _one_or_more(reader, fields["flavour"], f"{key}.flavour", _FLAVOUR,
                            "a Debian kernel flavour such as cloud-amd64")
    kernels = []
    for one in series:
        implied = release_of_series(one)
        if not releases and implied is None:
            example = SERIES_RELEASES.get(one, ("13",))[-1]
            raise reader.fail(fields["series"], f"{key}.series", _ambiguous_series(
                one, f"; targets are named after it, debian{example}-{one}-<flavour>"))
        serving = _releases_serving(reader, fields, key, one, releases or [str(implied)])
        kernels += [DebianKernel(image=None, series=one, flavour=flavour, release=release)
                    for release in serving for flavour in flavours]
    return kernels


def _releases_serving(reader: _NodeReader, fields: dict[str, Node], key: str, series: str,
                      releases: list[str]) -> list[str]:
    """Of the releases a target names, those whose archive serves ``series``: with
    ``release: [12, 13]`` and ``series: ["6.1", "6.12"]``, Debian 12's 6.1 and both 6.12s."""
    known = SERIES_RELEASES.get(series)
    if known is None:
        return releases
    serving = [release for release in releases if release in known]
    if not serving:
        named = ", ".join(f"Debian {release}" for release in releases)
        raise reader.fail(fields["release"], f"{key}.release",
                          f"{named} does not serve series {series} (Debian "
                          f"{' and '.join(known)} does): drop that series or name its release")
    return serving


def _one_or_more(reader: _NodeReader, node: Node, key: str, pattern: re.Pattern[str],
                 what: str) -> list[str]:
    """A string, or a list of them (each once)."""
    if not isinstance(node, SequenceNode):
        return [reader.string(node, key, pattern, what)]
    values: list[str] = []
    for index, item in enumerate(reader.sequence(node, key)):
        value = reader.string(item, f"{key}[{index}]", pattern, what)
        if value in values:
            raise reader.fail(item, f"{key}[{index}]", f"'{value}' is listed twice")
        values.append(value)
    return values


def _read_source(reader: _NodeReader, node: Node, key: str) -> SourceSpec:
    fields = reader.mapping(node, key, required=(),
                            optional=("debian", "release", "tarball", "sha256", "tree"))
    kinds = [kind for kind in ("debian", "tarball", "tree") if kind in fields]
    if len(kinds) != 1:
        raise reader.fail(node, key, "give exactly one of 'debian' (linux-source-6.1), "
                                     "'tarball' (with 'sha256') or 'tree'")
    kind = kinds[0]
    if "sha256" in fields and kind != "tarball":
        raise reader.fail(fields["sha256"], f"{key}.sha256", "only a 'tarball' has a sha256")
    if "release" in fields and kind != "debian":
        raise reader.fail(fields["release"], f"{key}.release", "only a 'debian' source comes "
                          "from a Debian release")
    if kind == "debian":
        text = reader.string(fields["debian"], f"{key}.debian", _SOURCE_PACKAGE,
                             "a Debian source package (linux-source-6.1 or "
                             "linux-source-6.1=6.1.192-2)")
        match = _SOURCE_PACKAGE.match(text)
        assert match is not None
        series = match.group(1).removeprefix("linux-source-")
        if "release" in fields:
            release: str | None = _one_release(reader, fields["release"], f"{key}.release")
            _releases_serving(reader, fields, key, series, [str(release)])
        else:
            release = release_of_series(series)
        if release is None:
            raise reader.fail(fields["debian"], f"{key}.debian", _ambiguous_series(
                series, " (a built kernel's Debian source: say 'release' beside 'debian')"))
        return SourceSpec(kind="debian", package=match.group(1), version=match.group(2),
                          release=release)
    if kind == "tarball":
        if "sha256" not in fields:
            raise reader.fail(node, key, "a 'tarball' needs its 'sha256' (sha256sum prints it)")
        return SourceSpec(
            kind="tarball",
            path=reader.existing_file(fields["tarball"], f"{key}.tarball"),
            sha256=reader.string(fields["sha256"], f"{key}.sha256", _SHA256,
                                 "a sha256 (64 lower-case hex digits)"),
        )
    text = reader.string(fields["tree"], f"{key}.tree")
    tree = (reader.file.parent / text).resolve()
    if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
        raise reader.fail(fields["tree"], f"{key}.tree",
                          f"'{text}' is not a kernel source tree "
                          f"(no Makefile and Kconfig in {tree})")
    return SourceSpec(kind="tree", path=tree)


def _read_config(reader: _NodeReader, node: Node, key: str) -> ConfigSpec:
    fields = reader.mapping(node, key, required=("base",), optional=("fragments", "options"))
    base = reader.string(fields["base"], f"{key}.base")
    base_path = None
    if base not in KCONFIG_BASE_TARGETS:
        base_path = (reader.file.parent / base).resolve()
        if not base_path.is_file():
            raise reader.fail(
                fields["base"], f"{key}.base",
                f"'{base}' is neither one of {', '.join(KCONFIG_BASE_TARGETS)} "
                f"nor an existing .config file",
            )
        base = "file"
    fragments: list[Path] = []
    options: list[ConfigOption] = []
    if "fragments" in fields:
        for index, item in enumerate(reader.sequence(fields["fragments"], f"{key}.fragments")):
            fragment = reader.existing_file(item, f"{key}.fragments[{index}]")
            fragments.append(fragment)
            options.extend(read_fragment(fragment))
    if "options" in fields:
        for index, item in enumerate(reader.sequence(fields["options"], f"{key}.options")):
            sub = f"{key}.options[{index}]"
            parsed = parse_config_line(reader.string(item, sub))
            if parsed is None:
                raise reader.fail(item, sub, f"'{item.value}' is not CONFIG_NAME=value")
            options.append(ConfigOption(parsed[0], parsed[1], reader.place(item, sub)))
    return ConfigSpec(base=base, base_path=base_path, fragments=tuple(fragments),
                      options=tuple(options))


def find_recipes(recipes_dir: Path, only: str | None = None) -> list[Recipe]:
    """Every recipe under ``recipes_dir`` (or just ``only``), sorted by name."""
    recipes_dir = Path(recipes_dir)
    if only:
        candidate = recipes_dir / only
        if not (candidate / RECIPE_FILE).is_file():
            known = ", ".join(sorted(p.parent.name for p in recipes_dir.glob(f"*/{RECIPE_FILE}")))
            raise RecipeError(f"recipe '{only}' not found in {recipes_dir} (recipes: {known})")
        return [load_recipe(candidate)]
    return [load_recipe(p) for p in sorted(recipes_dir.glob(f"*/{RECIPE_FILE}"))]


def each_target(recipes: list[Recipe]) -> list[tuple[Recipe, KernelTarget]]:
    return [(recipe, target) for recipe in recipes for target in recipe.targets]


__all__: list[str] = [
    "ConfigOption", "ConfigSpec", "DebianKernel", "KernelTarget", "Place", "Recipe",
    "SourceSpec", "find_recipes", "load_recipe", "parse_config_line", "read_fragment",
]
