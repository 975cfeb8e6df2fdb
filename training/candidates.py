"""Stage 1: candidate generation, one implementation for training and serving.

A *request* is one listener at one time (a ranking group). Its inputs — familiar items,
co-listening neighbours of them, popular lists of its segments, editorial picks of its
market — are read through Feast: offline (point in time, for training sets) or online
(for serving). ``read_candidate_inputs`` turns what a reader returns into flat numpy
arrays (:class:`CandidateInputs`) and ``propose`` applies a shelf's rules to them, as
array operations over every request at once: a batch of 50,000 training requests and the
one request of a Home page run the same code, so the same request yields the same
candidates either way. Serving's reader answers from memory and the online store without
pandas (``ColumnReader``); any DataFrame ``FeatureReader`` works too.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

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
from training.features.tables import ALL_AGES, segment_id

LISTENER_FEATURES = [
    "listener_profile:market",
    "listener_profile:age_bucket",
    "listener_profile:account_age_days",
    "listener_familiar:familiar_items",
    "listener_familiar:familiar_content_types",
]
CANDIDATE_COLUMNS = ["group", "item_id", "source", "reason"]
FAMILIAR_REASON = "you play it often"


class FeatureReader(Protocol):
    """Reads Feast features for entity rows, returning one row per input row, same index."""

    def read(self, features: FeatureSelection, entities: pd.DataFrame) -> pd.DataFrame: ...


Columns = Mapping[str, Any]
"""Name -> one value per row, in order (an array, list or Series)."""


class ColumnReader(Protocol):
    """Reads Feast features as columns: for entity columns (join keys and, offline,
    event_timestamp), each feature's values in row order (a list feature as lists or
    arrays; missing values as None or NaN)."""

    def columns(self, features: list[str], entities: Columns) -> Columns: ...


class FrameColumns:
    """A ``ColumnReader`` over a DataFrame ``FeatureReader``."""

    def __init__(self, reader: FeatureReader) -> None:
        self.reader = reader

    def columns(self, features: list[str], entities: Columns) -> Columns:
        frame = self.reader.read(features, pd.DataFrame(dict(entities)))
        return {name: frame[name].to_numpy(dtype=object) for name in frame.columns}


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Lists:
    """List features of many entity rows, flattened: element ``i`` is at ``position[i]``
    of a list of request ``row[i]`` (an index into the requests); ``item`` holds codes
    into ``CandidateInputs.items``, ``value`` the list's numbers (scores, listener
    counts; NaN for lists without); neighbour lists also name their ``seed`` (an item
    code) and its familiar rank ``seed_rank``."""

    row: np.ndarray
    item: np.ndarray
    position: np.ndarray
    value: np.ndarray
    seed: np.ndarray
    seed_rank: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def take(self, index: np.ndarray) -> "Lists":
        """The elements at ``index`` (positions or a boolean mask)."""
        return Lists(*(getattr(self, name)[index] for name in _LIST_FIELDS))

    @staticmethod
    def concat(parts: Sequence["Lists"]) -> "Lists":
        if not parts:
            return _NO_LISTS
        return Lists(*(np.concatenate([getattr(p, name) for p in parts]) for name in _LIST_FIELDS))


_LIST_FIELDS = ("row", "item", "position", "value", "seed", "seed_rank")
_NO_LISTS = Lists(
    *(np.zeros(0, dtype=np.float64 if n == "value" else np.int64) for n in _LIST_FIELDS)
)


@dataclass(frozen=True)
class CandidateInputs:
    """Everything stage 1 needs for a batch of requests (see ``read_candidate_inputs``).

    ``listeners`` holds one array per column, one row per request: group, listener_id,
    market, age_bucket (object, None when unknown), account_age_days (float, NaN when
    unknown) and familiar_items (the list, or None). ``items`` is the sorted vocabulary
    every ``Lists.item`` code indexes, so code order is item-id order."""

    listeners: dict[str, np.ndarray]
    items: np.ndarray
    familiar: Lists  # position = familiar rank
    familiar_types: np.ndarray  # content type of each familiar element
    neighbours: dict[str, Lists]  # content type -> neighbours of each seed, value = score
    popular: dict[tuple[str, str], Lists]  # (segment rows, list feature) -> value = listeners
    editorial: dict[str, Lists]  # content type -> the market's picks

    @property
    def groups(self) -> np.ndarray:
        return self.listeners["group"]


@dataclass(frozen=True)
class _Flat:
    """Lists before their item ids are coded (``items`` still strings); ``seed`` indexes
    the familiar elements (neighbour lists only)."""

    row: np.ndarray
    items: pa.Array
    position: np.ndarray
    value: np.ndarray
    seed: np.ndarray | None = None
    seed_rank: np.ndarray | None = None


def _list_array(values: Sequence[Any], kind: pa.DataType) -> pa.ListArray:
    """A column of lists (arrays or lists, None when missing) as an arrow list array."""
    array = pa.array(np.asarray(values, dtype=object), from_pandas=True)
    if pa.types.is_null(array.type) or pa.types.is_null(array.type.value_type):
        return array.cast(pa.list_(kind))  # all missing or empty: no type to infer
    return array


def _flatten(
    items: Sequence[Any], values: Sequence[Any] | None, parent: np.ndarray
) -> tuple[_Flat, np.ndarray]:
    """The elements of each entity row's ``items`` list (and its parallel ``values``
    list), each with its request ``parent[r]`` and position; and the entity row ``r`` of
    each element."""
    lists = _list_array(items, pa.string())
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    owner = np.repeat(np.arange(len(lists)), lengths)
    starts = np.cumsum(lengths) - lengths
    position = (np.arange(len(owner)) - np.repeat(starts, lengths)).astype(np.int64)
    if values is None:
        numbers = np.full(len(owner), np.nan)
    else:
        flat_values = pc.list_flatten(_list_array(values, pa.float64()))
        numbers = flat_values.to_numpy(zero_copy_only=False).astype(np.float64)
        if len(numbers) != len(owner):
            raise ValueError("a list and its values list differ in length")
    items_flat = pc.list_flatten(lists).cast(pa.string())
    return _Flat(np.asarray(parent, dtype=np.int64)[owner], items_flat, position, numbers), owner


def _vocabulary(parts: Sequence[pa.Array]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The sorted distinct strings of ``parts`` and each part's codes into them."""
    joined = pa.concat_arrays([pa.array([], pa.string()), *parts])
    encoded = pc.dictionary_encode(joined)
    dictionary = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
    order = np.argsort(dictionary, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    bounds = np.cumsum([0] + [len(part) for part in parts])
    return dictionary[order], [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _strings(values: Sequence[Any]) -> np.ndarray:
    """An object array of str, None where missing."""
    return np.array(
        [
            None if value is None or value is pd.NA or value != value else str(value)
            for value in values
        ],
        dtype=object,
    )


def _floats(values: Sequence[Any]) -> np.ndarray:
    """Numbers as float64, NaN where missing."""
    return np.array(
        [np.nan if value is None or value is pd.NA else float(value) for value in values],
        dtype=np.float64,
    )


POPULAR_LISTS: dict[str, tuple[str, str, str]] = {
    "market": ("market", "popular", "listeners_7d"),
    "market_age": ("market_age", "popular", "listeners_7d"),
    "market_age_new": ("market_age", "popular_new", "listeners_28d"),
}
"""Popular source segment -> (segment rows it reads, list prefix, count suffix) in
segment_popular."""

Entities = Callable[[str, Any, np.ndarray], dict[str, Any]]
"""(join key, ids, request rows) -> the entity columns of a read."""


def read_candidate_inputs(
    reader: FeatureReader | ColumnReader,
    requests: pd.DataFrame | Columns,
    shelves: list[Shelf],
) -> CandidateInputs:
    """Read the stage-1 inputs of ``requests`` (columns group, listener_id and, offline,
    event_timestamp) for all ``shelves`` at once."""
    columns = (
        cast(ColumnReader, reader)
        if hasattr(reader, "columns")
        else FrameColumns(cast(FeatureReader, reader))
    )
    times = pd.Series(requests["event_timestamp"]) if "event_timestamp" in requests else None

    def entities(key: str, ids: Any, rows: np.ndarray) -> dict[str, Any]:
        found: dict[str, Any] = {key: np.asarray(ids, dtype=object)}
        if times is not None:
            found["event_timestamp"] = times.iloc[rows].reset_index(drop=True)
        return found

    everyone = np.arange(len(requests["group"]))
    read = columns.columns(
        LISTENER_FEATURES, entities("listener_id", requests["listener_id"], everyone)
    )
    listeners = {
        "group": np.asarray(requests["group"], dtype=np.int64),
        "listener_id": _strings(requests["listener_id"]),
        "market": _strings(read["market"]),
        "age_bucket": _strings(read["age_bucket"]),
        "account_age_days": _floats(read["account_age_days"]),
        "familiar_items": np.asarray(read["familiar_items"], dtype=object),
    }
    familiar, _ = _flatten(read["familiar_items"], None, everyone)
    familiar_types, _ = _flatten(read["familiar_content_types"], None, everyone)
    if len(familiar_types.row) != len(familiar.row):
        raise ValueError("familiar_items and familiar_content_types differ in length")
    types = sorted({t for shelf in shelves for t in shelf.content_types})
    neighbours = _read_neighbours(columns, entities, shelves, types, familiar)
    popular = _read_popular(columns, entities, listeners, types)
    editorial = _read_editorial(columns, entities, listeners, types)

    flats = [familiar, *neighbours.values(), *popular.values(), *editorial.values()]
    items, codes = _vocabulary([flat.items for flat in flats])
    coded = iter(
        Lists(
            flat.row,
            code,
            flat.position,
            flat.value,
            codes[0][flat.seed] if flat.seed is not None else np.full(len(code), -1),
            flat.seed_rank if flat.seed_rank is not None else np.zeros(len(code), np.int64),
        )
        for flat, code in zip(flats, codes, strict=True)
    )
    return CandidateInputs(
        listeners,
        items,
        next(coded),
        familiar_types.items.to_numpy(zero_copy_only=False).astype(object),
        {key: next(coded) for key in neighbours},
        {key: next(coded) for key in popular},
        {key: next(coded) for key in editorial},
    )


def _read_neighbours(
    columns: ColumnReader,
    entities: Entities,
    shelves: list[Shelf],
    types: list[str],
    familiar: _Flat,
) -> dict[str, _Flat]:
    """Neighbour lists of each request's first familiar items (its seeds)."""
    sources = [s for shelf in shelves for s in shelf.candidates if isinstance(s, NeighbourSource)]
    if not sources:
        return {}
    chosen = np.flatnonzero(familiar.position < max(s.seeds for s in sources))
    seed_ids = familiar.items.take(pa.array(chosen, pa.int64())).to_numpy(zero_copy_only=False)
    seed_rows = familiar.row[chosen]
    names = [f"{prefix}_{t}" for t in types for prefix in ("neighbours", "neighbour_scores")]
    read = columns.columns(
        [f"item_neighbours:{name}" for name in names], entities("item_id", seed_ids, seed_rows)
    )
    result = {}
    for t in types:
        flat, owner = _flatten(read[f"neighbours_{t}"], read[f"neighbour_scores_{t}"], seed_rows)
        seed = chosen[owner]
        result[t] = _Flat(
            flat.row, flat.items, flat.position, flat.value, seed, familiar.position[seed]
        )
    return result


def _segments(listeners: dict[str, np.ndarray], rows_of: str) -> tuple[np.ndarray, list[str]]:
    """The requests with a segment of kind ``rows_of`` (market | market_age), and its id."""
    ids = [
        segment_id(market, ALL_AGES if rows_of == "market" else age_bucket)
        for market, age_bucket in zip(listeners["market"], listeners["age_bucket"], strict=True)
    ]
    rows = np.array([row for row, found in enumerate(ids) if found is not None], dtype=np.int64)
    return rows, [ids[row] for row in rows]


def _read_popular(
    columns: ColumnReader, entities: Entities, listeners: dict[str, np.ndarray], types: list[str]
) -> dict[tuple[str, str], _Flat]:
    """Each request's popular lists: (segment rows, list feature) -> the lists."""
    result = {}
    for rows_of in sorted({rows_of for rows_of, _, _ in POPULAR_LISTS.values()}):
        rows, ids = _segments(listeners, rows_of)
        lists = sorted({(p, c) for seg, p, c in POPULAR_LISTS.values() if seg == rows_of})
        names = [f"{p}_{t}{suffix}" for p, c in lists for t in types for suffix in ("", f"_{c}")]
        read = columns.columns(
            [f"segment_popular:{name}" for name in names], entities("segment_id", ids, rows)
        )
        for prefix, count in lists:
            for t in types:
                flat, _ = _flatten(read[f"{prefix}_{t}"], read[f"{prefix}_{t}_{count}"], rows)
                result[(rows_of, f"{prefix}_{t}")] = flat
    return result


def _read_editorial(
    columns: ColumnReader, entities: Entities, listeners: dict[str, np.ndarray], types: list[str]
) -> dict[str, _Flat]:
    """The editorial lists of each request's market, per content type."""
    rows = np.array([r for r, m in enumerate(listeners["market"]) if m is not None], np.int64)
    markets = listeners["market"][rows]
    read = columns.columns(
        [f"market_editorial:editorial_{t}" for t in types], entities("market_id", markets, rows)
    )
    return {t: _flatten(read[f"editorial_{t}"], None, rows)[0] for t in types}


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Proposals:
    """One source's candidates: request row, item code, rank within the request (its
    proposal order), reason text and the signals it carries into ranking."""

    row: np.ndarray
    item: np.ndarray
    rank: np.ndarray
    reason: np.ndarray
    signals: dict[str, np.ndarray] = field(default_factory=dict)


def _ranks_in_group(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal ``group`` values (``group`` sorted)."""
    return np.arange(len(group)) - np.searchsorted(group, group, side="left")


def _texts(template: str, values: Sequence[tuple[Any, ...]]) -> np.ndarray:
    """``template.format(*value)`` for each value, formatted once per distinct value."""
    cache: dict[tuple[Any, ...], str] = {}
    texts = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        if value not in cache:
            cache[value] = template.format(*value)
        texts[index] = cache[value]
    return texts


def _request_texts(template: str, inputs: CandidateInputs, columns: list[str]) -> np.ndarray:
    """``template`` filled with each request's ``columns`` of ``inputs.listeners``."""
    values = zip(*(inputs.listeners[column] for column in columns), strict=True)
    return _texts(template, list(values))


def _familiar_candidates(
    shelf: Shelf, source: FamiliarSource, inputs: CandidateInputs
) -> Proposals:
    rows = inputs.familiar.take(np.isin(inputs.familiar_types, shelf.content_types))
    rows = rows.take(np.lexsort((rows.position, inputs.groups[rows.row])))
    reason = np.full(len(rows), FAMILIAR_REASON, dtype=object)
    rank = _ranks_in_group(inputs.groups[rows.row])
    return Proposals(
        rows.row, rows.item, rank, reason, {"cand_familiar_rank": rows.position.astype(float)}
    )


def _neighbour_candidates(
    shelf: Shelf, source: NeighbourSource, inputs: CandidateInputs
) -> Proposals:
    pairs = Lists.concat([inputs.neighbours[t] for t in shelf.content_types])
    pairs = pairs.take(pairs.seed_rank < source.seeds)
    group = inputs.groups[pairs.row]
    key = group * len(inputs.items) + pairs.item
    # The best seed of each (request, item): highest score, then first seed id.
    by_key = np.lexsort((pairs.seed, -pairs.value, key))
    sorted_keys = key[by_key]
    best = by_key[np.flatnonzero(np.diff(sorted_keys, prepend=sorted_keys[:1] - 1))]
    _, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, weights=pairs.value)  # by ascending key, as ``best``
    ranked = np.lexsort((pairs.item[best], -total, group[best]))
    chosen = best[ranked]
    seeds, seed_of = np.unique(pairs.seed[chosen], return_inverse=True)
    reason = _texts("because you played {}", [(seed,) for seed in inputs.items[seeds]])[seed_of]
    return Proposals(
        pairs.row[chosen],
        pairs.item[chosen],
        _ranks_in_group(group[chosen]),
        reason,
        {"cand_neighbour_score": total[ranked]},
    )


_POPULAR_REASONS = {
    "market": "popular in {1}",
    "market_age": "popular with {0} listeners in {1}",
    "market_age_new": "what new {0} listeners in {1} play",
}


def _popular_candidates(shelf: Shelf, source: PopularSource, inputs: CandidateInputs) -> Proposals:
    rows_of, prefix, _ = POPULAR_LISTS[source.segment]
    rows = Lists.concat([inputs.popular[(rows_of, f"{prefix}_{t}")] for t in shelf.content_types])
    group = inputs.groups[rows.row]
    rows = rows.take(np.lexsort((rows.item, -rows.value, group)))
    reason = _request_texts(_POPULAR_REASONS[source.segment], inputs, ["age_bucket", "market"])
    rank = _ranks_in_group(inputs.groups[rows.row])
    rank_name, listeners_name = _popular_feature_names(source)
    signals = {rank_name: rank.astype(float), listeners_name: rows.value}
    return Proposals(rows.row, rows.item, rank, reason[rows.row], signals)


def _popular_feature_names(source: PopularSource) -> tuple[str, str]:
    _, _, count = POPULAR_LISTS[source.segment]
    return f"cand_popular_{source.segment}_rank", f"cand_popular_{source.segment}_{count}"


def _editorial_candidates(
    shelf: Shelf, source: EditorialSource, inputs: CandidateInputs
) -> Proposals:
    rows = Lists.concat([inputs.editorial[t] for t in shelf.content_types])
    # Newest first across types: interleave each type's list by its position.
    rows = rows.take(np.lexsort((rows.item, rows.position, inputs.groups[rows.row])))
    rank = _ranks_in_group(inputs.groups[rows.row])
    reason = _request_texts("editors' pick in {}", inputs, ["market"])[rows.row]
    return Proposals(rows.row, rows.item, rank, reason, {"cand_editorial_rank": rank.astype(float)})


CandidateSource = Callable[[Shelf, Any, CandidateInputs], Proposals]
"""Stage-1 proposals of one source of a shelf."""

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


def _as_floats(values: Any) -> np.ndarray:
    if isinstance(values, pd.Series):
        return pd.to_numeric(values).to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray(values, dtype=np.float64)


def in_audience(shelf: Shelf, account_age_days: Any) -> np.ndarray:
    """Which requests the shelf is shown to (and evaluated on); unknown listeners (no
    account age) count as new. Training uses every listener: the model learns from all."""
    age = _as_floats(account_age_days)
    limit = shelf.audience.max_account_age_days
    if limit is None:
        return np.ones(len(age), dtype=bool)
    return np.isnan(age) | (age <= limit)


def audience_rows(shelf: Shelf, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows (with ``account_age_days``) of requests in the shelf's audience, renumbered:
    what the shelf is served to, so what it is evaluated on and profiled over."""
    return rows[in_audience(shelf, rows["account_age_days"])].reset_index(drop=True)


@dataclass(frozen=True)
class Candidates:
    """A shelf's candidates for a batch of requests, as arrays: one element per (request,
    item), sorted by group then proposal order; ``signals`` in
    ``candidate_feature_names`` order (NaN where a source did not propose the item)."""

    group: np.ndarray
    item_id: np.ndarray
    source: np.ndarray
    reason: np.ndarray
    signals: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.group)

    def frame(self) -> pd.DataFrame:
        """The candidates as a DataFrame: ``CANDIDATE_COLUMNS`` + the signals."""
        columns = {
            "group": self.group,
            "item_id": self.item_id,
            "source": self.source,
            "reason": self.reason,
            **self.signals,
        }
        return pd.DataFrame(columns)


def propose(shelf: Shelf, inputs: CandidateInputs) -> Candidates:
    """Candidates of ``shelf`` for every request in ``inputs``.

    Sources are merged in declaration order; an item proposed by several sources keeps the
    first one as its ``source`` and ``reason`` but carries every source's signal
    (``candidate_feature_names``). Familiar items are removed from discovery shelves, and
    each request keeps at most ``max_candidates``.
    """
    n_items = len(inputs.items)
    outputs = [_SOURCES[source.kind](shelf, source, inputs) for source in shelf.candidates]
    kept = [out.rank < source.limit for source, out in zip(shelf.candidates, outputs, strict=True)]
    row = np.concatenate([out.row[top] for out, top in zip(outputs, kept, strict=True)])
    item = np.concatenate([out.item[top] for out, top in zip(outputs, kept, strict=True)])
    rank = np.concatenate([out.rank[top] for out, top in zip(outputs, kept, strict=True)])
    reason = np.concatenate([out.reason[top] for out, top in zip(outputs, kept, strict=True)])
    order = np.concatenate(
        [np.full(int(top.sum()), index) for index, top in enumerate(kept)]
    ).astype(np.int64)
    group = inputs.groups[row]
    merged = np.lexsort((rank, order, group))
    keys = group[merged] * n_items + item[merged]
    _, first = np.unique(keys, return_index=True)
    keep = np.zeros(len(keys), dtype=bool)
    keep[first] = True
    if shelf.exclude_familiar:
        familiar = inputs.familiar
        keep &= ~np.isin(keys, inputs.groups[familiar.row] * n_items + familiar.item)
    merged, keys = merged[keep], keys[keep]
    within = _ranks_in_group(group[merged]) < shelf.max_candidates
    merged, keys = merged[within], keys[within]
    kinds = np.array([source.kind for source in shelf.candidates], dtype=object)
    signals: dict[str, np.ndarray] = {}
    for out in outputs:
        found = _positions(inputs.groups[out.row] * n_items + out.item, keys)
        for name, values in out.signals.items():
            # A trailing NaN is what -1 (not proposed by this source) reads.
            signals.setdefault(name, np.append(values, np.nan)[found])
    return Candidates(
        group[merged],
        inputs.items[item[merged]],
        kinds[order[merged]],
        reason[merged],
        {name: signals[name] for name in candidate_feature_names(shelf)},
    )


def _positions(source_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """For each of ``keys``, its first position in ``source_keys``, or -1."""
    unique_keys, first = np.unique(source_keys, return_index=True)
    if not len(unique_keys):
        return np.full(len(keys), -1)
    found = np.minimum(np.searchsorted(unique_keys, keys), len(unique_keys) - 1)
    return np.where(unique_keys[found] == keys, first[found], -1)


def generate_candidates(shelf: Shelf, inputs: CandidateInputs) -> pd.DataFrame:
    """``propose`` as a DataFrame: one row per (group, item) with columns
    ``CANDIDATE_COLUMNS`` + the candidate features, sorted by group then proposal order."""
    return propose(shelf, inputs).frame()
