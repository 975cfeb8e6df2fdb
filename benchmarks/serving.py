"""Serving benchmark: the Home ranker on a real redis-server, side by side in one run.

Starts ``redis-server`` on a free loopback port, materializes a trained data directory
(``make demo``'s ``data/`` by default) into it, and measures, all on 127.0.0.1:

* **candidate feature fetch** for one shelf's FeatureService over N = 100/300/500
  (listener, item) rows: serving's reader as a Home page uses it (a new page each time:
  entity snapshot, the listener and every pair in one Redis pipeline, decoded into arrays,
  on-demand features computed), ``FeatureStore.get_online_features`` (the Feast SDK),
  Feast's own feature server (``feast serve``'s ``POST /get-online-features``, started on
  the same registry and Redis; the answer decoded) and a raw pipelined ``HGETALL`` of the
  same Redis keys (no decoding);
* **/v1/rank** with 100/300/500 items over HTTP;
* **/v1/home** over HTTP, one client, every shelf capped at ``--candidates`` (300);
* **throughput**: ``--clients`` (8) closed-loop clients asking for Home pages for
  ``--duration`` seconds (30, at most 60), against ``homerec serve --workers 2``.

The app runs as ``homerec serve --workers 2`` in its own processes (settings from
``HOMEREC_*``); the feature server as Feast's ``start_server`` (what ``feast serve``
calls) on the benchmark's store. Every process it starts is stopped at the end, also on
an error. ``--json`` prints one JSON object: the headline figures at the top level
(``home_p50_ms``, ``home_p99_ms``, ``fetch_p50_ms``, ``raw_p50_ms``, ``feast_sdk_p50_ms``,
``feast_server_p50_ms``, ``fetch_vs_raw``, ``feast_vs_fetch``, ``throughput_pages_per_s``,
``throughput_p99_ms``, ``errors``) with ``targets`` and ``met``, then the detail.
Targets (2-core machine, client and server on it): /v1/home p99 ≤ 30 ms; fetch ≤ 2× raw;
the Feast SDK ≥ 10× fetch; ≥ 150 pages/s at p99 ≤ 60 ms; zero errors (non-200 answers
and exceptions, every phase).

    python benchmarks/serving.py [--data-dir data] [--requests 200] [--duration 30] [--json]
"""

import argparse
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

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
from training.features.store import (
    OnlineReader,
    apply_definitions,
    materialize,
    online_as_of,
    open_store,
    request_fields,
)

REPO = Path(__file__).resolve().parent.parent
SIZES = (100, 300, 500)
HEADLINE_ROWS = 300
"""The fetch size of the headline figures (a shelf's candidates)."""
LINKED = ("world", "features", "registry")
"""Read-only parts of the data directory the benchmark links instead of copying."""
WORKERS = 2
"""``homerec serve --workers`` of the app under load."""
MAX_DURATION = 60.0
"""Longest throughput run ``--duration`` may ask for (seconds)."""
STARTUP_SECONDS = 180.0
"""How long the app and the feature server may take to answer."""
TARGETS: dict[str, dict[str, float]] = {
    "home_p99_ms": {"max": 30},
    "fetch_vs_raw": {"max": 2},
    "feast_vs_fetch": {"min": 10},
    "throughput_pages_per_s": {"min": 150},
    "throughput_p99_ms": {"max": 60},
    "errors": {"max": 0},
}
"""Each headline figure's bound (``max``: at most, ``min``: at least)."""
FEATURE_SERVER = """
import sys
from feast.feature_server import start_server
from training.core.settings import Settings
from training.features.store import open_store

start_server(
    open_store(Settings()), "127.0.0.1", int(sys.argv[1]), no_access_log=True, workers=1,
    worker_connections=1000, max_requests=0, max_requests_jitter=0, keep_alive_timeout=30,
    registry_ttl_sec=600, tls_key_path="", tls_cert_path="", metrics=False,
)
"""
"""What ``feast serve`` runs, on the store ``HOMEREC_*`` names (the benchmark's)."""


