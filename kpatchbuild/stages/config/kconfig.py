"""Kernel configuration: base + fragments + what livepatch needs -> a .config proven to hold them.

Kconfig silently drops an option whose dependencies are off (CONFIG_VIRTIO_PCI without
CONFIG_PCI; tinyconfig's CONFIG_BUG=n), so after ``olddefconfig`` every requested option is
checked against the result, and a dropped one is reported with the dependencies it lacks.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kpatchbuild.base.commands import HOST, Runner, run_step
from kpatchbuild.base.errors import RecipeError
from kpatchbuild.graph.recipe import ConfigOption, ConfigSpec, Place, parse_config_line

_LIVEPATCH_PLACE = Place(Path("kpatchbuild"), 0, "livepatch requirements")

# What a livepatch module needs from the kernel it patches (x86_64). DEBUG_KERNEL is here
# because KALLSYMS_ALL depends on it, and LIVEPATCH on KALLSYMS_ALL.
LIVEPATCH_REQUIREMENTS: tuple[ConfigOption, ...] = tuple(
    ConfigOption(name, "y", _LIVEPATCH_PLACE)
    for name in (
        "CONFIG_MODULES", "CONFIG_MODULE_UNLOAD", "CONFIG_SYSFS", "CONFIG_KALLSYMS",
        "CONFIG_DEBUG_KERNEL", "CONFIG_KALLSYMS_ALL", "CONFIG_FTRACE", "CONFIG_FUNCTION_TRACER",
        "CONFIG_DYNAMIC_FTRACE", "CONFIG_LIVEPATCH",
    )
)


def parse_config(text: str) -> dict[str, str]:
    """A .config's options; "is not set" reads as ``n``."""
    options = {}
    for line in text.splitlines():
        parsed = parse_config_line(line)
        if parsed:
            options[parsed[0]] = parsed[1]
    return options


def is_on(value: str | None) -> bool:
    return value not in (None, "n")


def merge_options(base_text: str, options: list[ConfigOption]) -> str:
    """``base_text`` with each option's line replaced (or appended), later options winning."""
    wanted: dict[str, str] = {}
    for option in options:
        wanted[option.name] = option.value
    kept = [line for line in base_text.splitlines()
            if (parsed := parse_config_line(line)) is None or parsed[0] not in wanted]
    for name, value in wanted.items():
        kept.append(f"# {name} is not set" if value == "n" else f"{name}={value}")
    return "\n".join(kept) + "\n"


def make_config(srctree: Path, spec: ConfigSpec, scratch: Path, log: Path,
                runner: Runner = HOST) -> str:
    """Run kconfig for ``spec`` in ``scratch`` (``O=``), verify the result, return its text.
    ``runner`` holds the compiler that will build the kernel: kconfig records it."""
    scratch.mkdir(parents=True, exist_ok=True)
    make: list[str | Path] = ["make", "-C", srctree, f"O={scratch}"]
    if spec.base == "file":
        assert spec.base_path is not None
        (scratch / ".config").write_text(spec.base_path.read_text())
    else:
        run_step([*make, spec.base], step=f"make {spec.base}", log=log, runner=runner)
    requested = [*spec.options, *LIVEPATCH_REQUIREMENTS]
    base_text = (scratch / ".config").read_text()
    (scratch / ".config").write_text(merge_options(base_text, requested))
    run_step([*make, "olddefconfig"], step="make olddefconfig", log=log, runner=runner)
    final_text = (scratch / ".config").read_text()
    verify_options(srctree, final_text, requested)
    return final_text


def verify_options(srctree: Path, final_text: str, requested: list[ConfigOption]) -> None:
    """Raise RecipeError for the first requested option the final config does not hold."""
    final = parse_config(final_text)
    # Later requests override earlier ones, so check only the last word on each option.
    last: dict[str, ConfigOption] = {}
    for option in requested:
        last[option.name] = option
    for option in last.values():
        got = final.get(option.name)
        if option.value == "n" and not is_on(got):
            continue
        if got == option.value:
            continue
        raise RecipeError(f"{_where(option)}{option.name}={option.value} did not stick "
                          f"(the final .config has {_shown(got)}): "
                          f"{explain_drop(srctree, option, final)}")


def _where(option: ConfigOption) -> str:
    if option.place is _LIVEPATCH_PLACE:
        return "livepatch needs "
    return f"{option.place}: "


def _shown(value: str | None) -> str:
    return "it unset" if value in (None, "n") else f"={value}"


@dataclass
class KconfigEntry:
    """What one ``config NAME`` block in a Kconfig file says about its dependencies."""

    file: Path
    line: int
    depends: list[str]
    has_prompt: bool


_PROMPT = re.compile(r"^\s*(bool|tristate|string|int|hex|prompt)\s+\"[^\"]*\"(?:\s+if\s+(.+))?")
_TOKEN = re.compile(r"\s*(&&|\|\||!=|[()!=]|\"[^\"]*\"|[A-Za-z0-9_]+)")


