"""Fast online feature reads for serving, through the same Feast definitions.

``FeatureStore.get_online_features`` spends tens of milliseconds on a Home page's
candidates, almost all of it in per-row Python around the store read. Serving reads the
same feature views, FeatureServices and on-demand views as arrays:

* **Entity snapshot.** Views keyed by anything but the listener (item stats, item
  neighbours, popular per segment, editorial per market) are the same for every request.
  :class:`EntitySnapshot` reads each of them once, with ``get_online_features`` itself, for
  every entity id of the view's offline source, and keeps one array per feature, indexed
  by entity id. Its ``version`` is the views' materialization record in the Feast
  registry (latest end and number of loads): any later materialization, including a full
  reload over the same window, makes it stale (:meth:`EntitySnapshot.is_current`) and
  serving loads a new one and swaps it in whole.
* **Per-request views** (the listener's profile and familiar items, listener × item
  pairs): every view of a read in one round trip to the online store, decoded straight
  into arrays (serving/online_rows.py). A Home page reads through a :class:`PageReader`,
  which keeps what it read: the listener once for stage 1 and every shelf, and the pairs
  of every shelf's candidates prefetched together.

On-demand feature views run their own transformation (their functions take any mapping
of columns) on those arrays, once per entity row of a page; a request field (the read
time of ``listener_item_relative``) is the snapshot's ``as_of``, the time the online
store's values describe. The parity tests (tests/serving_checks.py) check that
:class:`FastOnlineReader` and a page return the values ``OnlineReader``
(``get_online_features``) returns for the same rows, on SQLite and on Redis.
"""

import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureService, FeatureStore, FeatureView, FileSource, OnDemandFeatureView

from serving.online_rows import Columns, RowRead, RowsRead, column, is_numeric, online_rows
from training.features.store import (
    FeatureSelection,
    OnlineReader,
    feature_names,
    online_as_of,
)

logger = logging.getLogger(__name__)

REQUEST_ENTITY = "listener_id"
"""Views keyed by this join key are read per request; every other view is snapshotted."""
SNAPSHOT_BATCH = 2000
"""Entity ids per ``get_online_features`` call while building a snapshot."""


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ViewRequest:
    """Features of one view a read needs, and the columns it returns them as."""

    view: FeatureView
    features: list[str] = field(default_factory=list)


def _view_and_feature(reference: str) -> tuple[str, str]:
    """``view:feature`` as ``(view, feature)``."""
    view, _, feature = reference.partition(":")
    return view, feature


def _view_features(
    store: FeatureStore, selection: FeatureSelection
) -> tuple[dict[str, ViewRequest], list[OnDemandFeatureView]]:
    """The regular views (with the features to read, including every input of the
    requested on-demand views) and the on-demand views that ``selection`` names."""
    if isinstance(selection, FeatureService):
        references = [
            (projection.name, feature.name)
            for projection in selection.feature_view_projections
            for feature in projection.features
        ]
    else:
        references = [_view_and_feature(reference) for reference in selection]
    on_demand_views = {odfv.name: odfv for odfv in store.list_on_demand_feature_views()}
    views: dict[str, ViewRequest] = {}
    on_demand: dict[str, OnDemandFeatureView] = {}

    def need(view_name: str, feature: str) -> None:
        if view_name not in views:
            views[view_name] = ViewRequest(store.get_feature_view(view_name))
        if feature not in views[view_name].features:
            views[view_name].features.append(feature)

    for view_name, feature in references:
        if view_name not in on_demand_views:
            need(view_name, feature)
        elif view_name not in on_demand:
            on_demand[view_name] = odfv = on_demand_views[view_name]
            for source in odfv.source_feature_view_projections.values():
                for source_feature in source.features:
                    need(source.name, source_feature.name)
    return views, list(on_demand.values())


def _join_keys(view: FeatureView) -> list[str]:
    return [column.name for column in view.entity_columns]


def _is_snapshotted(view: FeatureView) -> bool:
    return REQUEST_ENTITY not in _join_keys(view)


# --------------------------------------------------------------------------- snapshot


def _materialization(view: FeatureView) -> str:
    """When the view was last materialized up to, and how many loads it has had: a full
    reload over the same window (rebuilt tables) ends where the last one did, so the end
    alone would not tell the snapshot is stale."""
    intervals = view.materialization_intervals
    if not intervals:
        return "never"
    return f"{max(end for _, end in intervals).isoformat()}#{len(intervals)}"


def snapshot_version(store: FeatureStore, views: Iterable[str]) -> str:
    """The materialization state of ``views`` in the registry, as one comparable string."""
    return ";".join(
        f"{name}@{_materialization(store.get_feature_view(name))}" for name in sorted(views)
    )


