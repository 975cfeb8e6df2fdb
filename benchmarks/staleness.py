"""Stale vs retrained NDCG over simulated days (the retraining lesson, measured).

Generates a world (or uses ``--data-dir`` with features built), then moves the as-of date
forward in steps: the stale model is trained once at the first date, the retrained one
at every date; both are scored on each date's held-out test window
(:mod:`evaluation.staleness`). Prints a table, or one JSON object with ``--json``.

    .venv/bin/python benchmarks/staleness.py [--listeners 1500] [--days 84] [--json]
"""

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from evaluation.staleness import staleness_study
from training.core.settings import Settings
from training.features.pipeline import prepare_features
from training.features.store import world_window
from training.world.behaviour import WorldConfig
from training.world.generator import generate_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, help="a data dir with features built")
    parser.add_argument("--listeners", type=int, default=1500)
    parser.add_argument("--days", type=int, default=84)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--first-day", type=int, default=49, help="first as-of, days in")
    parser.add_argument("--step-days", type=int, default=7)
    parser.add_argument("--shelf", action="append", help="only this shelf (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    if args.data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="homerec-staleness-")) / "data"
        settings = Settings(data_dir=data_dir, feature_repo=REPO / "feature_repo")
        generate_world(
            WorldConfig(listeners=args.listeners, days=args.days, seed=args.seed),
            settings.world_dir,
        )
        with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress: keep stdout JSON
            prepare_features(settings)
    else:
        settings = Settings(data_dir=args.data_dir, feature_repo=REPO / "feature_repo")
    start, end = world_window(settings)
    dates = []
    as_of = start + timedelta(days=args.first_day)
    while as_of <= end:
        dates.append(as_of)
        as_of += timedelta(days=args.step_days)
    rows = [row.to_dict() for row in staleness_study(settings, dates, args.shelf)]
    result = {
        "data_dir": str(settings.data_dir),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'shelf':22} {'as of':12} {'groups':>6} {'stale':>7} {'retrained':>9} {'heuristic':>9}")
    for row in rows:
        print(
            f"{row['shelf']:22} {row['as_of'][:10]:12} {row['test_groups']:>6} "
            f"{row['stale']:7.4f} {row['retrained']:9.4f} {row['baseline']:9.4f}"
        )
    print(f"({result['seconds']} s; data in {result['data_dir']})")


if __name__ == "__main__":
    main()
