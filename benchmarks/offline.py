"""The offline pipeline's profile: ``homerec demo``'s steps, timed, with peak memory.

    .venv/bin/python benchmarks/offline.py [--listeners 3000] [--days 75] [--traffic 1000]
        [--profile FILE] [--top 25] [--json]

Runs the demo's own steps (world -> drift, no install) in a fresh temporary data
directory and prints each step's wall time and the process's peak RSS when it ended,
plus each shelf's training-set and fit time. ``--profile FILE`` also runs it under
cProfile, writes the stats to FILE (``python -m pstats FILE``) and prints the functions
with the most cumulative time: measure before changing anything.
"""

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from training.cli.output import configure_output
from training.core.constants import (
    DEFAULT_DAYS,
    DEFAULT_DEMO_TRAFFIC,
    DEFAULT_LISTENERS,
    DEFAULT_SEED,
)
from training.core.settings import Settings
from training.features.pipeline import StepTimer
from training.jobs.demo import run_demo
from training.world.behaviour import WorldConfig


def run(listeners: int, days: int, traffic: int, profile: Path | None, top: int) -> dict:
    """The demo in a fresh data directory: step seconds and peak RSS (MiB) per step."""
    lines: list[str] = []
    timer = StepTimer()
    profiler = cProfile.Profile() if profile else None
    with tempfile.TemporaryDirectory(prefix="homerec-offline-") as workdir:
        settings = Settings(data_dir=Path(workdir) / "data")
        config = WorldConfig(listeners=listeners, days=days, seed=DEFAULT_SEED)
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        run_demo(settings, config, traffic, lines.append, timer)
        if profiler:
            profiler.disable()
        total = time.perf_counter() - started
    result = {
        "world": {"listeners": listeners, "days": days, "traffic": traffic},
        "total_seconds": round(total, 1),
        "steps": {
            name: {"seconds": round(seconds, 1), "peak_rss_mb": round(timer.peak_rss_mb[name])}
            for name, seconds in timer.seconds.items()
        },
        "output": lines,
    }
    if profiler and profile:
        profiler.dump_stats(profile)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
        result["profile_top"] = text.getvalue().splitlines()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=DEFAULT_LISTENERS)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--traffic", type=int, default=DEFAULT_DEMO_TRAFFIC)
    parser.add_argument("--profile", type=Path, help="Also run under cProfile; stats here.")
    parser.add_argument("--top", type=int, default=25, help="Functions shown with --profile.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()
    configure_output(verbose=False)
    result = run(args.listeners, args.days, args.traffic, args.profile, args.top)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for name, step in result["steps"].items():
        print(f"{name:<18} {step['seconds']:>7.1f} s   peak RSS {step['peak_rss_mb']:>6} MiB")
    print(f"{'total':<18} {result['total_seconds']:>7.1f} s")
    print("\n".join(result.get("profile_top", [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