def evaluate(expression: str, config: dict[str, str]) -> int:
    """A Kconfig expression's tristate value (0 n, 1 m, 2 y) under ``config``."""
    tokens = _TOKEN.findall(expression)
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        position += 1
        return tokens[position - 1]

    def value_of(word: str) -> str:
        if word.startswith('"'):
            return word.strip('"')
        if word in ("y", "m", "n") or not word.isupper():
            return word
        return config.get(f"CONFIG_{word}", "n").strip('"')

    def tristate(text: str) -> int:
        return {"y": 2, "m": 1}.get(text, 0)

    def primary() -> int:
        word = take()
        if word == "!":
            return 2 - primary()
        if word == "(":
            result = disjunction()
            take()
            return result
        if peek() in ("=", "!="):
            equal = take() == "="
            return 2 if (value_of(word) == value_of(take())) == equal else 0
        return tristate(value_of(word))

    def conjunction() -> int:
        result = primary()
        while peek() == "&&":
            take()
            result = min(result, primary())
        return result

    def disjunction() -> int:
        result = conjunction()
        while peek() == "||":
            take()
            result = max(result, conjunction())
        return result

    return disjunction() if tokens else 2


def find_kconfig_entry(srctree: Path, name: str) -> KconfigEntry | None:
    """Locate ``config NAME`` (x86 and generic Kconfig files) with its effective depends.

    Effective means its own ``depends on`` plus those of the enclosing ``if``/``menu``/
    ``choice`` blocks of the same file, which is where most silent drops come from
    (``if VIRTIO_MENU ... config VIRTIO_PCI``).
    """
    symbol = name.removeprefix("CONFIG_")
    header = re.compile(rf"^(menu)?config\s+{re.escape(symbol)}\s*$")
    for path in _kconfig_files(srctree):
        text = path.read_text(errors="replace")
        if symbol not in text:
            continue
        entry = _scan_kconfig(path, text, header)
        if entry:
            return entry
    return None


def _kconfig_files(srctree: Path) -> list[Path]:
    found: list[Path] = []
    for directory, subdirs, files in os.walk(srctree):
        rel = os.path.relpath(directory, srctree)
        if rel == "arch":
            subdirs[:] = [d for d in subdirs if d == "x86"]
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in ("Documentation",)]
        found.extend(Path(directory, f) for f in files if f.startswith("Kconfig"))
    return sorted(found)


_BLOCK_WORDS = ("config", "menuconfig", "choice", "endchoice", "menu", "endmenu", "if",
                "endif", "source", "comment")


def _scan_kconfig(path: Path, text: str, header: re.Pattern[str]) -> KconfigEntry | None:
    enclosing: list[tuple[str, list[str]]] = []  # open if/menu/choice blocks and their depends
    current: list[str] | None = None  # where an indented "depends on" line goes
    match: KconfigEntry | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        word, _, rest = line.partition(" ")
        if line and raw[0] not in " \t":
            if match is not None and word in _BLOCK_WORDS:
                break
            if word in ("if", "menu", "choice"):
                enclosing.append((word, [rest.strip()] if word == "if" else []))
            elif word in ("endif", "endmenu", "endchoice"):
                _pop(enclosing, word.removeprefix("end"))
            current = None
            if word in ("menu", "choice"):
                current = enclosing[-1][1]
            elif word in ("config", "menuconfig"):
                current = []
                if header.match(line):
                    match = KconfigEntry(path, number, [d for _, deps in enclosing for d in deps],
                                         has_prompt=False)
                    current = match.depends
        elif current is not None and line.startswith("depends on"):
            current.append(line.removeprefix("depends on").strip())
        elif match is not None and current is match.depends and (prompt := _PROMPT.match(raw)):
            match.has_prompt = True
            if prompt.group(2):
                # "bool "..." if EXPERT": the user can set it only when EXPERT is on.
                current.append(prompt.group(2).strip())
    return match


def _pop(stack: list[tuple[str, list[str]]], kind: str) -> None:
    while stack:
        if stack.pop()[0] == kind:
            return


def explain_drop(srctree: Path, option: ConfigOption, final: dict[str, str]) -> str:
    """Why Kconfig refused ``option``: a missing symbol, unmet dependencies, or no prompt."""
    entry = find_kconfig_entry(srctree, option.name)
    if entry is None:
        return f"{option.name} is not an option of this kernel (no 'config' for it on x86); " \
               "remove it or check its spelling"
    if option.value == "n":
        return "something selects it; find what with 'make menuconfig' (search shows " \
               "'Selected by') and turn that off"
    unmet = [d for d in entry.depends if evaluate(d, final) == 0]
    where = f"{entry.file.relative_to(srctree)}:{entry.line}"
    if unmet:
        return f"it depends on {' && '.join(unmet)}, which the config leaves off ({where}); " \
               "turn those on in the config too"
    if not entry.has_prompt:
        return f"it has no prompt and is only set when another option selects it ({where})"
    return f"its dependencies ({' && '.join(entry.depends) or 'none'}) allow it but Kconfig " \
           f"chose otherwise ({where}); it may be a choice member or need =m"
