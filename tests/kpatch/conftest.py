from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from kpatchbuild.kpatch.cli import main
from tests.kpatch.fakekernel import FakeKernel
from tests.kpatch.modules import make_module


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


@dataclass
class Machine:
    """A fake kernel and the ``kpatch`` command run against it."""

    kernel: FakeKernel
    modules: Path
    capsys: pytest.CaptureFixture[str]
    euid: int = 0

    def kpatch(self, *argv: str) -> Outcome:
        self.capsys.readouterr()
        code = main(list(argv), system=self.kernel.system(euid=self.euid))
        captured = self.capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    def module(self, name: str, **options: object) -> Path:
        return make_module(self.modules, name, **options)  # type: ignore[arg-type]

    def patch_dir(self, name: str) -> Path:
        return self.kernel.path(f"sys/kernel/livepatch/{name}")


@pytest.fixture
def make_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """A factory: ``make_machine(livepatch=False)`` passes its options to FakeKernel."""
    def make(**kernel_options: object) -> Machine:
        root = tmp_path / "root"
        root.mkdir()
        return Machine(FakeKernel(root, **kernel_options), tmp_path / "modules",  # type: ignore[arg-type]
                       capsys)
    return make


@pytest.fixture
def machine(make_machine) -> Machine:
    return make_machine()
