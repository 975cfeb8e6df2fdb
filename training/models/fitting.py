"""Fitting a shelf ranker on a training set, and the heuristic it is measured against."""

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from training.core.shelves import Shelf
from training.models.rankers import HeuristicRanker, ShelfRanker
from training.training_sets import TrainingSet


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
