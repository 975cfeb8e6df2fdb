"""Stage 1: candidate generation, one implementation for training and serving.

A *request* is one listener at one time (a ranking group). Its inputs — familiar items,
co-listening neighbours of them, popular lists of its segments, editorial picks of its
market — are read through Feast by a ``FeatureReader``: offline (point in time, for
training sets) or online (for serving). ``generate_candidates`` is a pure function of
those inputs, so the same request yields the same candidates either way.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from training.core.shelves import (
    EditorialSource,
    FamiliarSource,
    NeighbourSource,
    PopularSource,
    Shelf,
)
from training.features.store import FeatureSelection
from training.features.tables import ALL_AGES, segment_ids

LISTENER_FEATURES = [
    "listener_profile:market",
    "listener_profile:age_bucket",
    "listener_profile:account_age_days",
    "listener_familiar:familiar_items",
    "listener_familiar:familiar_content_types",
]
CANDIDATE_COLUMNS = ["group", "item_id", "source", "reason"]


class FeatureReader(Protocol):
    """Reads Feast features for entity rows, returning one row per input row, same index."""

    def read(self, features: FeatureSelection, entities: pd.DataFrame) -> pd.DataFrame: ...


@dataclass(frozen=True)
class CandidateInputs:
    """Everything stage 1 needs for a batch of requests, keyed by ``group``."""

    listeners: pd.DataFrame  # group, market, age_bucket, account_age_days, familiar_*
    neighbours: pd.DataFrame  # group, seed_item, seed_rank, neighbours_<type>, ...
    popular: pd.DataFrame  # group, segment ("market" | "market_age"), popular_<type>, ...
    editorial: pd.DataFrame  # group, editorial_<type>


def read_candidate_inputs(
    reader: FeatureReader, requests: pd.DataFrame, shelves: list[Shelf]
) -> CandidateInputs:
    """Read the stage-1 inputs of ``requests`` (columns group, listener_id and, offline,
    event_timestamp) for all ``shelves`` at once."""
    extra = [c for c in ("event_timestamp",) if c in requests.columns]
    listeners = pd.concat(
        [
            requests[["group", "listener_id", *extra]],
            reader.read(LISTENER_FEATURES, requests[["listener_id", *extra]]),
        ],
        axis=1,
    ).reset_index(drop=True)
    types = sorted({t for shelf in shelves for t in shelf.content_types})

    seeds = max(
        (s.seeds for shelf in shelves for s in shelf.candidates if isinstance(s, NeighbourSource)),
        default=0,
    )
    seed_rows = _familiar_rows(listeners, extra)
    seed_rows = seed_rows[seed_rows["familiar_rank"] < seeds].rename(
        columns={"item_id": "seed_item", "familiar_rank": "seed_rank"}
    )
    neighbour_features = [
        f"item_neighbours:{prefix}_{t}"
        for t in types
        for prefix in ("neighbours", "neighbour_scores")
    ]
    neighbours = reader.read(
        neighbour_features,
        seed_rows[["seed_item", *extra]].rename(columns={"seed_item": "item_id"}),
    )
    neighbours = pd.concat(
        [
            seed_rows[["group", "seed_item", "seed_rank"]].reset_index(drop=True),
            neighbours.reset_index(drop=True),
        ],
        axis=1,
    )

    segments = pd.concat(
        [
            listeners.assign(
                segment="market", segment_id=segment_ids(listeners["market"], ALL_AGES)
            ),
            listeners.assign(
                segment="market_age",
                segment_id=segment_ids(
                    listeners["market"], listeners["age_bucket"].astype("string")
                ),
            ),
        ],
        ignore_index=True,
    ).dropna(subset=["segment_id"])
    popular_features = [
        f"segment_popular:{prefix}_{t}{suffix}"
        for _, prefix, count in POPULAR_LISTS.values()
        for t in types
        for suffix in ("", f"_{count}")
    ]
    popular_features = list(dict.fromkeys(popular_features))
    popular = reader.read(popular_features, segments[["segment_id", *extra]])
    popular = pd.concat(
        [
            segments[["group", "segment", "market", "age_bucket"]].reset_index(drop=True),
            popular.reset_index(drop=True),
        ],
        axis=1,
    )

    markets = listeners.dropna(subset=["market"])
    editorial = reader.read(
        [f"market_editorial:editorial_{t}" for t in types],
        markets[["market", *extra]].rename(columns={"market": "market_id"}),
    )
    editorial = pd.concat(
        [markets[["group", "market"]].reset_index(drop=True), editorial.reset_index(drop=True)],
        axis=1,
    )
    return CandidateInputs(listeners, neighbours, popular, editorial)


def _explode(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per list element of ``columns`` (lists of equal length per row); a
    ``position`` column holds the element's index in its list. Missing lists give no rows."""
    present = frame[columns[0]].map(lambda value: value is not None and len(value) > 0)
    frame = frame[present.to_numpy(dtype=bool)]
    if frame.empty:
        return frame.assign(position=pd.Series(dtype=np.int64))
    lengths = frame[columns[0]].map(len).to_numpy()
    exploded = frame.drop(columns=columns).loc[frame.index.repeat(lengths)].reset_index(drop=True)
    for column in columns:
        exploded[column] = np.concatenate([np.asarray(v) for v in frame[column]])
    exploded["position"] = np.concatenate([np.arange(n) for n in lengths])
    return exploded


