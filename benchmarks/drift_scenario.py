"""Drift end to end with the real commands: serve, log, ``homerec drift``; then a unit bug.

On a copy of a trained data directory (``make demo``'s ``data/`` by default), with a Feast
registry and online store of its own (applied and materialized):

1. ``homerec serve`` (every request's features logged) answers ``/v1/home`` for a sample
   of listeners; on shutdown the log is flushed; ``homerec drift --json`` compares it with
   each production model's training profile.
2. A feature pipeline bug: the listening log is re-imported with ``ms_played`` in the
   wrong unit (×60), the tables rebuilt and fully re-materialized (``homerec world
   import``, ``features build``, ``features materialize --full``); the same traffic is
   served and logged again, and ``homerec drift --json`` runs on the new log.

Prints one JSON object: per run the exit code and, per shelf, the drifted features and
every distance. Only loopback traffic; the server is the script's own child process.

    .venv/bin/python benchmarks/drift_scenario.py [--data-dir data] [--requests 300]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
HOMEREC = str(Path(sys.executable).parent / "homerec")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _homerec(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HOMEREC, *args], env=env, capture_output=True, text=True, cwd=REPO)


def _serve_traffic(env: dict[str, str], listeners: list[str]) -> int:
    """Serve, request every listener's Home page, stop (SIGTERM flushes the log); the
    number of non-200 answers."""
    port = _free_port()
    server = subprocess.Popen([HOMEREC, "serve", "--port", str(port)], env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("homerec serve did not become ready")
            time.sleep(0.2)
        with httpx.Client(timeout=30) as client:
            return sum(client.get(f"{url}/v1/home/{lid}").status_code != 200 for lid in listeners)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def _drift(env: dict[str, str]) -> dict:
    done = _homerec(env, "drift", "--json", "--since", "2000-01-01T00:00:00")
    report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    shelves = {
        name: {
            "drifted": shelf.get("drifted_features"),
            "distances": {
                feature["name"]: round(feature["distance"], 4)
                for feature in shelf.get("features", [])
            },
        }
        for name, shelf in report.get("shelves", {}).items()
    }
    return {"exit_code": done.returncode, "shelves": shelves, "stderr": done.stderr[-600:]}


def _check(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}")


def run(source: Path, requests: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="homerec-drift-"))
    data_dir = workdir / "data"
    shutil.copytree(  # without feast/: the copy gets a registry and online store of its own
        source, data_dir, ignore=shutil.ignore_patterns("feast", "served_features", "drift")
    )
    env = {
        **os.environ,
        "HOMEREC_DATA_DIR": str(data_dir),
        "HOMEREC_FEATURE_REPO": str(REPO / "feature_repo"),
        "HOMEREC_FEATURE_LOG_SAMPLE_RATE": "1.0",
        "HOMEREC_SERVE_REFRESH_SECONDS": "0",
    }
    _check(_homerec(env, "features", "apply"), "features apply")
    _check(_homerec(env, "features", "materialize"), "features materialize")
    world = data_dir / "world"
    listeners = pd.read_parquet(world / "listeners.parquet")["listener_id"].astype(str)
    sample = listeners.sample(min(requests, len(listeners)), random_state=0).tolist()
    result: dict = {"data_dir": str(data_dir), "requests": len(sample)}
    result["serve_errors"] = _serve_traffic(env, sample)
    result["as_trained"] = _drift(env)

    events = pd.read_parquet(world / "events.parquet")
    events["ms_played"] = events["ms_played"] * 60  # the unit bug
    exported = workdir / "export"
    exported.mkdir()
    events.to_parquet(exported / "events.parquet", index=False)
    for name in ("items", "listeners"):
        shutil.copy(world / f"{name}.parquet", exported / f"{name}.parquet")
    _check(
        _homerec(
            env,
            "world",
            "import",
            "--events",
            str(exported / "events.parquet"),
            "--items",
            str(exported / "items.parquet"),
            "--listeners",
            str(exported / "listeners.parquet"),
        ),
        "world import",
    )
    _check(_homerec(env, "features", "build"), "features build")
    _check(_homerec(env, "features", "materialize", "--full"), "features materialize")
    env["HOMEREC_FEATURE_LOG_DIR"] = str(workdir / "served_after_bug")
    result["serve_errors"] += _serve_traffic(env, sample)
    result["after_unit_bug"] = _drift(env)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(run(args.data_dir.resolve(), args.requests), indent=1))


if __name__ == "__main__":
    main()