def _source_ids(view: FeatureView, repo_path: Path) -> pd.DataFrame:
    """Every entity id in the view's offline source (a parquet file), unique."""
    source = view.batch_source
    if not isinstance(source, FileSource):
        raise TypeError(f"view {view.name}: a file (parquet) source is needed, not {source}")
    path = Path(source.path)
    if not path.is_absolute():
        path = repo_path / path
    keys = _join_keys(view)
    return pd.read_parquet(path, columns=keys).dropna().drop_duplicates().reset_index(drop=True)


@dataclass(frozen=True)
class SnapshotView:
    """One snapshotted view in memory: entity id -> row of every feature's array."""

    index: dict[str, int]
    columns: "Columns"

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays and of the list and string values they hold."""
        total = sum(sys.getsizeof(key) + 8 for key in self.index)
        for values in self.columns.values():
            total += values.nbytes
            if values.dtype == object:
                total += sum(_value_bytes(value) for value in values)
        return total


def _value_bytes(value: Any) -> int:
    if isinstance(value, list | tuple):
        return sys.getsizeof(value) + sum(sys.getsizeof(v) for v in value)
    return sys.getsizeof(value)


def _snapshot_view(view: FeatureView, reader: OnlineReader, ids: pd.DataFrame) -> SnapshotView:
    """Every feature of ``view`` for the entity ``ids``, read with ``get_online_features``."""
    (key,) = _join_keys(view)
    references = [f"{view.name}:{feature.name}" for feature in view.features]
    parts = [
        reader.read(references, ids.iloc[start : start + SNAPSHOT_BATCH])
        for start in range(0, len(ids), SNAPSHOT_BATCH)
    ]
    frame = pd.concat(parts) if parts else pd.DataFrame(columns=feature_names(references))
    columns = {
        feature.name: column(frame[feature.name].tolist(), is_numeric(view, feature.name))
        for feature in view.features
    }
    index = {str(entity): row for row, entity in enumerate(ids[key])}
    return SnapshotView(index, columns)


@dataclass(frozen=True)
class EntitySnapshot:
    """In-memory online values of the views not keyed by the listener, as arrays.

    ``views[view]`` holds every feature of the view for every entity id of its offline
    source, as ``get_online_features`` returned them (numbers as float64)."""

    version: str
    views: dict[str, SnapshotView]
    as_of: datetime
    """The time the online store's values describe (``online_as_of`` at load): what
    on-demand views relative to the read time see."""

    @classmethod
    def load(cls, store: FeatureStore) -> "EntitySnapshot":
        """Read every snapshotted view of the registry for all ids of its source."""
        store.refresh_registry()
        views = [view for view in store.list_feature_views() if _is_snapshotted(view)]
        version = snapshot_version(store, [view.name for view in views])
        reader = OnlineReader(store)
        repo_path = Path(store.repo_path)
        arrays: dict[str, SnapshotView] = {}
        for view in views:
            keys = _join_keys(view)
            if len(keys) != 1:
                raise ValueError(f"view {view.name!r}: snapshots need one join key, got {keys}")
            arrays[view.name] = _snapshot_view(view, reader, _source_ids(view, repo_path))
            logger.debug("snapshot of %s: %d ids", view.name, len(arrays[view.name].index))
        return cls(version, arrays, online_as_of(store))

    @cached_property
    def nbytes(self) -> int:
        """Memory the snapshot's values take in this process (list and string values
        counted; measured once)."""
        return sum(view.nbytes for view in self.views.values())

    def is_current(self, store: FeatureStore) -> bool:
        """False once a later materialization of a snapshotted view is registered."""
        store.refresh_registry()
        return snapshot_version(store, self.views) == self.version

    def columns(self, view: str, features: list[str], ids: Sequence[Any]) -> "Columns":
        """``features`` of ``view`` for each id: NaN (numbers) or None (lists, strings)
        for an id the snapshot lacks, as Feast gives a missing entity."""
        snapshot = self.views[view]
        rows = np.array(
            [snapshot.index.get(str(i), -1) if i is not None else -1 for i in ids], dtype=np.intp
        )
        return {name: _taken(snapshot.columns[name], rows) for name in features}

    def row_of(self, view: str, entity_id: str) -> int:
        """The snapshot row of ``entity_id`` in ``view``, or -1."""
        return self.views[view].index.get(entity_id, -1)


# --------------------------------------------------------------------------- the reader


EntityColumns = Mapping[str, Any]
"""Join key -> one value per entity row (an array, list or Series)."""


def _taken(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` with rows -1 missing: NaN for numbers, None for objects."""
    numeric = values.dtype.kind in "fiu"
    if len(values) == 0:
        return column([None] * len(rows), numeric)
    taken = values[rows]
    missing = rows < 0
    if not missing.any():
        return taken
    if numeric:
        return np.where(missing, np.nan, taken.astype(np.float64))
    taken[missing] = None
    return taken