def _familiar_rows(listeners: pd.DataFrame, keep: Sequence[str] = ()) -> pd.DataFrame:
    """group, item_id, content_type, familiar_rank: the familiar lists, one row per item."""
    rows = _explode(
        listeners[["group", *keep, "familiar_items", "familiar_content_types"]],
        ["familiar_items", "familiar_content_types"],
    )
    return rows.rename(
        columns={
            "familiar_items": "item_id",
            "familiar_content_types": "content_type",
            "position": "familiar_rank",
        }
    )


def _familiar_candidates(shelf: Shelf, source: FamiliarSource, inputs: CandidateInputs):
    rows = _familiar_rows(inputs.listeners)
    rows = rows[rows["content_type"].isin(shelf.content_types)].copy()
    rows["rank"] = rows.groupby("group").cumcount()
    rows["reason"] = "you play it often"
    rows["cand_familiar_rank"] = rows["familiar_rank"].astype(float)
    return rows[["group", "item_id", "rank", "reason", "cand_familiar_rank"]]


def _neighbour_candidates(shelf: Shelf, source: NeighbourSource, inputs: CandidateInputs):
    seeds = inputs.neighbours[inputs.neighbours["seed_rank"] < source.seeds]
    parts = [
        _explode(
            seeds[["group", "seed_item", f"neighbours_{t}", f"neighbour_scores_{t}"]],
            [f"neighbours_{t}", f"neighbour_scores_{t}"],
        ).rename(columns={f"neighbours_{t}": "item_id", f"neighbour_scores_{t}": "score"})
        for t in shelf.content_types
    ]
    pairs = pd.concat(parts, ignore_index=True)
    pairs["score"] = pairs["score"].astype(float)
    best_seed = pairs.sort_values(
        ["group", "item_id", "score", "seed_item"], ascending=[True, True, False, True]
    )
    best_seed = best_seed.drop_duplicates(["group", "item_id"])[["group", "item_id", "seed_item"]]
    scored = pairs.groupby(["group", "item_id"], as_index=False)["score"].sum()
    scored = scored.merge(best_seed, on=["group", "item_id"])
    scored = scored.sort_values(["group", "score", "item_id"], ascending=[True, False, True])
    scored["rank"] = scored.groupby("group").cumcount()
    scored["reason"] = "because you played " + scored["seed_item"].astype(str)
    scored = scored.rename(columns={"score": "cand_neighbour_score"})
    return scored[["group", "item_id", "rank", "reason", "cand_neighbour_score"]]


POPULAR_LISTS: dict[str, tuple[str, str, str]] = {
    "market": ("market", "popular", "listeners_7d"),
    "market_age": ("market_age", "popular", "listeners_7d"),
    "market_age_new": ("market_age", "popular_new", "listeners_28d"),
}
"""Popular source segment -> (segment rows it reads, list prefix, count suffix) in
segment_popular."""


def _popular_candidates(shelf: Shelf, source: PopularSource, inputs: CandidateInputs):
    rows_of, prefix, count = POPULAR_LISTS[source.segment]
    lists = inputs.popular[inputs.popular["segment"] == rows_of]
    parts = [
        _explode(
            lists[["group", "market", "age_bucket", f"{prefix}_{t}", f"{prefix}_{t}_{count}"]],
            [f"{prefix}_{t}", f"{prefix}_{t}_{count}"],
        ).rename(columns={f"{prefix}_{t}": "item_id", f"{prefix}_{t}_{count}": "listeners"})
        for t in shelf.content_types
    ]
    rows = pd.concat(parts, ignore_index=True)
    rows["listeners"] = rows["listeners"].astype(float)
    rows = rows.sort_values(["group", "listeners", "item_id"], ascending=[True, False, True])
    rows["rank"] = rows.groupby("group").cumcount()
    where = rows["market"].astype(str)
    age = rows["age_bucket"].astype(str)
    rows["reason"] = {
        "market": "popular in " + where,
        "market_age": "popular with " + age + " listeners in " + where,
        "market_age_new": "what new " + age + " listeners in " + where + " play",
    }[source.segment]
    rank_name, listeners_name = _popular_feature_names(source)
    rows[rank_name] = rows["rank"].astype(float)
    rows[listeners_name] = rows["listeners"]
    return rows[["group", "item_id", "rank", "reason", rank_name, listeners_name]]


