"""``homerec serve --workers N``: the command line's settings reach every worker through
``HOMEREC_*`` variables, /ready names the worker that answered and the memory of its
entity snapshot, the workers stop with their parent, and a bad N is one line, exit 2."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.app import WorkersError, create_app, serve
from tests.conftest import REPO_ROOT, TrainedWorld, free_port
from training.core.settings import ENV_PREFIX, Settings

HOMEREC = [sys.executable, "-c", "from training.cli.main import run; run()"]


def test_settings_come_back_equal_from_their_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a worker rebuilds from ``as_environment()`` equals the parent's settings:
    paths, secrets in clear, JSON dicts, and unset optional values (a stale variable of
    an option the settings leave unset must not come back)."""
    settings = Settings(
        env="production",
        data_dir=tmp_path / "data",
        online_store="redis",
        redis_connection="127.0.0.1:6390,db=2",
        shelves_file=tmp_path / "shelves.yaml",
        train_every_days=3,
        gate_overrides={"shortcuts": {"min_ndcg": 0.5}},
        serve_admin_token="s3cret",
        feature_log_sample_rate=0.25,
    )
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(f"{ENV_PREFIX}REGISTRY_DIR", str(tmp_path / "stale"))
    for name, value in settings.as_environment().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_ready_reports_the_worker_and_its_snapshot_memory(trained_world: TrainedWorld) -> None:
    settings = trained_world.settings.model_copy(update={"feature_log_sample_rate": 0.0})
    app = create_app(settings)
    with TestClient(app) as client:
        ready = client.get("/ready").json()
        assert ready["worker_pid"] == os.getpid()
        assert ready["snapshot_bytes"] == app.state.ranker.snapshot.nbytes > 0


def test_fewer_than_one_worker_is_refused_before_anything_binds(tmp_path: Path) -> None:
    with pytest.raises(WorkersError, match="--workers must be at least 1, got 0"):
        serve(Settings(data_dir=tmp_path / "data"), port=free_port(), workers=0)
    done = subprocess.run(
        [*HOMEREC, "--data-dir", str(tmp_path / "data"), "serve", "--workers", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-800:]
    assert done.stderr.strip().splitlines() == ["error: --workers must be at least 1, got 0"]


@contextmanager
def _serving(command: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    """``command`` in a session of its own; on the way out SIGTERM, then SIGKILL to the
    session (its workers with it) if it does not stop."""
    env = {
        **os.environ,
        "HOMEREC_SERVE_REFRESH_SECONDS": "0",
        "HOMEREC_FEATURE_LOG_SAMPLE_RATE": "0",
        "PYTHONPATH": str(REPO_ROOT),
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def _worker_pids(url: str, process: subprocess.Popen, workers: int) -> dict[int, dict]:
    """/ready of each worker, by pid, once ``workers`` distinct ones answered 200 (each
    request opens a new connection, which the kernel hands to any worker)."""
    answers: dict[int, dict] = {}
    deadline = time.monotonic() + 180
    while len(answers) < workers and time.monotonic() < deadline:
        assert process.poll() is None, "homerec serve exited"
        try:
            response = httpx.get(f"{url}/ready", timeout=5)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if response.status_code == 200:
            answers[response.json()["worker_pid"]] = response.json()
        else:
            time.sleep(0.2)
    assert len(answers) == workers, f"ready workers: {sorted(answers)}"
    return answers


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_two_workers_serve_the_command_lines_data_directory(
    trained_world: TrainedWorld, tmp_path: Path
) -> None:
    """``--data-dir`` is given on the command line only (run outside the checkout, where
    no ./data exists): both workers serve its models, log through homerec's loggers, and
    stop with their parent on SIGTERM."""
    data_dir = tmp_path / "data"
    shutil.copytree(trained_world.settings.data_dir, data_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [*HOMEREC, "--data-dir", str(data_dir), "serve", "--port", str(port)]
    log = tmp_path / "serve.log"
    with _serving([*command, "--workers", "2"], tmp_path, log) as process:
        answers = _worker_pids(url, process, 2)
        assert process.pid not in answers
        for ready in answers.values():
            assert ready["status"] == "ready"
            assert ready["snapshot_bytes"] > 0
            assert {s["shelf"]: s["model"] for s in ready["shelves"]} == {
                name: trained.sha256[:12] for name, trained in trained_world.trained.items()
            }
        assert httpx.get(f"{url}/v1/home/L0000001", timeout=30).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-2000:]
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in answers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_gone(pid) for pid in answers), "a worker outlived homerec serve"
    assert log.read_text().count("serving.app: reloaded (startup)") == 2
