"""benchmarks/serving.py end to end, in a tiny run on the trained test world: it starts
its redis-server, Feast's feature server and ``homerec serve --workers 2``, prints one
JSON object with the headline figures at the top level and every target judged, and no
request fails. (Figures are not asserted: this guards the benchmark, not the speed.)"""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, TrainedWorld, require

pytestmark = pytest.mark.redis

HEADLINE = {
    "home_p50_ms",
    "home_p99_ms",
    "fetch_p50_ms",
    "raw_p50_ms",
    "feast_sdk_p50_ms",
    "feast_server_p50_ms",
    "fetch_vs_raw",
    "feast_vs_fetch",
    "throughput_pages_per_s",
    "throughput_p99_ms",
    "errors",
    "targets",
    "met",
}


def test_the_serving_benchmark_prints_its_headline_figures(trained_world: TrainedWorld) -> None:
    require("redis-server")
    done = subprocess.run(
        [sys.executable, "benchmarks/serving.py", "--json"]
        + ["--data-dir", str(trained_world.settings.data_dir), "--requests", "5"]
        + ["--repeat", "5", "--clients", "2", "--duration", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert HEADLINE <= result.keys()
    assert set(result["met"]) == set(result["targets"])
    assert all(isinstance(value, bool) for value in result["met"].values())
    assert result["errors"] == 0 and result["met"]["errors"] is True
    assert result["throughput_pages_per_s"] > 0
    assert len(result["workers"]["snapshot_bytes"]) == 2


def test_the_serving_benchmark_refuses_a_duration_over_a_minute() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/serving.py", "--duration", "61"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --duration must be in (0, 60] seconds, got 61.0"
    ]