@dataclass
class ViewRows:
    """Decoded rows of one per-request view: entity key -> row of ``columns``."""

    index: dict[tuple, int] = field(default_factory=dict)
    columns: Columns = field(default_factory=dict)

    def add(self, keys: list[tuple], columns: Columns) -> None:
        start = len(self.index)
        self.index.update((key, start + row) for row, key in enumerate(keys))
        for name, values in columns.items():
            old = self.columns.get(name)
            self.columns[name] = values if old is None else np.concatenate([old, values])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


@dataclass(frozen=True)
class _Pending:
    """A per-request view's part of a read: its entity rows and the ones to fetch."""

    request: ViewRequest
    rows: ViewRows
    tuples: list[tuple]
    new: list[tuple]
    features: list[str]


class FastOnlineReader:
    """A ``FeatureReader`` and stage-1 ``ColumnReader`` returning what ``OnlineReader``
    returns, faster (see module doc). ``page()`` gives a reader for one Home page, which
    reads each per-request entity (the listener, a listener x item pair) once."""

    def __init__(
        self,
        store: FeatureStore,
        snapshot: EntitySnapshot,
        on_missing: Callable[[str, int], None] | None = None,
    ) -> None:
        """``on_missing(view, rows)`` hears of entity rows the online store has no values
        for (an unknown listener, a listener × item pair never played)."""
        self.store = store
        self.snapshot = snapshot
        self.on_missing = on_missing or (lambda view, rows: None)
        self._rows = online_rows(store)
        self._plans: dict[tuple, tuple[dict[str, ViewRequest], list[OnDemandFeatureView]]] = {}

    def _plan(self, selection: FeatureSelection):
        key = (selection.name,) if isinstance(selection, FeatureService) else tuple(selection)
        if key not in self._plans:
            self._plans[key] = _view_features(self.store, selection)
        return self._plans[key]

    def page(self) -> "PageReader":
        return PageReader(self)

    def _online_read(self, reads: list[RowRead]) -> list[RowsRead]:
        """One read of the online store (one round trip on Redis) for every view's rows."""
        found = self._rows.read(reads)
        for read, rows in zip(reads, found, strict=True):
            if rows.missing:
                self.on_missing(read.view.name, rows.missing)
        return found

    def _pending(
        self, request: ViewRequest, entities: EntityColumns, cache: dict[str, ViewRows] | None
    ) -> _Pending:
        """The entity rows of a per-request view and those not yet read: with a page's
        ``cache``, rows it holds are not read again and new ones are read with every
        feature of the view (later reads of the page find them)."""
        keys = _join_keys(request.view)
        tuples = list(zip(*(entities[key] for key in keys), strict=True))
        rows = cache.setdefault(request.view.name, ViewRows()) if cache is not None else ViewRows()
        new = [
            row
            for row in dict.fromkeys(tuples)
            if row not in rows.index and not any(_missing(value) for value in row)
        ]
        features = (
            [f.name for f in request.view.features] if cache is not None else request.features
        )
        return _Pending(request, rows, tuples, new, features)

    def _fetch(self, pending: list[_Pending]) -> None:
        """Read the new rows of every pending view, in one online read."""
        todo = [p for p in pending if p.new]
        reads = [
            RowRead(p.request.view, _join_keys(p.request.view), p.new, p.features) for p in todo
        ]
        for part, found in zip(todo, self._online_read(reads) if reads else [], strict=True):
            part.rows.add(part.new, found.columns)

    @staticmethod
    def _taken_rows(part: _Pending) -> Columns:
        positions = np.array([part.rows.index.get(row, -1) for row in part.tuples], dtype=np.intp)
        view = part.request.view
        return {
            name: _taken(part.rows.columns.get(name, column([], is_numeric(view, name))), positions)
            for name in part.request.features
        }

    def columns(
        self,
        features: FeatureSelection,
        entities: EntityColumns,
        cache: dict[str, ViewRows] | None = None,
    ) -> Columns:
        """``features`` for the entity rows (join-key columns of equal length), one array
        per feature: numbers as float64 (NaN when missing), anything else as objects
        (None when missing); on-demand features computed on them. The per-request views
        are read together, in one round trip."""
        views, on_demand = self._plan(features)
        found: Columns = {}
        pending = []
        for request in views.values():
            if request.view.name in self.snapshot.views:
                (key,) = _join_keys(request.view)
                found.update(
                    self.snapshot.columns(request.view.name, request.features, entities[key])
                )
            else:
                pending.append(self._pending(request, entities, cache))
        self._fetch(pending)
        for part in pending:
            found.update(self._taken_rows(part))
        for odfv in on_demand:
            found.update(self._on_demand_rows(odfv, found, entities, cache))
        return {name: found[name] for name in feature_names(features)}

    def _on_demand_rows(
        self,
        odfv: OnDemandFeatureView,
        found: Columns,
        entities: EntityColumns,
        cache: dict[str, ViewRows] | None,
    ) -> Columns:
        """The on-demand view's outputs for every entity row; with a page's ``cache``,
        computed once per distinct entity (rows keyed by the entity columns given)."""
        rows = len(next(iter(entities.values())))
        if cache is None:
            return self._on_demand(odfv, found, rows)
        keys = sorted(entities)
        tuples = list(zip(*(entities[key] for key in keys), strict=True))
        done = cache.setdefault(f"on_demand:{odfv.name}", ViewRows())
        first: dict[tuple, int] = {}
        for position, row in enumerate(tuples):
            if row not in done.index and row not in first:
                first[row] = position
        if first:
            chosen = np.fromiter(first.values(), dtype=np.intp, count=len(first))
            inputs = {name: values[chosen] for name, values in found.items()}
            done.add(list(first), self._on_demand(odfv, inputs, len(chosen)))
        positions = np.array([done.index[row] for row in tuples], dtype=np.intp)
        return {name: values[positions] for name, values in done.columns.items()}

    def _on_demand(self, odfv: OnDemandFeatureView, found: Columns, rows: int) -> Columns:
        """The on-demand view's own transformation on its input arrays (its functions take
        any mapping of columns, see feature_repo); request fields (the read time) are the
        snapshot's ``as_of``."""
        names = [
            feature.name
            for source in odfv.source_feature_view_projections.values()
            for feature in source.features
        ]
        inputs: dict[str, np.ndarray] = {name: found[name] for name in dict.fromkeys(names)}
        read_time = pd.Timestamp(self.snapshot.as_of).tz_convert("UTC").tz_localize(None)
        for source in odfv.source_request_sources.values():
            for request_field in source.schema:
                inputs[request_field.name] = np.full(rows, read_time.to_datetime64())
        transformation = odfv.feature_transformation
        if transformation is None:
            raise ValueError(f"on-demand view {odfv.name!r} has no transformation")
        outputs = transformation.transform(inputs)
        return {name: outputs[name].to_numpy() for name in outputs.columns}

    def read(self, features: FeatureSelection, entities: pd.DataFrame) -> pd.DataFrame:
        names = feature_names(features)
        if entities.empty:
            return pd.DataFrame(columns=names, index=entities.index)
        columns = self.columns(features, {key: entities[key].tolist() for key in entities.columns})
        return pd.DataFrame(columns, index=entities.index)[names]


