"""The store publishes whole artifacts or nothing."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from kpatchbuild.base.errors import BuildError
from kpatchbuild.base.store import Store, content_key, file_hash


def test_keys_are_stable_and_input_sensitive(tmp_path: Path) -> None:
    assert content_key("built", 1, {"b": 2, "a": 1}) == content_key("built", 1, {"a": 1, "b": 2})
    assert content_key("built", 1) != content_key("built", 2)
    (tmp_path / "f").write_bytes(b"x" * 3_000_000)
    assert file_hash(tmp_path / "f") == file_hash(tmp_path / "f")
    assert len(file_hash(tmp_path / "f")) == 32


def test_publish_is_all_or_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(RuntimeError), store.publishing("thing", "k1", {}) as work:
        (work / "half").write_text("written")
        raise RuntimeError("interrupted")
    assert store.lookup("thing", "k1") is None
    assert list(store.tmp.iterdir()) == []
    with store.publishing("thing", "k1", {"made_from": "x"}) as work:
        (work / "whole").write_text("written")
    artifact = store.lookup("thing", "k1")
    assert artifact is not None and (artifact.path / "whole").read_text() == "written"
    assert artifact.manifest["made_from"] == "x"
    assert store.index[("thing", "k1")]["key"] == "k1"


def test_temp_dirs_of_dead_builders_are_swept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    leftover = store.tmp / f"built-abc-{dead}"
    (leftover / "tree").mkdir(parents=True)
    store.sweep_stale_temps()
    assert not leftover.exists()


def test_one_builder_per_key_across_threads(tmp_path: Path) -> None:
    """Cells of two recipes on one kernel fetch the same package at once (doit -n 2): the
    second waits and takes the first's artifact; nothing is built twice."""
    import threading
    import time

    store = Store(tmp_path)
    builds: list[int] = []
    started = threading.Barrier(2)

    def build(work: Path) -> None:
        builds.append(threading.get_ident())
        time.sleep(0.3)  # long enough that the other thread arrives meanwhile
        (work / "package.deb").write_text("deb")

    results: list[Path] = []

    def fetch() -> None:
        started.wait()
        results.append(store.make("fetch-deb", "k" * 8, {"what": "x"}, build).path)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert results[0] == results[1] and (results[0] / "package.deb").read_text() == "deb"
    assert not list(store.tmp.iterdir())


def test_two_threads_publishing_one_key_do_not_share_a_temp_dir(tmp_path: Path) -> None:
    import threading

    store = Store(tmp_path)
    entered = threading.Barrier(2)
    seen: list[Path] = []

    def publish() -> None:
        with store.publishing("fetch-kernel", "same", {}) as work:
            entered.wait()
            seen.append(work)
            (work / "file").write_text("x")

    threads = [threading.Thread(target=publish) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 2
    assert (store.path("fetch-kernel", "same") / "file").read_text() == "x"


def test_a_new_cache_is_private(tmp_path: Path) -> None:
    store = Store(tmp_path / "new" / "cache")
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_cache_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(BuildError) as refused:
        Store(root)
    assert refused.value.message == (
        f"{root}: the cache is writable by group or others (mode {mode:04o}): its contents "
        "are built into packages and its recorded commands are run again; chmod go-w it, or "
        "use a cache of your own ($KPATCHBUILD_CACHE=DIR)")
    assert not (root / "index").exists() and not (root / "tmp").exists()


def test_a_cache_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        root = tmp_path / "cache"
        root.mkdir()
        os.chown(root, 65534, 65534)
    else:
        root = Path("/")  # root's: another user's for whoever runs this
    owner = root.stat().st_uid
    with pytest.raises(BuildError, match=rf"^{re.escape(str(root))}: the cache is owned by "
                                         rf"uid {owner}, not you \(uid {os.geteuid()}\)"):
        Store(root)
