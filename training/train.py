"""Stage 2 training: one XGBoost ranker per shelf from its training set, saved with its contract.

Each trained model is saved in ``<data_dir>/models/<shelf>/`` (model.ubj + ranker.json, what
``homerec evaluate`` reads and what serving loads while the registry has no production
version) and registered in the model registry as the shelf's ``candidate``. Only the
evaluation gate (:mod:`training.gate`) makes a version ``production``. Registering is
idempotent: a model with the data hash and parameters of a registered version is that
version, not a new one.
"""

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureStore

from evaluation.drift_job import save_reference_profile
from evaluation.metrics import ndcg_at_k
from training.feature_store import open_store, world_window
from training.rankers import HeuristicRanker, Ranker, ShelfRanker, save_ranker
from training.registry import CANDIDATE, PRODUCTION, ModelRegistry, ModelVersion
from training.settings import Settings
from training.shelves import Shelf, UnknownShelfError, load_shelves
from training.training_sets import (
    TimeSplit,
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


def fit_ranker(
    training_set: TrainingSet, seed: int = 0, params: Mapping[str, Any] | None = None
) -> ShelfRanker:
    """Fit on the train window with early stopping on the (time-later) validation window;
    ``params`` are extra ShelfRanker parameters (a sweep's grid point)."""
    ranker = ShelfRanker(feature_names=training_set.feature_names, seed=seed, **(params or {}))
    return ranker.fit(*_xy(training_set.rows["train"]), eval_set=_xy(training_set.rows["valid"]))


def ranker_params(
    feature_names: list[str], seed: int = 0, params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The parameters ``save_ranker`` records for a ranker fitted with these arguments:
    with the data hash, what identifies a model before it is fitted."""
    ranker = ShelfRanker(feature_names=feature_names, seed=seed, **(params or {}))
    recorded = ranker.get_params(deep=False)
    recorded.pop("feature_names")
    return recorded


def mean_ndcg(frame: pd.DataFrame, scores: np.ndarray, k: int) -> float:
    """Mean NDCG@k over the groups of ``frame`` (every group has a relevant row)."""
    return float(ndcg_at_k(frame["group"], frame["label"], scores, k).mean())


def validation_ndcg(ranker: Ranker, frame: pd.DataFrame, k: int) -> float:
    return mean_ndcg(frame, ranker.predict(frame), k)


@dataclass(frozen=True)
class TrainedShelf:
    shelf: str
    model_dir: Path
    sha256: str
    seconds: dict[str, float]
    metadata: dict[str, Any]
    version: int | None = None
    """The registry version (None when trained without a registry)."""


def shelf_split(settings: Settings, shelf: Shelf, as_of: datetime | None = None) -> TimeSplit:
    """The shelf's train/valid/test snapshots in the world window, cut at ``as_of`` when
    given: every snapshot and label then comes from events before ``as_of``."""
    start, end = world_window(settings)
    if as_of is not None:
        end = min(end, as_of)
    return time_split(pd.Timestamp(start), pd.Timestamp(end), shelf.label.horizon_days, settings)


def check_windows_fit(settings: Settings, start: date, days: int) -> None:
    """WindowTooShortError when a world of ``days`` days from ``start`` cannot hold some
    shelf's warm-up, train, valid and test windows (checked before a world is made)."""
    first = pd.Timestamp(start, tz="UTC")
    for shelf in load_shelves(settings.shelves_file):
        time_split(first, first + pd.Timedelta(days=days), shelf.label.horizon_days, settings)


def build_shelf_training_set(
    settings: Settings, store: FeatureStore, shelf: Shelf, split: TimeSplit, directory: Path
) -> TrainingSet:
    """Build the shelf's training set for ``split`` from Feast and save it to ``directory``."""
    training_set = build_training_set(
        store, shelf, settings.world_dir, split, settings.max_requests_per_snapshot
    )
    save_training_set(training_set, directory)
    return training_set


def training_metadata(
    shelf: Shelf, training_set: TrainingSet, ranker: Ranker, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What is saved with a model: its feature contract, data window, data hash and
    validation NDCG@k of the model and of the shelf's heuristic; ``extra`` adds keys
    (``training_set``: the directory the evaluation gate reads the test window from)."""
    valid = training_set.rows["valid"]
    return {
        "shelf": shelf.name,
        "feature_service": shelf.feature_service,
        "feature_names": training_set.feature_names,
        "split": training_set.split.to_dict(),
        "data_hash": training_set.data_hash,
        "trained_at": datetime.now(UTC).isoformat(),
        "rows": {window: len(frame) for window, frame in training_set.rows.items()},
        "metrics": {
            f"valid_ndcg@{shelf.k}": validation_ndcg(ranker, valid, shelf.k),
            f"valid_baseline_ndcg@{shelf.k}": validation_ndcg(
                baseline_ranker(shelf), valid, shelf.k
            ),
        },
    } | dict(extra or {})


def find_version(
    registry: ModelRegistry, shelf: str, data_hash: str, params: Mapping[str, Any]
) -> ModelVersion | None:
    """The registered version of ``shelf`` trained on ``data_hash`` with ``params``, if any
    (the newest): retraining on unchanged data must not add a duplicate version."""
    for number in reversed(registry.version_numbers(shelf)):
        record = registry.get(shelf, number)
        if record.data_hash == data_hash and record.params == dict(params):
            return record
    return None


def register_candidate(
    registry: ModelRegistry,
    shelf: str,
    ranker: ShelfRanker,
    metadata: Mapping[str, Any],
    reference_rows: pd.DataFrame,
) -> tuple[ModelVersion, bool]:
    """Register ``ranker`` as the shelf's ``candidate``: ``(version, newly registered)``.

    A new version gets the reference profile of its features over ``reference_rows`` (its
    training set's reference: candidates of the shelf's audience, whatever their labels,
    the population it is served to), which drift checks compare served features with. A
    version with the same data hash and parameters is reused instead of duplicated; it
    becomes the candidate unless it is already production (then no alias moves).
    """
    params = ranker.get_params(deep=False)
    params.pop("feature_names")
    existing = find_version(registry, shelf, str(metadata.get("data_hash")), params)
    if existing is not None:
        logger.info(
            "%s: data and parameters unchanged, version %d reused (no duplicate registered)",
            shelf,
            existing.version,
        )
        return mark_candidate(registry, existing), False
    record = registry.register(shelf, ranker, metadata)
    save_reference_profile(registry, shelf, record.version, reference_rows, ranker.feature_names_)
    return mark_candidate(registry, record), True


def mark_candidate(registry: ModelRegistry, record: ModelVersion) -> ModelVersion:
    """Point the shelf's ``candidate`` at ``record`` unless it is already production."""
    if registry.alias(record.shelf, PRODUCTION) != record.version:
        registry.set_alias(record.shelf, CANDIDATE, record.version, reason="trained")
    return registry.get(record.shelf, record.version)


def train_shelf(
    settings: Settings,
    store: FeatureStore,
    shelf: Shelf,
    registry: ModelRegistry | None = None,
) -> TrainedShelf:
    """Training set -> ranker -> saved model with its feature contract and metrics, and
    (with a registry) registered as the shelf's candidate."""
    started = time.perf_counter()
    directory = training_set_dir(settings, shelf.name)
    split = shelf_split(settings, shelf)
    training_set = build_shelf_training_set(settings, store, shelf, split, directory)
    built = time.perf_counter()
    ranker = fit_ranker(training_set)
    fitted = time.perf_counter()
    metadata = training_metadata(shelf, training_set, ranker, {"training_set": str(directory)})
    sha256 = save_ranker(ranker, model_dir(settings, shelf.name), metadata)
    version = (
        register_candidate(registry, shelf.name, ranker, metadata, training_set.reference_rows())[0]
        if registry
        else None
    )
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
    return TrainedShelf(
        shelf.name,
        model_dir(settings, shelf.name),
        sha256,
        seconds,
        metadata,
        None if version is None else version.version,
    )


def select_shelves(settings: Settings, only: list[str] | None = None) -> list[Shelf]:
    """The shelves of the shelves file (those named in ``only``), in page order;
    UnknownShelfError naming any unknown shelf."""
    shelves = load_shelves(settings.shelves_file)
    unknown = sorted(set(only or []) - {shelf.name for shelf in shelves})
    if unknown:
        raise UnknownShelfError(f"unknown shelves {unknown}; shelves: {[s.name for s in shelves]}")
    return [shelf for shelf in shelves if not only or shelf.name in only]


def train_all(settings: Settings, only: list[str] | None = None) -> list[TrainedShelf]:
    """Train every shelf of the shelves file (or those named in ``only``), each registered
    as its shelf's candidate in the settings' model registry."""
    shelves = select_shelves(settings, only)
    store = open_store(settings)
    registry = ModelRegistry(settings.model_registry_dir)
    return [train_shelf(settings, store, shelf, registry) for shelf in shelves]
