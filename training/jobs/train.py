"""Stage 2 training: one XGBoost ranker per shelf from its training set, registered with its
contract.

The model registry is the one model store: each trained model becomes a version of its
shelf (model.ubj + ranker.json under ``<registry>/<shelf>/versions/<N>/``) and the shelf's
``candidate``, which ``homerec evaluate`` scores. Only the evaluation gate
(:mod:`evaluation.gate`) makes a version ``production``, the one serving loads. Registering
is idempotent: a model with the data hash and parameters of a registered version is that
version, not a new one.
"""

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from feast import FeatureStore

from evaluation.drift_job import save_reference_profile
from evaluation.metrics import validation_ndcg
from training.core.layout import training_set_dir
from training.core.settings import Settings
from training.core.shelves import Shelf, select_shelves
from training.features.store import open_store
from training.models.fitting import baseline_ranker, fit_ranker
from training.models.rankers import Ranker, ShelfRanker
from training.models.registry import CANDIDATE, PRODUCTION, ModelRegistry, ModelVersion
from training.training_sets import TrainingSet, build_shelf_training_set, shelf_split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedShelf:
    shelf: str
    version: int
    """The registry version (a new one, or the one with the same data and parameters)."""
    version_dir: Path
    sha256: str
    seconds: dict[str, float]
    metadata: dict[str, Any]


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
    registry: ModelRegistry,
) -> TrainedShelf:
    """Training set -> ranker -> registered with its feature contract and metrics as the
    shelf's candidate."""
    started = time.perf_counter()
    directory = training_set_dir(settings, shelf.name)
    split = shelf_split(settings, shelf)
    training_set = build_shelf_training_set(settings, store, shelf, split, directory)
    built = time.perf_counter()
    ranker = fit_ranker(training_set)
    fitted = time.perf_counter()
    metadata = training_metadata(shelf, training_set, ranker, {"training_set": str(directory)})
    record, _ = register_candidate(
        registry, shelf.name, ranker, metadata, training_set.reference_rows()
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
        shelf.name, record.version, record.path, record.sha256, seconds, record.metadata
    )


def train_all(settings: Settings, only: list[str] | None = None) -> list[TrainedShelf]:
    """Train every shelf of the shelves file (or those named in ``only``), each registered
    as its shelf's candidate in the settings' model registry."""
    shelves = select_shelves(settings, only)
    store = open_store(settings)
    registry = ModelRegistry(settings.model_registry_dir)
    return [train_shelf(settings, store, shelf, registry) for shelf in shelves]
