"""Test NDCG against training rows: how many training rows a shelf's ranker needs.

    .venv/bin/python benchmarks/training_rows.py [--data-dir data] [--shelf NAME]...
        [--strides 1,3] [--negatives all,25] [--json]

Needs a data directory whose features are built and applied (``homerec demo`` leaves
one). For each shelf it builds the full training set (every daily train snapshot, every
candidate), then for each combination of a snapshot ``stride`` (every stride-th train
snapshot back from the latest, as ``train_every_days`` does) and a number of
``negatives`` kept per train request (as ``train_negatives`` does; ``all``: no sampling)
fits the shelf's ranker with its default parameters and scores the held-out test window
of the shelf's audience. Prints per shelf and variant: train rows, fit seconds, test
NDCG@k and the paired bootstrap interval (clustered by listener) of its difference from
the full set. Validation and test rows are the same for every variant.
"""

import argparse
import dataclasses
import itertools
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
from training.core.settings import Settings
from training.core.shelves import Shelf, select_shelves
from training.features.store import open_store
from training.models.fitting import fit_ranker
from training.training_sets import (
    TrainingSet,
    build_training_set,
    sample_negatives,
    shelf_split,
)


def every_nth_snapshot(train: pd.DataFrame, stride: int) -> pd.DataFrame:
    """The rows of every ``stride``-th train snapshot back from the latest."""
    times = np.sort(train["event_timestamp"].unique())[::-1][::stride]
    return train[train["event_timestamp"].isin(times)].reset_index(drop=True)


def fitted_variant(shelf: Shelf, full: TrainingSet, stride: int, negatives: int | None) -> dict:
    """Fit on the variant's train rows; NDCG@k of each test request of the audience."""
    train = every_nth_snapshot(full.rows["train"], stride)
    if negatives is not None:
        train = train[sample_negatives(train, negatives)].reset_index(drop=True)
    started = time.perf_counter()
    ranker = fit_ranker(dataclasses.replace(full, rows={**full.rows, "train": train}))
    seconds = time.perf_counter() - started
    test = audience_rows(shelf, full.rows["test"])
    return {
        "train_rows": len(train),
        "train_requests": int(train["group"].nunique()),
        "fit_seconds": round(seconds, 1),
        "rounds": ranker.best_iteration_ + 1,
        "ndcg": ndcg_at_k(test["group"], test["label"], ranker.predict(test), shelf.k),
        "listeners": test.drop_duplicates("group").sort_values("group")["listener_id"].to_numpy(),
    }


def shelf_curve(
    settings: Settings, shelf: Shelf, strides: list[int], negatives: list[int | None]
) -> dict:
    every_row = shelf.model_copy(update={"train_every_days": 1, "train_negatives": None})
    started = time.perf_counter()
    full = build_training_set(
        open_store(settings),
        every_row,
        settings.world_dir,
        shelf_split(settings, every_row),
        settings.max_requests_per_snapshot,
    )
    result: dict = {"full_set_seconds": round(time.perf_counter() - started, 1)}
    reference = fitted_variant(shelf, full, 1, None)
    for stride, kept in itertools.product(strides, negatives):
        run = (
            reference if (stride, kept) == (1, None) else fitted_variant(shelf, full, stride, kept)
        )
        interval = paired_bootstrap_ci(run["ndcg"], reference["ndcg"], clusters=run["listeners"])
        result[f"stride {stride}, negatives {kept or 'all'}"] = {
            key: value for key, value in run.items() if key not in ("ndcg", "listeners")
        } | {
            f"test_ndcg@{shelf.k}": round(float(run["ndcg"].mean()), 4),
            "diff_vs_full": {name: round(value, 4) for name, value in interval.items()},
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--shelf", action="append", help="Shelves to measure (default: all).")
    parser.add_argument("--strides", default="1,3", help="Train snapshot strides.")
    parser.add_argument("--negatives", default="all,25", help="Negatives per train request.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()
    configure_output(verbose=False)
    settings = Settings(data_dir=args.data_dir)
    strides = [int(value) for value in args.strides.split(",")]
    negatives = [None if v == "all" else int(v) for v in args.negatives.split(",")]
    result = {
        shelf.name: shelf_curve(settings, shelf, strides, negatives)
        for shelf in select_shelves(settings, args.shelf)
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