def _user_error(message: str) -> NoReturn:
    """A bad option or data directory: one line on stderr, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


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


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 2) if denominator > 0 else None


# --------------------------------------------------------------------------- processes


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to a process this benchmark started (uvicorn's and gunicorn's supervisors
    stop their workers); after 30 s SIGKILL to its session, which it leads (it was
    started with ``start_new_session``), so no worker outlives it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextlib.contextmanager
def _started(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """``command`` in a session of its own, its output to ``log``; stopped when the block
    ends (also on error)."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        _stop(process)


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1] if lines else "(no output)"


@contextlib.contextmanager
def _redis(workdir: Path) -> Iterator[int]:
    """A redis-server on a free loopback port, without persistence; yields the port."""
    port = _free_port()
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    command += ["--appendonly", "no", "--dir", str(workdir)]
    with _started(command, workdir / "redis.log") as process:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None:
                    raise RuntimeError("redis-server exited at start") from None
                time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        yield port


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if ready():
                return
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited before it was ready: {_last_line(log)}")
        time.sleep(0.2)
    raise RuntimeError(f"{log.stem} was not ready in {STARTUP_SECONDS:.0f} s: {_last_line(log)}")


@dataclass
class App:
    """``homerec serve --workers N`` on loopback, once every worker answered /ready."""

    url: str
    workers: dict[int, int] = field(default_factory=dict)
    """Each worker's pid and the bytes of its entity snapshot (from /ready)."""


@contextlib.contextmanager
def _app(env: dict[str, str], workers: int, log: Path) -> Iterator[App]:
    port = _free_port()
    command = [sys.executable, "-c", "from training.cli.main import run; run()"]
    command += ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    app = App(f"http://127.0.0.1:{port}")

    def every_worker_ready() -> bool:
        # A new connection each time: the kernel spreads them over the workers.
        response = httpx.get(f"{app.url}/ready", timeout=5)
        if response.status_code == 200:
            body = response.json()
            app.workers[body["worker_pid"]] = body["snapshot_bytes"]
        return len(app.workers) >= workers

    with _started(command, log, env) as process:
        _wait_until(every_worker_ready, process, log)
        yield app


@contextlib.contextmanager
def _feature_server(env: dict[str, str], log: Path) -> Iterator[str]:
    """Feast's feature server (``feast serve``: gunicorn, one uvicorn worker) on the
    benchmark's registry and Redis; yields its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-c", FEATURE_SERVER, str(port)]
    with _started(command, log, env) as process:
        _wait_until(lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200, process, log)
        yield url


# --------------------------------------------------------------------------- setup


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


def _environment(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings`` as ``HOMEREC_*`` (for subprocesses)."""
    env = dict(os.environ)
    for name, value in settings.as_environment().items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


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


def _server_request(store, service, listener: str, items: list[str]) -> dict[str, Any]:
    """The body of ``POST /get-online-features`` for the rows ``OnlineReader`` reads:
    (listener, item) pairs, the on-demand views' request fields at the store's read time."""
    read_time = online_as_of(store).isoformat()
    entities: dict[str, list[Any]] = {"listener_id": [listener] * len(items), "item_id": items}
    for name in request_fields(store, service):
        entities[name] = [read_time] * len(items)
    return {"feature_service": service.name, "entities": entities}


