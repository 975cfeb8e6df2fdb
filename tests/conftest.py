"""Shared fixtures: small worlds, Feast stores on them, and a real redis-server on loopback."""

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from training.core.settings import Settings
from training.features.store import apply_definitions, materialize
from training.features.tables import build_features
from training.models.registry import CANDIDATE, ModelRegistry
from training.world.behaviour import WorldConfig
from training.world.generator import generate_world

REPO_ROOT = Path(__file__).resolve().parent.parent
SMALL_WORLD = WorldConfig(listeners=300, days=35, seed=11)


def project_settings(data_dir: Path, **overrides) -> Settings:
    """Settings for a test data directory, with this checkout's feature_repo/."""
    return Settings(data_dir=data_dir, feature_repo=REPO_ROOT / "feature_repo", **overrides)


@pytest.fixture(scope="session")
def small_world_store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A small generated world with features built, applied and materialized (SQLite)."""
    settings = project_settings(tmp_path_factory.mktemp("small") / "data")
    generate_world(SMALL_WORLD, settings.world_dir)
    build_features(settings.world_dir, settings.features_dir)
    apply_definitions(settings)
    materialize(settings)
    return settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server process on a free loopback port, owned by the test session."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash (no shutdown save)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def candidate_dir(settings: Settings, shelf: str) -> Path:
    """The registry directory of the shelf's candidate (the version ``homerec train``
    registered last): a ranker directory ``load_ranker`` reads."""
    registry = ModelRegistry(settings.model_registry_dir)
    version = registry.alias(shelf, CANDIDATE)
    assert version is not None, f"{shelf} has no candidate"
    return registry.get(shelf, version).path


def require(binary: str) -> str:
    """The path of a system binary ``make test`` installs: skipped locally when missing,
    a failure under CI=true (those tests must run there)."""
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} is not installed (make test installs it with apt-get)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextlib.contextmanager
def running_redis(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[RedisServer]:
    """A started RedisServer in a fresh folder, stopped on exit."""
    require("redis-server")
    server = RedisServer(tmp_path_factory.mktemp(name))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server. Missing binary: skipped locally, a failure under CI=true."""
    with running_redis(tmp_path_factory, "redis") as server:
        yield server


# --------------------------------------------------------------------------- trained worlds
#
# XGBoost trains with two OpenMP threads (ShelfRanker's default n_jobs). On a busy 2-core
# machine, spinning OpenMP workers make that many times slower (about 10x measured here);
# passive waiting keeps the models bit-identical and the shelf tests fast. It must be set
# before OpenMP loads (with the first xgboost/sklearn import), which no import above does.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

TRAIN_WORLD = WorldConfig(listeners=300, days=50, seed=1)
"""The world the shelf models are trained on: small, yet enough snapshots to learn from."""
SHORT_WINDOWS = {"warmup_days": 7, "valid_days": 3, "test_days": 4, "train_every_days": 2}
"""Time-split settings that fit small worlds (35-50 days) with a 7-day label horizon."""


@dataclass(frozen=True)
class TrainedWorld:
    """A world with every shelf trained by ``train_all`` and evaluated by ``evaluate_all``."""

    settings: Settings
    trained: dict[str, Any]  # shelf name -> TrainedShelf
    fitted: dict[str, Any]  # shelf name -> the ShelfRanker object train_all saved, in memory
    report: dict[str, Any]  # evaluate_all(settings)


@pytest.fixture(scope="session")
def trained_world(tmp_path_factory: pytest.TempPathFactory) -> TrainedWorld:
    """TRAIN_WORLD generated, featurized, applied, materialized, trained, evaluated and
    gated into production, as ``homerec demo`` does.

    ``save_ranker`` is wrapped while training so the tests also hold each ranker exactly
    as it was right after fitting, before it touched the disk. The gate runs with a lift
    of -1 over the heuristic allowed (its other checks as configured): on a world this
    small a shelf model can trail its heuristic by noise, and the serving tests need every
    shelf served by a blessed model; the gate's own thresholds are tested in test_gate.py.
    """
    from evaluation.gate import gate_candidates
    from evaluation.report import evaluate_all
    from training.features.pipeline import prepare_features
    from training.jobs import train
    from training.models import registry

    settings = project_settings(tmp_path_factory.mktemp("trained") / "data", **SHORT_WINDOWS)
    generate_world(TRAIN_WORLD, settings.world_dir)
    prepare_features(settings)
    fitted: dict[str, Any] = {}
    save_ranker = registry.save_ranker

    def keep_fitted(ranker, directory, metadata):
        fitted[metadata["shelf"]] = ranker
        return save_ranker(ranker, directory, metadata)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "save_ranker", keep_fitted)
        trained = {shelf.shelf: shelf for shelf in train.train_all(settings)}
    report = evaluate_all(settings)
    outcomes = gate_candidates(settings.model_copy(update={"gate_min_lift": -1.0}))
    assert all(outcome.pushed for outcome in outcomes), [o.decision for o in outcomes]
    return TrainedWorld(settings, trained, fitted, report)
