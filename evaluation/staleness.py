"""Simulated time: what a model that is never retrained loses as the world moves on.

Time advances in steps of as-of dates. At the first one both arms train a shelf's model
on the data before it (the same functions ``homerec retrain --as-of`` runs); at every
later one the **stale** arm keeps that first model while the **retrained** arm fits a new
one on the data before the new date. Both are scored, with the heuristic, on that date's
held-out test window (the shelf's audience only), so each row compares them on the same
requests while new content and new listeners arrive.
"""

import logging
from dataclasses import asdict, dataclass
from datetime import datetime

from feast import FeatureStore

from evaluation.metrics import mean_ndcg
from training.candidates import audience_rows
from training.core.settings import Settings
from training.core.shelves import Shelf, select_shelves
from training.features.store import open_store
from training.models.fitting import baseline_ranker, fit_ranker
from training.models.rankers import ShelfRanker
from training.training_sets import TrainingSet, build_training_set, shelf_split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StalenessRow:
    """NDCG@k of one shelf at one as-of date: the first model, a retrained one, the
    heuristic; ``trained_at`` is the as-of date the stale model was trained at."""

    shelf: str
    as_of: str
    trained_at: str
    test_groups: int
    stale: float
    retrained: float
    baseline: float

    def to_dict(self) -> dict:
        return asdict(self)


def _training_set(
    settings: Settings, store: FeatureStore, shelf: Shelf, as_of: datetime
) -> TrainingSet:
    split = shelf_split(settings, shelf, as_of)
    return build_training_set(
        store, shelf, settings.world_dir, split, settings.max_requests_per_snapshot
    )


def staleness_study(
    settings: Settings, as_of_dates: list[datetime], only: list[str] | None = None
) -> list[StalenessRow]:
    """One row per shelf and as-of date (ascending); the first date trains the stale model."""
    if len(as_of_dates) < 2 or sorted(as_of_dates) != list(as_of_dates):
        raise ValueError(f"need two or more ascending as-of dates, got {as_of_dates}")
    store = open_store(settings)
    rows: list[StalenessRow] = []
    for shelf in select_shelves(settings, only):
        stale: ShelfRanker | None = None
        for as_of in as_of_dates:
            training_set = _training_set(settings, store, shelf, as_of)
            retrained = fit_ranker(training_set)
            stale = stale or retrained
            test = audience_rows(shelf, training_set.rows["test"])
            row = StalenessRow(
                shelf=shelf.name,
                as_of=as_of.isoformat(),
                trained_at=as_of_dates[0].isoformat(),
                test_groups=int(test["group"].nunique()),
                stale=mean_ndcg(test, stale.predict(test), shelf.k),
                retrained=mean_ndcg(test, retrained.predict(test), shelf.k),
                baseline=mean_ndcg(test, baseline_ranker(shelf).predict(test), shelf.k),
            )
            logger.info("%s", row)
            rows.append(row)
    return rows