def feature_fetch(settings: Settings, client: redis.Redis, server_url: str, repeat: int) -> dict:
    """p50/p99 of one shelf's candidate features through the service's reader, Feast's
    SDK, Feast's feature server at ``server_url`` and raw Redis, by row count."""
    store = open_store(settings)
    fast = FastOnlineReader(store, EntitySnapshot.load(store))
    feast = OnlineReader(store)
    service = store.get_feature_service(load_shelves(settings.shelves_file)[0].feature_service)
    listeners, items = _listeners_and_items(settings, 1)
    results, errors = {}, 0
    with httpx.Client(timeout=60) as http:
        for size in SIZES:
            rows = pd.DataFrame({"listener_id": listeners[0], "item_id": items[:size]})
            keys = _raw_keys(store, listeners[0], items[:size])
            body = _server_request(store, service, listeners[0], items[:size])

            def raw(keys: list[bytes] = keys) -> None:
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.hgetall(key)
                pipe.execute()

            def served(body: dict[str, Any] = body) -> None:
                nonlocal errors
                response = http.post(f"{server_url}/get-online-features", json=body)
                errors += response.status_code != 200
                response.json()

            entities = {key: rows[key].tolist() for key in rows.columns}

            def fetch(entities: dict[str, list] = entities) -> None:
                fast.page().columns(service, entities)  # a new page: nothing read before

            a = _percentiles(_timed(fetch, repeat))
            b = _percentiles(
                _timed(lambda rows=rows: feast.read(service, rows), max(5, repeat // 4))
            )
            c = _percentiles(_timed(raw, repeat))
            d = _percentiles(_timed(served, max(5, repeat // 4)))
            row: dict[str, Any] = {
                "service": a,
                "get_online_features": b,
                "feature_server": d,
                "raw_redis_pipeline": c,
            }
            row["service_over_raw_p50"] = _ratio(a["p50_ms"], c["p50_ms"])
            row["feast_over_service_p50"] = _ratio(b["p50_ms"], a["p50_ms"])
            results[str(size)] = row
    return {"feature_service": service.name, "rows": results, "errors": errors}


def http_latency(url: str, settings: Settings, requests: int) -> dict:
    """One client: /v1/home for ``requests`` listeners, then /v1/rank by item count."""
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


@dataclass
class _Load:
    """What the closed-loop clients saw (appended to from their threads)."""

    seconds: list[float] = field(default_factory=list)
    errors: int = 0
    degraded_pages: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client_loop(url: str, listeners: list[str], stop_at: float, load: _Load) -> None:
    """Home pages, one after another, until ``stop_at`` (a closed loop: a new request
    as soon as the last one is answered)."""
    with httpx.Client(timeout=30) as client:
        for index in itertools.count():
            if time.perf_counter() >= stop_at:
                return
            listener = listeners[index % len(listeners)]
            started = time.perf_counter()
            try:
                response = client.get(f"{url}/v1/home/{listener}")
                ok = response.status_code == 200
                degraded = ok and b'"degraded":true' in response.content
            except Exception:  # counted as an error; the load goes on
                ok, degraded = False, False
            elapsed = time.perf_counter() - started
            with load.lock:
                load.seconds.append(elapsed)
                load.errors += not ok
                load.degraded_pages += degraded


def throughput(url: str, settings: Settings, clients: int, duration: float) -> dict:
    """``clients`` closed-loop clients for ``duration`` seconds: pages answered 200 per
    second of wall time, and the latency of every request."""
    listeners, _ = _listeners_and_items(settings, 10**9)
    load = _Load()
    started = time.perf_counter()
    stop_at = started + duration
    threads = [
        threading.Thread(
            target=_client_loop,
            args=(url, listeners[index::clients], stop_at, load),
            name=f"client-{index}",
        )
        for index in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    pages = len(load.seconds) - load.errors
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "pages": pages,
        "pages_per_s": round(pages / wall, 1),
        "latency": _percentiles(load.seconds) if load.seconds else None,
        "degraded_pages": load.degraded_pages,
        "errors": load.errors,
    }


def candidate_counts(settings: Settings, listeners: list[str]) -> dict[str, float]:
    """Mean candidates stage 1 gives each shelf, for the benchmark's listeners."""
    ranker = HomeRanker.load(settings)
    requests = pd.DataFrame({"group": range(len(listeners)), "listener_id": listeners})
    inputs = read_candidate_inputs(ranker.reader, requests, ranker.shelves)
    return {
        shelf.name: round(len(generate_candidates(shelf, inputs)) / len(listeners), 1)
        for shelf in ranker.shelves
    }


# --------------------------------------------------------------------------- report


def headline(detail: dict) -> dict[str, Any]:
    """The figures the targets are about, from the detail, with ``targets`` and ``met``."""
    rows = detail["feature_fetch"]["rows"][str(HEADLINE_ROWS)]
    load = detail["throughput"]
    fetch = rows["service"]["p50_ms"]
    feast_sdk = rows["get_online_features"]["p50_ms"]
    feast_server = rows["feature_server"]["p50_ms"]
    figures: dict[str, Any] = {
        "home_p50_ms": detail["http"]["home"]["p50_ms"],
        "home_p99_ms": detail["http"]["home"]["p99_ms"],
        "fetch_p50_ms": fetch,
        "raw_p50_ms": rows["raw_redis_pipeline"]["p50_ms"],
        "feast_sdk_p50_ms": feast_sdk,
        "feast_server_p50_ms": feast_server,
        "fetch_vs_raw": _ratio(fetch, rows["raw_redis_pipeline"]["p50_ms"]),
        "feast_vs_fetch": _ratio(feast_sdk, fetch),
        "feast_server_vs_fetch": _ratio(feast_server, fetch),
        "throughput_pages_per_s": load["pages_per_s"],
        "throughput_p99_ms": load["latency"]["p99_ms"] if load["latency"] else None,
        "errors": detail["http"]["errors"] + load["errors"] + detail["feature_fetch"]["errors"],
    }
    figures["targets"] = TARGETS
    figures["met"] = {name: _meets(figures[name], bound) for name, bound in TARGETS.items()}
    return figures


def _meets(value: float | None, bound: dict[str, float]) -> bool:
    if value is None:
        return False
    return value <= bound.get("max", float("inf")) and value >= bound.get("min", float("-inf"))


# --------------------------------------------------------------------------- main


def _settings(bench_dir: Path, shelves_file: Path, redis_port: int) -> Settings:
    return Settings(
        data_dir=bench_dir,
        feature_repo=REPO / "feature_repo",
        online_store="redis",
        redis_connection=f"127.0.0.1:{redis_port}",
        shelves_file=shelves_file,
        serve_refresh_seconds=0,
    )


def _measure(settings: Settings, redis_port: int, args: argparse.Namespace, logs: Path) -> dict:
    """Every workload, in order, each subprocess up only for its own phase (its output in
    ``logs``)."""
    env = _environment(settings)
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    listeners, _ = _listeners_and_items(settings, 50)
    detail: dict[str, Any] = {"mean_candidates": candidate_counts(settings, listeners)}
    with _feature_server(env, logs / "feature-server.log") as server_url:
        detail["feature_fetch"] = feature_fetch(settings, client, server_url, args.repeat)
    with _app(env, WORKERS, logs / "homerec-serve.log") as app:
        detail["workers"] = {
            "count": WORKERS,
            "snapshot_bytes": {str(pid): size for pid, size in app.workers.items()},
        }
        detail["http"] = http_latency(app.url, settings, args.requests)
        detail["throughput"] = throughput(app.url, settings, args.clients, args.duration)
    return detail


def run(data_dir: Path, args: argparse.Namespace) -> dict:
    if not (data_dir / "feast" / "registry.db").is_file():
        _user_error(f"{data_dir} has no trained state: run `make demo` first")
    workdir = Path(tempfile.mkdtemp(prefix="homerec-bench-"))
    try:
        with _redis(workdir) as port:
            bench_dir, shelves_file = _bench_data_dir(data_dir, workdir, args.candidates)
            settings = _settings(bench_dir, shelves_file, port)
            started = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress: stdout is JSON
                apply_definitions(settings)
                materialize(settings, incremental=False)
            setup_seconds = time.perf_counter() - started
            detail = _measure(settings, port, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        **headline(detail),
        "data_dir": str(data_dir),
        "materialize_seconds": round(setup_seconds, 1),
        "max_candidates_per_shelf": args.candidates,
        **detail,
    }


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--requests", type=int, default=200, help="one-client /v1/home pages")
    parser.add_argument("--candidates", type=int, default=300, help="cap of every shelf")
    parser.add_argument(
        "--repeat", type=int, default=50, help="timed fetches per size (Feast's: a quarter)"
    )
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients")
    parser.add_argument(
        "--duration", type=float, default=30.0, help=f"throughput seconds (≤ {MAX_DURATION:.0f})"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not 0 < args.duration <= MAX_DURATION:
        _user_error(f"--duration must be in (0, {MAX_DURATION:.0f}] seconds, got {args.duration}")
    for name in ("requests", "candidates", "repeat", "clients"):
        if getattr(args, name) < 1:
            _user_error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def main() -> None:
    args = _arguments()
    logging.basicConfig(level=logging.WARNING)
    result = run(args.data_dir.resolve(), args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
