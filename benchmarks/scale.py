"""The offline pipeline against world size: time and peak memory of each stage.

    .venv/bin/python benchmarks/scale.py [--listeners 3000,30000,300000] [--full]
        [--days 75] [--stages world,features,apply,materialize,training_sets] [--json]

For each size, in a fresh temporary data directory, runs every stage in a process of its
own (so a stage's peak RSS is its own): world generate, features build, feast apply,
feast materialize (SQLite online store) and each shelf's training set. Prints the seconds
and peak RSS of each stage, the rows of each feature table, and each stage's growth
exponent: the slope of log seconds against log listeners (1 = linear). ``--full`` adds a
world of 1,000,000 listeners. Only the embedded engine (DuckDB + SQLite) exists yet.
"""

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

STAGES = ("world", "features", "apply", "materialize", "training_sets")
FULL_LISTENERS = 1_000_000


def run_stage(stage: str, data_dir: Path, listeners: int, days: int) -> dict:
    """Run one stage in this process; its seconds and this process's peak RSS (MiB)."""
    from training.core.settings import Settings

    settings = Settings(data_dir=data_dir)
    started = time.perf_counter()
    result: dict = {}
    if stage == "world":
        from training.core.constants import DEFAULT_SEED
        from training.world.behaviour import WorldConfig
        from training.world.generator import generate_world

        meta = generate_world(WorldConfig(listeners, days, DEFAULT_SEED), settings.world_dir)
        result["events"] = meta["counts"]["events"]
    elif stage == "features":
        from training.features.tables import build_features

        result["rows"] = build_features(settings.world_dir, settings.features_dir)
    elif stage == "apply":
        from training.features.store import apply_definitions

        apply_definitions(settings)
    elif stage == "materialize":
        from training.features.store import materialize

        materialize(settings, incremental=False)
    else:
        from training.core.shelves import load_shelves
        from training.features.store import open_store
        from training.training_sets import build_training_set, shelf_split

        store = open_store(settings)
        result["shelves"] = {}
        for shelf in load_shelves(settings.shelves_file):
            begun = time.perf_counter()
            training_set = build_training_set(
                store,
                shelf,
                settings.world_dir,
                shelf_split(settings, shelf),
                settings.max_requests_per_snapshot,
            )
            result["shelves"][shelf.name] = {
                "seconds": round(time.perf_counter() - begun, 1),
                "rows": {window: len(rows) for window, rows in training_set.rows.items()},
            }
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def run_size(listeners: int, days: int, stages: list[str]) -> dict:
    """Every stage for one world size, each in a child process."""
    with tempfile.TemporaryDirectory(prefix="homerec-scale-") as workdir:
        data_dir = Path(workdir) / "data"
        results = {}
        for stage in stages:
            child = subprocess.run(
                [sys.executable, __file__, "--stage", stage, "--data-dir", str(data_dir)]
                + ["--listeners", str(listeners), "--days", str(days)],
                capture_output=True,
                text=True,
            )
            if child.returncode != 0:
                raise RuntimeError(f"{stage} at {listeners} listeners failed:\n{child.stderr}")
            results[stage] = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"{listeners} listeners: {stage} {results[stage]['seconds']} s", file=sys.stderr)
    return results


def growth_exponents(by_size: dict[int, dict]) -> dict[str, float | None]:
    """Least-squares slope of log seconds against log listeners, per stage."""
    exponents: dict[str, float | None] = {}
    sizes = sorted(by_size)
    for stage in by_size[sizes[0]]:
        points = [
            (math.log(n), math.log(max(by_size[n][stage]["seconds"], 0.1)))
            for n in sizes
            if stage in by_size[n]
        ]
        if len(points) < 2:
            exponents[stage] = None
            continue
        mean_x = sum(x for x, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
            (x - mean_x) ** 2 for x, _ in points
        )
        exponents[stage] = round(slope, 2)
    return exponents


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", default="3000,30000,300000")
    parser.add_argument("--full", action="store_true", help="Add 1,000,000 listeners.")
    parser.add_argument("--days", type=int, default=75)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:  # a child: one stage, its figures as the last line of stdout
        from training.cli.output import configure_output

        configure_output(verbose=False)
        listeners = int(args.listeners)
        print(json.dumps(run_stage(args.stage, args.data_dir, listeners, args.days)))
        return 0
    sizes = [int(n) for n in args.listeners.split(",")] + ([FULL_LISTENERS] if args.full else [])
    stages = [stage for stage in args.stages.split(",") if stage]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    by_size = {n: run_size(n, args.days, stages) for n in sizes}
    result = {
        "engine": "embedded",
        "days": args.days,
        "sizes": {str(n): by_size[n] for n in sizes},
        "growth_exponents": growth_exponents(by_size),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for n in sizes:
        for stage, figures in by_size[n].items():
            print(
                f"{n:>9} listeners  {stage:<14} {figures['seconds']:>8.1f} s   "
                f"peak RSS {figures['peak_rss_mb']:>6} MiB"
            )
    print("growth exponents:", result["growth_exponents"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
