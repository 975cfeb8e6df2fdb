"""Stage 2 training: one XGBoost ranker per shelf from its training set, saved with its contract.

Models live in ``<data_dir>/models/<shelf>/`` (model.ubj + ranker.json): the folder serving
loads from until a model registry takes over.
"""

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureStore

from evaluation.metrics import ndcg_at_k
from training.feature_store import open_store, world_window
from training.rankers import HeuristicRanker, Ranker, ShelfRanker, save_ranker
from training.settings import Settings
from training.shelves import Shelf, load_shelves
from training.training_sets import (
    TrainingSet,
    build_training_set,
    save_training_set,
    time_split,
)

logger = logging.getLogger(__name__)


def training_set_dir(settings: Settings, shelf: str) -> Path:
    return settings.data_dir / "training_sets" / shelf


def model_dir(settings: Settings, shelf: str) -> Path:
    return settings.data_dir / "models" / shelf


def baseline_ranker(shelf: Shelf) -> HeuristicRanker:
    """The heuristic the shelf used before ML, as declared in its shelf file entry."""
    return HeuristicRanker(weights=shelf.baseline.weights, name=shelf.baseline.name)


def _xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    return frame, frame["label"].to_numpy(), frame["group"].to_numpy()


def fit_ranker(training_set: TrainingSet, seed: int = 0) -> ShelfRanker:
    """Fit on the train window with early stopping on the (time-later) validation window."""
    ranker = ShelfRanker(feature_names=training_set.feature_names, seed=seed)
    return ranker.fit(*_xy(training_set.rows["train"]), eval_set=_xy(training_set.rows["valid"]))


def validation_ndcg(ranker: Ranker, frame: pd.DataFrame, k: int) -> float:
    return float(ndcg_at_k(frame["group"], frame["label"], ranker.predict(frame), k).mean())


@dataclass(frozen=True)
class TrainedShelf:
    shelf: str
    model_dir: Path
    sha256: str
    seconds: dict[str, float]
    metadata: dict[str, Any]


def train_shelf(settings: Settings, store: FeatureStore, shelf: Shelf) -> TrainedShelf:
    """Training set -> ranker -> saved model with its feature contract and metrics."""
    start, end = world_window(settings)
    split = time_split(pd.Timestamp(start), pd.Timestamp(end), shelf.label.horizon_days, settings)
    started = time.perf_counter()
    training_set = build_training_set(
        store, shelf, settings.world_dir, split, settings.max_requests_per_snapshot
    )
    save_training_set(training_set, training_set_dir(settings, shelf.name))
    built = time.perf_counter()
    ranker = fit_ranker(training_set)
    fitted = time.perf_counter()
    valid = training_set.rows["valid"]
    metadata = {
        "shelf": shelf.name,
        "feature_service": shelf.feature_service,
        "feature_names": training_set.feature_names,
        "split": split.to_dict(),
        "data_hash": training_set.data_hash,
        "trained_at": datetime.now(UTC).isoformat(),
        "rows": {window: len(frame) for window, frame in training_set.rows.items()},
        "metrics": {
            f"valid_ndcg@{shelf.k}": validation_ndcg(ranker, valid, shelf.k),
            f"valid_baseline_ndcg@{shelf.k}": validation_ndcg(
                baseline_ranker(shelf), valid, shelf.k
            ),
        },
    }
    sha256 = save_ranker(ranker, model_dir(settings, shelf.name), metadata)
    seconds = {"training set": built - started, "fit": fitted - built}
    logger.info(
        "%s: trained in %.1f s (set %.1f s), valid ndcg@%d %.4f vs baseline %.4f",
        shelf.name,
        fitted - started,
        seconds["training set"],
        shelf.k,
        metadata["metrics"][f"valid_ndcg@{shelf.k}"],
        metadata["metrics"][f"valid_baseline_ndcg@{shelf.k}"],
    )
    return TrainedShelf(shelf.name, model_dir(settings, shelf.name), sha256, seconds, metadata)


def train_all(settings: Settings, only: list[str] | None = None) -> list[TrainedShelf]:
    """Train every shelf of the shelves file (or those named in ``only``)."""
    store = open_store(settings)
    shelves = load_shelves(settings.shelves_file)
    unknown = sorted(set(only or []) - {shelf.name for shelf in shelves})
    if unknown:
        raise ValueError(f"unknown shelves {unknown}; shelves: {[s.name for s in shelves]}")
    return [
        train_shelf(settings, store, shelf) for shelf in shelves if not only or shelf.name in only
    ]