class PageReader:
    """A ``ColumnReader`` for one Home page: a ``FastOnlineReader`` that keeps what it
    read of per-request views, so stage 1 and every shelf read the listener once and a
    listener x item pair once (``prefetch`` reads a page's pairs in one round trip)."""

    def __init__(self, reader: FastOnlineReader) -> None:
        self.reader = reader
        self.cache: dict[str, ViewRows] = {}

    def columns(self, features: FeatureSelection, entities: EntityColumns) -> Columns:
        return self.reader.columns(features, entities, self.cache)

    def prefetch(self, selections: Sequence[FeatureSelection], entities: EntityColumns) -> None:
        """Read (in one online read per view) the per-request rows of ``entities`` that
        any of ``selections`` needs, for later ``columns`` calls to find."""
        views = {
            request.view.name: request
            for selection in selections
            for request in self.reader._plan(selection)[0].values()
            if request.view.name not in self.reader.snapshot.views
            and set(_join_keys(request.view)) <= set(entities)
        }
        self.reader._fetch(
            [self.reader._pending(request, entities, self.cache) for request in views.values()]
        )
        for selection in selections:  # on-demand features of the union, once
            self.columns(selection, entities)


class SnapshotReader(FastOnlineReader):
    """What serving knows without the online store: snapshotted views as usual, every
    per-request view missing (as for an unknown listener). Used when the store fails, so
    a shelf can still show popular and editorial cards ranked by its heuristic."""

    def _online_read(self, reads: list[RowRead]) -> list[RowsRead]:
        return [
            RowsRead(
                {
                    name: column([None] * len(read.rows), is_numeric(read.view, name))
                    for name in read.features
                },
                len(read.rows),
            )
            for read in reads
        ]
