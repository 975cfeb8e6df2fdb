"""Test NDCG against training rows: how many training requests a shelf's ranker needs.

    .venv/bin/python benchmarks/training_rows.py [--data-dir data] [--shelf NAME]...
        [--strides 1,2,3,6] [--json]

Reads each shelf's saved training set (``homerec train`` writes them), keeps every
``stride``-th train snapshot (stride 1: all of them), fits the shelf's ranker with the
default parameters on those rows and scores the held-out test window of the shelf's
audience. Prints, per shelf and stride: train rows, fit seconds, test NDCG@k and the
paired bootstrap interval (clustered by listener) of its difference from stride 1.
Adjacent daily snapshots of one listener are highly correlated, so fewer of them can
teach as much: this measures whether they do.
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import pandas as pd

from evaluation.metrics import ndcg_at_k, paired_bootstrap_ci
from training.candidates import audience_rows
from training.cli.output import configure_output
from training.core.layout import training_set_dir
from training.core.settings import Settings
from training.core.shelves import Shelf, load_shelves
from training.models.fitting import fit_ranker
from training.training_sets import TrainingSet, load_training_set


def every_nth_snapshot(train: pd.DataFrame, stride: int) -> pd.DataFrame:
    """The rows of every ``stride``-th train snapshot, the latest always kept."""
    times = np.sort(train["event_timestamp"].unique())[::-1][::stride]
    return train[train["event_timestamp"].isin(times)].reset_index(drop=True)


def per_group_ndcg(shelf: Shelf, training_set: TrainingSet, stride: int) -> dict:
    """Fit on every ``stride``-th train snapshot; NDCG@k per test group of the audience."""
    train = every_nth_snapshot(training_set.rows["train"], stride)
    subset = dataclasses.replace(training_set, rows={**training_set.rows, "train": train})
    started = time.perf_counter()
    ranker = fit_ranker(subset)
    seconds = time.perf_counter() - started
    test = audience_rows(shelf, training_set.rows["test"])
    ndcg = ndcg_at_k(test["group"], test["label"], ranker.predict(test), shelf.k)
    listeners = test.drop_duplicates("group").sort_values("group")["listener_id"].to_numpy()
    return {
        "train_rows": len(train),
        "train_requests": int(train["group"].nunique()),
        "fit_seconds": round(seconds, 1),
        "rounds": ranker.best_iteration_ + 1,
        "ndcg": ndcg,
        "listeners": listeners,
    }


def shelf_curve(shelf: Shelf, training_set: TrainingSet, strides: list[int]) -> dict:
    runs = {stride: per_group_ndcg(shelf, training_set, stride) for stride in strides}
    full = runs[strides[0]]
    result = {}
    for stride, run in runs.items():
        interval = paired_bootstrap_ci(run["ndcg"], full["ndcg"], clusters=full["listeners"])
        result[f"stride_{stride}"] = {
            key: value for key, value in run.items() if key not in ("ndcg", "listeners")
        } | {
            f"test_ndcg@{shelf.k}": round(float(run["ndcg"].mean()), 4),
            f"diff_vs_stride_{strides[0]}": {k: round(v, 4) for k, v in interval.items()},
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--shelf", action="append", help="Shelves to measure (default: all).")
    parser.add_argument("--strides", default="1,2,3,6", help="Snapshot strides, first = full.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()
    configure_output(verbose=False)
    settings = Settings(data_dir=args.data_dir)
    strides = [int(s) for s in args.strides.split(",")]
    shelves = [s for s in load_shelves(settings.shelves_file) if s.name in (args.shelf or [s.name])]
    result = {
        shelf.name: shelf_curve(
            shelf, load_training_set(training_set_dir(settings, shelf.name)), strides
        )
        for shelf in shelves
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
