"""The house's layering, read from the source: who may import what.

Data flows one way (fetch -> buildroot -> config -> original -> patches -> patched -> diff ->
module -> prove), the graph wires the stages, and the rooms that stand apart (the ELF model, the
differ, the ``kpatch`` command) import nothing of the build side. A third-party library
lives in the one room that needs it, so that swapping it touches one place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kpatchbuild"
STAGES = ("fetch", "buildroot", "config", "original", "patches", "patched", "diff", "module",
          "prove", "package")

# Third-party library -> the modules allowed to import it.
LIBRARY_ROOMS = {
    "doit": {"graph/tasks.py"},
    "diskcache": {"base/store.py"},
    # The build side's reader decodes ELF through its own record tables (elf/structs.py);
    # the kpatch command reads its modules' .modinfo and klp sections with pyelftools.
    "elftools": {"kpatch/modfile.py"},
    "yaml": {"graph/recipe.py"},
    "iced_x86": {"differ/line_decode.py"},
    # Short commands go through base/process.py, long logged steps through run_step, and
    # the guest's qemu (watched against a timeout, its console to a log) through qemu.py:
    # one way each to tell a failure.
    "subprocess": {"base/process.py", "base/commands.py", "stages/prove/qemu.py"},
}
# Rooms that stand apart -> the kpatchbuild packages they may import.
APART = {
    "elf": ("kpatchbuild.elf", "kpatchbuild.base.errors"),
    "differ": ("kpatchbuild.differ", "kpatchbuild.elf", "kpatchbuild.base.errors"),
    # The command runs on users' machines and in guests: nothing of the build side, not
    # even the ELF model (it reads modules with its own small reader).
    "kpatch": ("kpatchbuild.kpatch", "kpatchbuild.base.errors", "kpatchbuild.base.notes",
               "kpatchbuild.base.process", "kpatchbuild.base.modsig"),
    "base": ("kpatchbuild.base",),
    # The matrix's report: rendered and merged from its own values, on any machine.
    "report": ("kpatchbuild.report", "kpatchbuild.base.errors"),
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a.b import c`` counts as a.b and a.b.c)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _room(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def _kpatchbuild_imports(path: Path) -> set[str]:
    return {name for name in _imports(path) if name.startswith("kpatchbuild.")}


def _within(name: str, allowed: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)


@pytest.mark.parametrize("library", sorted(LIBRARY_ROOMS))
def test_each_library_lives_in_its_room(library: str) -> None:
    users = {str(path.relative_to(PACKAGE)) for path in _modules()
             if any(name.split(".")[0] == library for name in _imports(path))}
    assert users == LIBRARY_ROOMS[library]


@pytest.mark.parametrize("room", sorted(APART))
def test_rooms_apart_import_nothing_of_the_build_side(room: str) -> None:
    strays = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in _modules() if _room(path) == room
        for name in _kpatchbuild_imports(path)
        if not _within(name, APART[room])
        # `from kpatchbuild.differ import x` names x too (a function, or a sibling module);
        # `from kpatchbuild.base import errors` names the package on the way.
        and not _within(name.rpartition(".")[0], APART[room])
        and not any(prefix.startswith(name + ".") for prefix in APART[room])
    }
    assert not strays


def test_stages_use_only_earlier_stages_and_never_the_graph_that_wires_them() -> None:
    """A stage may read a recipe's types, but not the pipeline or its tasks; and data flows
    one way, so a stage imports no stage that comes after it."""
    strays = []
    for path in _modules():
        parts = path.relative_to(PACKAGE).parts
        if parts[0] != "stages" or len(parts) < 3:
            continue
        position = STAGES.index(parts[1])
        for name in _kpatchbuild_imports(path):
            pieces = name.split(".")
            if name.startswith(("kpatchbuild.graph.pipeline", "kpatchbuild.graph.tasks")):
                strays.append(f"{path.relative_to(PACKAGE)}: {name}")
            if pieces[1] == "stages" and len(pieces) > 2 and pieces[2] in STAGES \
                    and STAGES.index(pieces[2]) > position:
                strays.append(f"{path.relative_to(PACKAGE)}: {name} (a later stage)")
    assert not strays


def test_every_stage_has_its_folder() -> None:
    folders = {p.name for p in (PACKAGE / "stages").iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(STAGES)


def test_the_layering_check_sees_a_stray_import(tmp_path: Path) -> None:
    """The reader of imports is itself right: a late import inside a function counts."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from kpatchbuild.graph import tasks\n    import doit\n")
    assert {"kpatchbuild.graph", "kpatchbuild.graph.tasks", "doit"} <= _imports(module)
