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
import pyarrow as pa
import pyarrow.compute as pc

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
        seed_rows[["seed_item", *extra]]
        .astype({"seed_item": object})
        .rename(columns={"seed_item": "item_id"}),
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


def _list_array(values: pd.Series) -> pa.ListArray:
    """A column of lists (numpy arrays offline, lists online, None when missing) in arrow."""
    array = pa.array(values.to_numpy(dtype=object), from_pandas=True)
    if pa.types.is_null(array.type) or pa.types.is_null(array.type.value_type):
        return array.cast(pa.list_(pa.string()))  # all missing or empty: no type to infer
    return array


def _flat_values(lists: pa.ListArray) -> pd.Categorical | np.ndarray:
    """The elements of ``lists`` in order; strings as a Categorical with sorted categories
    (sorting, grouping and merging then work on integer codes, in string order)."""
    flat = pc.list_flatten(lists)
    if not (pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type)):
        return flat.to_numpy(zero_copy_only=False)
    encoded = flat.dictionary_encode()
    dictionary = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
    order = np.argsort(dictionary, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    return pd.Categorical.from_codes(codes, categories=dictionary[order])


def _explode(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per list element of ``columns`` (lists of equal length per row); a
    ``position`` column holds the element's index in its list. Missing lists give no rows.
    String elements and the other string columns become Categoricals (see _flat_values)."""
    lists = [_list_array(frame[column]) for column in columns]
    lengths = pc.fill_null(pc.list_value_length(lists[0]), 0).to_numpy(zero_copy_only=False)
    parent = np.repeat(np.arange(len(frame)), lengths)
    rest = frame.drop(columns=columns)
    strings = [c for c in rest.columns if rest[c].dtype == object]
    rest = rest.astype({column: "category" for column in strings})
    exploded = rest.iloc[parent].reset_index(drop=True)
    for column, values in zip(columns, lists, strict=True):
        exploded[column] = _flat_values(values)
    starts = np.cumsum(lengths) - lengths
    exploded["position"] = np.arange(len(parent)) - np.repeat(starts, lengths)
    return exploded


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """``pd.concat`` that keeps categorical columns categorical: their categories are
    unified (sorted) first, where pandas would fall back to Python objects."""
    frames = list(frames)
    categorical = [
        column
        for column in frames[0].columns
        if all(isinstance(f[column].dtype, pd.CategoricalDtype) for f in frames)
    ]
    for column in categorical:
        categories = _union_categories([f[column] for f in frames])
        frames = [f.assign(**{column: f[column].cat.set_categories(categories)}) for f in frames]
    return pd.concat(frames, ignore_index=True)


def _union_categories(columns: Sequence[pd.Series]) -> np.ndarray:
    return np.unique(np.concatenate([c.cat.categories.to_numpy(dtype=object) for c in columns]))


def _texts(template: str, frame: pd.DataFrame, columns: list[str]) -> pd.Categorical:
    """``template.format(*values)`` for every row's ``columns``, formatted once per
    distinct combination (there are few: seeds, markets, age buckets)."""
    grouped = frame.groupby(columns, observed=True, sort=False, dropna=False)
    codes = grouped.ngroup().to_numpy()
    firsts = grouped.head(1)[columns].itertuples(index=False)
    texts = np.array([template.format(*values) for values in firsts], dtype=object)
    categories, inverse = np.unique(texts, return_inverse=True)
    return pd.Categorical.from_codes(inverse[codes], categories=categories)


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
    rows["reason"] = pd.Categorical(["you play it often"] * len(rows))
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
    pairs = _concat(parts)
    score = pairs["score"].to_numpy(dtype=np.float64)
    key = _pair_keys(pairs)
    # The best seed of each (request, item): highest score, then first seed id.
    by_key = np.lexsort((pairs["seed_item"].cat.codes.to_numpy(), -score, key))
    sorted_keys = key[by_key]
    best = by_key[np.flatnonzero(np.diff(sorted_keys, prepend=sorted_keys[:1] - 1))]
    total = pd.Series(score).groupby(key).sum().to_numpy()  # by ascending key, as ``best``
    group = pairs["group"].to_numpy()[best]
    ranked = np.lexsort((pairs["item_id"].cat.codes.to_numpy()[best], -total, group))
    scored = pairs.iloc[best[ranked]][["group", "item_id", "seed_item"]].reset_index(drop=True)
    scored["cand_neighbour_score"] = total[ranked]
    scored["rank"] = _ranks_in_group(scored["group"].to_numpy())
    scored["reason"] = _texts("because you played {}", scored, ["seed_item"])
    return scored[["group", "item_id", "rank", "reason", "cand_neighbour_score"]]


def _pair_keys(frame: pd.DataFrame) -> np.ndarray:
    """One int64 per (group, item_id) of a frame whose item_id is a Categorical: requests
    and items compared, deduplicated and looked up as one integer."""
    items = frame["item_id"].cat
    return frame["group"].to_numpy(dtype=np.int64) * len(items.categories) + items.codes.to_numpy(
        dtype=np.int64
    )


def _ranks_in_group(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal ``group`` values (``group`` sorted)."""
    return np.arange(len(group)) - np.searchsorted(group, group, side="left")


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
    rows = _concat(parts)
    rows["listeners"] = rows["listeners"].astype(float)
    rows = rows.sort_values(["group", "listeners", "item_id"], ascending=[True, False, True])
    rows["rank"] = _ranks_in_group(rows["group"].to_numpy())
    template = {
        "market": "popular in {1}",
        "market_age": "popular with {0} listeners in {1}",
        "market_age_new": "what new {0} listeners in {1} play",
    }[source.segment]
    rows["reason"] = _texts(template, rows, ["age_bucket", "market"])
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
    rows = _concat(parts)
    # Newest first across types: interleave each type's list by its position.
    rows = rows.sort_values(["group", "position", "item_id"])
    rows["rank"] = _ranks_in_group(rows["group"].to_numpy())
    rows["reason"] = _texts("editors' pick in {}", rows, ["market"])
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
    outputs = [_SOURCES[source.kind](shelf, source, inputs) for source in shelf.candidates]
    excluded = [_familiar_rows(inputs.listeners)] if shelf.exclude_familiar else []
    # One item vocabulary for every frame compared below, so (group, item) keys match.
    vocabulary = _union_categories([frame["item_id"] for frame in outputs + excluded])

    def recoded(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(item_id=frame["item_id"].cat.set_categories(vocabulary))

    outputs = [recoded(rows) for rows in outputs]
    proposals, signals = [], []
    for order, (source, rows) in enumerate(zip(shelf.candidates, outputs, strict=True)):
        signals.append(rows.drop(columns=["rank", "reason"]))
        top = rows[rows["rank"] < source.limit]
        proposals.append(
            top[["group", "item_id", "rank", "reason"]].assign(order=order, source=source.kind)
        )
    merged = _concat(proposals)
    merged = merged.iloc[np.lexsort((merged["rank"], merged["order"], merged["group"]))]
    keys = _pair_keys(merged)
    keep = ~pd.Index(keys).duplicated()
    for frame in excluded:
        keep &= ~np.isin(keys, _pair_keys(recoded(frame)))
    merged, keys = merged[keep], keys[keep]
    within = _ranks_in_group(merged["group"].to_numpy()) < shelf.max_candidates
    candidates = merged[within][CANDIDATE_COLUMNS].reset_index(drop=True)
    keys = keys[within]
    for signal in signals:
        signal_keys = _pair_keys(signal)
        first = ~pd.Index(signal_keys).duplicated()
        found = pd.Index(signal_keys[first]).get_indexer(keys)
        for name in [c for c in signal.columns if c not in candidates.columns]:
            # A trailing NaN is what index -1 (not proposed by this source) reads.
            values = np.append(signal[name].to_numpy(dtype=np.float64)[first], np.nan)
            candidates[name] = values[found]
    candidates = candidates.astype({"item_id": object, "reason": object})
    return candidates[CANDIDATE_COLUMNS + candidate_feature_names(shelf)]
