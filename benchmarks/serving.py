"""Serving benchmark: the Home ranker on a real redis-server, side by side in one run.

Starts ``redis-server`` on a free loopback port, materializes a trained data directory
(``make demo``'s ``data/`` by default) into it, starts the app under uvicorn in its own
process, and measures:

* **candidate feature fetch** for one shelf's FeatureService over N = 100/300/500
  (listener, item) rows: (a) the service's reader (in-memory entity snapshot + batched
  ``online_read``), (b) ``FeatureStore.get_online_features``, (c) a raw pipelined
  ``HGETALL`` of the same Redis keys (no decoding) — with the ratios a/c and b/a;
* **/v1/rank** with 100/300/500 items over HTTP (a), and the same ranking in process
  with features from ``get_online_features`` (b);
* **/v1/home** over HTTP with every shelf capped at ``--candidates`` (default 300).

p50/p99 in milliseconds; error counts. ``--json`` prints one JSON object. Targets (2-core
machine): fetch a ≤ 2× c and b ≥ 10× a; /v1/home p99 ≤ 30 ms; zero errors.

    python benchmarks/serving.py [--data-dir data] [--requests 200] [--json]
"""

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and this file would shadow
# the ``serving`` package: drop the folder (``python -m benchmarks.serving`` needs nothing).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx
import numpy as np
import pandas as pd
import redis
import yaml
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from serving.online_features import EntitySnapshot, FastOnlineReader
from serving.ranking import HomeRanker
from training.candidates import generate_candidates, read_candidate_inputs
from training.core.layout import WorldPaths
from training.core.settings import Settings
from training.core.shelves import DEFAULT_SHELVES_FILE, load_shelves
from training.features.store import OnlineReader, apply_definitions, materialize, open_store

REPO = Path(__file__).resolve().parent.parent
SIZES = (100, 300, 500)
LINKED = ("world", "features", "registry")
"""Read-only parts of the data directory the benchmark links instead of copying."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "n": len(values),
    }


def _timed(call: Callable[[], object], repeat: int) -> list[float]:
    call()  # warm-up
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


# --------------------------------------------------------------------------- setup


def _start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        + ["--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


def _bench_data_dir(source: Path, workdir: Path, candidates: int) -> tuple[Path, Path]:
    """A data directory linking ``source``'s world, features and models, with its own
    Feast registry; and a shelves file with every shelf capped at ``candidates``."""
    data_dir = workdir / "data"
    data_dir.mkdir()
    for name in LINKED:
        if (source / name).exists():
            (data_dir / name).symlink_to((source / name).resolve())
    shelves = yaml.safe_load(DEFAULT_SHELVES_FILE.read_text())
    for shelf in shelves["shelves"]:
        shelf["max_candidates"] = candidates
    shelves_file = workdir / "shelves.yaml"
    shelves_file.write_text(yaml.safe_dump(shelves))
    return data_dir, shelves_file


def _start_app(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "serving.app:app_from_env"]
        + ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError("the app exited before it was ready")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the app did not become ready")


# --------------------------------------------------------------------------- workloads


def _listeners_and_items(settings: Settings, count: int) -> tuple[list[str], list[str]]:
    listeners = pd.read_parquet(WorldPaths(settings.world_dir).listeners, columns=["listener_id"])
    items = pd.read_parquet(WorldPaths(settings.world_dir).items, columns=["item_id"])
    return listeners["listener_id"].astype(str).tolist()[:count], items["item_id"].astype(
        str
    ).tolist()


def _raw_keys(store, listener: str, items: list[str]) -> list[bytes]:
    """The Redis keys Feast reads for (listener, items): the listener's, each pair's and
    each item's hash."""
    project = store.config.project
    version = store.config.entity_key_serialization_version

    def key(names: list[str], values: list[str]) -> bytes:
        entity = EntityKey(join_keys=names, entity_values=[Value(string_val=v) for v in values])
        return _redis_key(project, entity, version)

    keys = [key(["listener_id"], [listener])]
    keys += [key(["item_id", "listener_id"], [item, listener]) for item in items]
    keys += [key(["item_id"], [item]) for item in items]
    return keys


