"""Faults leave nothing behind: what a killed run leaves (staging folders, temp files, a
Feast view stuck mid-materialize) is removed or repaired by the next run, and never
what a running job is still writing."""

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from feast.feature_view import FeatureViewState

from serving.app import create_app
from tests.conftest import REPO_ROOT, project_settings
from training.core.atomic_io import PROCESS_STARTED, remove_leftovers, replacing_dir
from training.core.settings import Settings
from training.features.served_log import FeatureLog
from training.features.store import (
    UnservableViewsError,
    apply_definitions,
    check_servable,
    materialize,
    open_store,
)

HOMEREC = [sys.executable, "-c", "from training.cli.main import run; run()"]
"""The ``homerec`` command of this interpreter's environment."""


def _age(path: Path) -> None:
    """Make ``path`` look older than this process (as a killed earlier run's would be)."""
    then = PROCESS_STARTED - 60
    os.utime(path, (then, then))


def test_only_old_unheld_leftovers_are_removed(tmp_path: Path) -> None:
    stale, fresh, busy = (
        tmp_path / ".x.staging-1",
        tmp_path / ".x.staging-2",
        tmp_path / ".x.staging-3",
    )
    for directory in (stale, fresh, busy):
        directory.mkdir()
        (directory / "part.parquet").write_bytes(b"...")
    _age(stale)
    _age(busy)
    fd = os.open(busy, os.O_RDONLY)  # a running job holds its staging folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert remove_leftovers(tmp_path, ".x.staging-*") == [stale]
    finally:
        os.close(fd)
    assert not stale.exists() and fresh.exists() and busy.exists()


def test_a_failed_replacement_keeps_the_old_folder_and_no_staging(tmp_path: Path) -> None:
    final = tmp_path / "tables"
    final.mkdir()
    (final / "old.parquet").write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing_dir(final) as staged:
        (staged / "new.parquet").write_bytes(b"new")
        raise RuntimeError("build failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables"]
    assert (final / "old.parquet").read_bytes() == b"old"


def test_a_new_feature_log_removes_temp_files_a_killed_server_left(tmp_path: Path) -> None:
    folder = tmp_path / "shortcuts"
    folder.mkdir()
    torn = folder / ".served-20300101T000000000000-000001.parquet.abc123.tmp"
    writing = folder / ".served-20300101T000000000000-000002.parquet.def456.tmp"
    for path in (torn, writing):
        path.write_bytes(b"PAR1 half a file")
        _age(path)
    with open(writing, "rb") as handle:  # another live server writing this one
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        FeatureLog(tmp_path, sample_rate=0.0).close()
    assert not torn.exists() and writing.exists()


def _wait_for(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _homerec(settings: Settings, *args: str) -> subprocess.Popen:
    env = os.environ | {
        "HOMEREC_DATA_DIR": str(settings.data_dir),
        "HOMEREC_FEATURE_REPO": str(settings.feature_repo),
    }
    return subprocess.Popen(
        [*HOMEREC, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


@pytest.fixture
def world_copy(small_world_store: Settings, tmp_path: Path) -> Settings:
    """The small world's tables (world and features) in a data dir of this test's own."""
    settings = project_settings(tmp_path / "data")
    for name in ("world", "features"):
        shutil.copytree(small_world_store.data_dir / name, settings.data_dir / name)
    return settings


def test_kill_9_of_features_build_then_a_rerun_leaves_no_staging_folder(
    world_copy: Settings,
) -> None:
    parent = world_copy.features_dir.parent

    def staged() -> list[Path]:
        return [p for p in parent.glob(".features.staging-*") if any(p.iterdir())]

    build = _homerec(world_copy, "features", "build")
    try:
        _wait_for(staged, 180, "features build to write into its staging folder")
    finally:
        _kill(build)
    assert staged(), "the killed build left no staging folder: nothing was tested"
    assert _homerec(world_copy, "features", "build").wait(timeout=300) == 0
    assert list(parent.glob(".features.staging-*")) == []
    assert (world_copy.features_dir / "item_stats.parquet").exists()


def _materializing(settings: Settings) -> list[str]:
    return [
        view.name
        for view in open_store(settings).list_feature_views()
        if FeatureViewState(view.state) == FeatureViewState.MATERIALIZING
    ]


def test_a_killed_materialize_is_named_by_serving_and_repaired_by_materialize(
    world_copy: Settings,
) -> None:
    """A reload (the views are AVAILABLE_ONLINE after a first materialize) killed while a
    view is MATERIALIZING leaves it there: serving names the fix, which repairs it."""
    apply_definitions(world_copy)
    materialize(world_copy)
    registry = world_copy.feast_dir / "registry.db"
    written = [registry.stat().st_mtime_ns]

    def stuck_view() -> list[str]:
        if registry.stat().st_mtime_ns == written[-1]:
            return []
        written.append(registry.stat().st_mtime_ns)
        return _materializing(world_copy)

    job = _homerec(world_copy, "features", "materialize", "--full")
    try:
        _wait_for(stuck_view, 180, "materialize to mark a view MATERIALIZING")
    finally:
        _kill(job)
    with pytest.raises(UnservableViewsError, match="MATERIALIZING"):
        check_servable(open_store(world_copy))
    with TestClient(create_app(world_copy)) as client:
        ready = client.get("/ready")
    assert ready.status_code == 503
    assert "run `homerec features materialize` to repair" in ready.json()["message"]

    materialize(world_copy)
    assert _materializing(world_copy) == []
    with TestClient(create_app(world_copy)) as client:
        assert client.get("/ready").status_code == 200