def _popular_feature_names(source: PopularSource) -> tuple[str, str]:
    _, _, count = POPULAR_LISTS[source.segment]
    return f"cand_popular_{source.segment}_rank", f"cand_popular_{source.segment}_{count}"


def _editorial_candidates(shelf: Shelf, source: EditorialSource, inputs: CandidateInputs):
    parts = [
        _explode(
            inputs.editorial[["group", "market", f"editorial_{t}"]], [f"editorial_{t}"]
        ).rename(columns={f"editorial_{t}": "item_id"})
        for t in shelf.content_types
    ]
    rows = pd.concat(parts, ignore_index=True)
    # Newest first across types: interleave each type's list by its position.
    rows = rows.sort_values(["group", "position", "item_id"])
    rows["rank"] = rows.groupby("group").cumcount()
    rows["reason"] = "editors' pick in " + rows["market"].astype(str)
    rows["cand_editorial_rank"] = rows["rank"].astype(float)
    return rows[["group", "item_id", "rank", "reason", "cand_editorial_rank"]]


CandidateSource = Callable[[Shelf, Any, CandidateInputs], pd.DataFrame]
"""Stage-1 rows of one source of a shelf: group, item_id, rank, reason and its signals."""

_SOURCES: dict[str, CandidateSource] = {
    "familiar": _familiar_candidates,
    "neighbours": _neighbour_candidates,
    "popular": _popular_candidates,
    "editorial": _editorial_candidates,
}


def candidate_feature_names(shelf: Shelf) -> list[str]:
    """The stage-1 signals a shelf's candidates carry into ranking, in a fixed order."""
    names: list[str] = []
    for source in shelf.candidates:
        if isinstance(source, FamiliarSource):
            new = ["cand_familiar_rank"]
        elif isinstance(source, NeighbourSource):
            new = ["cand_neighbour_score"]
        elif isinstance(source, PopularSource):
            new = list(_popular_feature_names(source))
        else:
            new = ["cand_editorial_rank"]
        names += [name for name in new if name not in names]
    return names


def in_audience(shelf: Shelf, account_age_days: pd.Series) -> np.ndarray:
    """Which requests the shelf is shown to (and evaluated on); unknown listeners (no
    account age) count as new. Training uses every listener: the model learns from all."""
    limit = shelf.audience.max_account_age_days
    if limit is None:
        return np.ones(len(account_age_days), dtype=bool)
    age = account_age_days.astype(float)
    return (age.isna() | (age <= limit)).to_numpy()


def audience_rows(shelf: Shelf, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows (with ``account_age_days``) of requests in the shelf's audience, renumbered:
    what the shelf is served to, so what it is evaluated on and profiled over."""
    return rows[in_audience(shelf, rows["account_age_days"])].reset_index(drop=True)


def generate_candidates(shelf: Shelf, inputs: CandidateInputs) -> pd.DataFrame:
    """Candidates of ``shelf`` for every request in ``inputs``.

    Sources are merged in declaration order; an item proposed by several sources keeps the
    first one as its ``source`` and ``reason`` but carries every source's signal
    (``candidate_feature_names``). Familiar items are removed from discovery shelves, and
    each request keeps at most ``max_candidates``. Returns one row per (group, item) with
    columns ``CANDIDATE_COLUMNS`` + the candidate features, sorted by group then proposal
    order.
    """
    proposals, signals = [], []
    for order, source in enumerate(shelf.candidates):
        rows = _SOURCES[source.kind](shelf, source, inputs)
        signals.append(rows.drop(columns=["rank", "reason"]))
        top = rows[rows["rank"] < source.limit]
        proposals.append(
            top[["group", "item_id", "rank", "reason"]].assign(order=order, source=source.kind)
        )
    merged = pd.concat(proposals, ignore_index=True).sort_values(
        ["group", "order", "rank"], kind="stable"
    )
    merged = merged.drop_duplicates(["group", "item_id"])
    if shelf.exclude_familiar:
        familiar = _familiar_rows(inputs.listeners)[["group", "item_id"]].assign(_familiar=True)
        merged = merged.merge(familiar, on=["group", "item_id"], how="left")
        merged = merged[merged["_familiar"].isna()].drop(columns="_familiar")
    merged = merged[merged.groupby("group").cumcount() < shelf.max_candidates]
    candidates = merged[CANDIDATE_COLUMNS].reset_index(drop=True)
    for signal in signals:
        signal = signal.drop_duplicates(["group", "item_id"])
        new = [c for c in signal.columns if c not in candidates.columns]
        candidates = candidates.merge(
            signal[["group", "item_id", *new]], on=["group", "item_id"], how="left"
        )
    for name in candidate_feature_names(shelf):
        candidates[name] = candidates[name].astype(float)
    return candidates[CANDIDATE_COLUMNS + candidate_feature_names(shelf)]