def feature_fetch(settings: Settings, client: redis.Redis, repeat: int) -> dict:
    store = open_store(settings)
    fast = FastOnlineReader(store, EntitySnapshot.load(store))
    feast = OnlineReader(store)
    service = store.get_feature_service(load_shelves(settings.shelves_file)[0].feature_service)
    listeners, items = _listeners_and_items(settings, 1)
    results = {}
    for size in SIZES:
        rows = pd.DataFrame({"listener_id": listeners[0], "item_id": items[:size]})
        keys = _raw_keys(store, listeners[0], items[:size])

        def raw(keys: list[bytes] = keys) -> None:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            pipe.execute()

        a = _percentiles(_timed(lambda rows=rows: fast.read(service, rows), repeat))
        b = _percentiles(_timed(lambda rows=rows: feast.read(service, rows), max(5, repeat // 4)))
        c = _percentiles(_timed(raw, repeat))
        results[str(size)] = {
            "service": a,
            "get_online_features": b,
            "raw_redis_pipeline": c,
            "service_over_raw_p50": round(a["p50_ms"] / c["p50_ms"], 2),
            "feast_over_service_p50": round(b["p50_ms"] / a["p50_ms"], 2),
        }
    return {"feature_service": service.name, "rows": results}


def rank_in_process_with_feast(settings: Settings, repeat: int) -> dict:
    """(b) for /v1/rank: the service's ranking with features from get_online_features."""
    ranker = HomeRanker.load(settings)
    ranker.reader = OnlineReader(ranker.store)
    listeners, items = _listeners_and_items(settings, 1)
    shelf = ranker.shelves[0].name
    return {
        str(size): _percentiles(
            _timed(lambda size=size: ranker.rank(listeners[0], shelf, items[:size]), repeat)
        )
        for size in SIZES
    }


def http_latency(url: str, settings: Settings, requests: int) -> dict:
    listeners, items = _listeners_and_items(settings, requests)
    errors = 0
    results: dict = {}
    with httpx.Client(timeout=30) as client:
        seconds, degraded = [], 0
        for listener in listeners:
            started = time.perf_counter()
            response = client.get(f"{url}/v1/home/{listener}")
            seconds.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors += 1
                continue
            degraded += sum(shelf["degraded"] for shelf in response.json()["shelves"])
        results["home"] = _percentiles(seconds[1:])
        results["home_degraded_shelves"] = degraded
        shelf = load_shelves(settings.shelves_file)[0].name
        for size in SIZES:
            body = {"listener_id": listeners[0], "shelf": shelf, "item_ids": items[:size]}
            seconds = []
            for _ in range(max(20, requests // 4)):
                started = time.perf_counter()
                response = client.post(f"{url}/v1/rank", json=body)
                seconds.append(time.perf_counter() - started)
                errors += response.status_code != 200
            results[f"rank_{size}"] = _percentiles(seconds[1:])
    results["errors"] = errors
    return results


def candidate_counts(settings: Settings, listeners: list[str]) -> dict[str, float]:
    """Mean candidates stage 1 gives each shelf, for the benchmark's listeners."""
    ranker = HomeRanker.load(settings)
    requests = pd.DataFrame({"group": range(len(listeners)), "listener_id": listeners})
    inputs = read_candidate_inputs(ranker.reader, requests, ranker.shelves)
    return {
        shelf.name: round(len(generate_candidates(shelf, inputs)) / len(listeners), 1)
        for shelf in ranker.shelves
    }


# --------------------------------------------------------------------------- main


def run(data_dir: Path, requests: int, candidates: int) -> dict:
    if not (data_dir / "feast" / "registry.db").is_file():
        raise SystemExit(f"{data_dir} has no trained state: run `make demo` first")
    workdir = Path(tempfile.mkdtemp(prefix="homerec-bench-"))
    redis_process, port = _start_redis(workdir)
    app_process = None
    try:
        bench_dir, shelves_file = _bench_data_dir(data_dir, workdir, candidates)
        env = {
            "HOMEREC_DATA_DIR": str(bench_dir),
            "HOMEREC_FEATURE_REPO": str(REPO / "feature_repo"),
            "HOMEREC_ONLINE_STORE": "redis",
            "HOMEREC_REDIS_CONNECTION": f"127.0.0.1:{port}",
            "HOMEREC_SHELVES_FILE": str(shelves_file),
            "HOMEREC_SERVE_REFRESH_SECONDS": "0",
        }
        settings = Settings(
            data_dir=bench_dir,
            feature_repo=REPO / "feature_repo",
            online_store="redis",
            redis_connection=f"127.0.0.1:{port}",
            shelves_file=shelves_file,
        )
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress: keep stdout JSON
            apply_definitions(settings)
            materialize(settings, incremental=False)
        setup_seconds = time.perf_counter() - started
        app_process, url = _start_app({**os.environ, **env})
        client = redis.Redis(host="127.0.0.1", port=port)
        listeners, _ = _listeners_and_items(settings, 50)
        return {
            "data_dir": str(data_dir),
            "materialize_seconds": round(setup_seconds, 1),
            "max_candidates_per_shelf": candidates,
            "mean_candidates": candidate_counts(settings, listeners),
            "feature_fetch": feature_fetch(settings, client, repeat=50),
            "rank_in_process_get_online_features": rank_in_process_with_feast(settings, 20),
            "http": http_latency(url, settings, requests),
        }
    finally:
        if app_process is not None:
            app_process.terminate()
            app_process.wait(timeout=30)
        redis_process.terminate()
        redis_process.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run(args.data_dir.resolve(), args.requests, args.candidates)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
