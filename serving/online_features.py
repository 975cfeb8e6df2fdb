"""Fast online feature reads for serving, through the same Feast definitions.

``FeatureStore.get_online_features`` spends about 90 ms on a Home page's 300 candidates
here, almost all of it in per-row Python around the store read. Serving reads the same
feature views, FeatureServices and on-demand views two cheaper ways:

* **Entity snapshot.** Views keyed by anything but the listener (item stats, item
  neighbours, popular per segment, editorial per market) are the same for every request.
  :class:`EntitySnapshot` reads each of them once, with ``get_online_features`` itself, for
  every entity id of the view's offline source, and keeps the frames in memory. Its
  ``version`` is the views' materialization record in the Feast registry (latest end and
  number of loads): any later materialization, including a full reload over the same
  window, makes it stale (:meth:`EntitySnapshot.is_current`) and serving reloads.
* **Per-request views** (the listener's profile and familiar items, listener × item
  pairs): one batched ``online_read`` of Feast's online store per view (SQLite or Redis),
  values decoded as ``OnlineResponse`` decodes them.

On-demand feature views run their own transformation on the assembled inputs; a request
field (the read time of ``listener_item_relative``) is the snapshot's ``as_of``, the time
the online store's values describe. The parity test checks that
:class:`FastOnlineReader` returns the values ``OnlineReader`` (``get_online_features``)
returns for the same rows.
"""

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureService, FeatureStore, FeatureView, FileSource, OnDemandFeatureView
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType

from training.features.store import (
    FeatureSelection,
    OnlineReader,
    aligned,
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
class EntitySnapshot:
    """In-memory online values of the views not keyed by the listener.

    ``frames[view]`` holds one row per entity id (indexed by the view's join key) with
    every feature of the view, as ``get_online_features`` returned it.
    """

    version: str
    frames: dict[str, pd.DataFrame]
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
        frames: dict[str, pd.DataFrame] = {}
        for view in views:
            keys = _join_keys(view)
            if len(keys) != 1:
                raise ValueError(f"view {view.name!r}: snapshots need one join key, got {keys}")
            ids = _source_ids(view, repo_path)
            references = [f"{view.name}:{feature.name}" for feature in view.features]
            parts = [
                reader.read(references, ids.iloc[start : start + SNAPSHOT_BATCH])
                for start in range(0, len(ids), SNAPSHOT_BATCH)
            ]
            frame = pd.concat(parts) if parts else pd.DataFrame(columns=feature_names(references))
            frame.index = pd.Index(ids[keys[0]].astype(str), name=keys[0])
            frames[view.name] = frame
            logger.debug("snapshot of %s: %d ids", view.name, len(frame))
        return cls(version, frames, online_as_of(store))

    def is_current(self, store: FeatureStore) -> bool:
        """False once a later materialization of a snapshotted view is registered."""
        store.refresh_registry()
        return snapshot_version(store, self.frames) == self.version

    def rows(self, view: str, features: list[str], ids: pd.Series) -> pd.DataFrame:
        """``features`` of ``view`` for each id. An id the snapshot lacks gets what Feast
        gives a missing entity: None in object columns (lists, strings), NaN in numbers."""
        frame = self.frames[view]
        result = frame[features].reindex(ids.astype(str).to_numpy())
        result.index = ids.index
        unknown = ~ids.astype(str).isin(frame.index).to_numpy()
        if unknown.any():
            for name in result.columns[result.dtypes.map(pd.api.types.is_object_dtype)]:
                result[name] = result[name].where(~unknown, None)
        return result


# --------------------------------------------------------------------------- the reader


_MISSING = Value()
"""What ``get_online_features`` returns for a value the store does not hold."""


_SCALARS = frozenset(
    ("int64_val", "int32_val", "double_val", "float_val", "string_val", "bool_val")
)
"""Value kinds decoded by plain attribute access (as Feast decodes them, faster)."""


def _decoded(values: list[Value]) -> list:
    """Python values as ``OnlineResponse`` decodes them (Feast's own decoder for anything
    but scalars), missing values as None."""
    decoded: list[Any] = []
    for value in values:
        kind = value.WhichOneof("val")
        if kind is None:
            decoded.append(None)
        elif kind in _SCALARS:
            decoded.append(getattr(value, kind))
        else:
            decoded.append(feast_value_type_to_python_type(value))
    return decoded


def _entity_values(values: list, value_type: ValueType) -> list[Value]:
    if value_type == ValueType.STRING:
        return [Value(string_val=str(value)) for value in values]
    return python_values_to_proto_values(values, value_type)


def _aligned_rows(
    entities: pd.DataFrame, unique: pd.DataFrame, result: pd.DataFrame, keys: list[str]
) -> pd.DataFrame:
    """``result`` (one row per ``unique`` entity, in its order) for every row of
    ``entities``: by position when the rows were unique already, else by a join."""
    if len(unique) == len(entities):
        result.index = entities.index
        return result
    if len(unique) == 1 and entities[keys].notna().all(axis=None):
        repeated = result.iloc[np.zeros(len(entities), dtype=np.intp)]
        repeated.index = entities.index
        return repeated
    return aligned(entities, pd.concat([unique, result], axis=1), keys, list(result.columns))


class FastOnlineReader:
    """A ``FeatureReader`` returning what ``OnlineReader`` returns, faster (see module doc)."""

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
        self._online_store = store._get_provider().online_store
        self._plans: dict[tuple, tuple[dict[str, ViewRequest], list[OnDemandFeatureView]]] = {}
        self._entity_types = {
            entity.join_key: entity.value_type for entity in store.list_entities()
        }

    def _plan(self, selection: FeatureSelection):
        key = (selection.name,) if isinstance(selection, FeatureService) else tuple(selection)
        if key not in self._plans:
            self._plans[key] = _view_features(self.store, selection)
        return self._plans[key]

    def _online_rows(self, request: ViewRequest, entities: pd.DataFrame) -> pd.DataFrame:
        """One ``online_read`` for the unique entity rows; aligned back to ``entities``."""
        keys = _join_keys(request.view)
        unique = entities[keys].dropna().drop_duplicates().reset_index(drop=True)
        if unique.empty:
            return pd.DataFrame(columns=request.features, index=entities.index)
        columns = {
            key: _entity_values(unique[key].tolist(), self._entity_types.get(key, ValueType.STRING))
            for key in keys
        }
        entity_keys = [
            EntityKey(join_keys=keys, entity_values=[columns[key][row] for key in keys])
            for row in range(len(unique))
        ]
        results = self._online_store.online_read(  # a copy: Feast's Redis store appends to it
            self.store.config, request.view, entity_keys, list(request.features)
        )
        values: dict[str, list[Value]] = {name: [] for name in request.features}
        missing = 0
        for _, row in results:
            missing += row is None
            for name in request.features:
                values[name].append((row or {}).get(name) or _MISSING)
        if missing:
            self.on_missing(request.view.name, missing)
        result = pd.DataFrame({name: _decoded(column) for name, column in values.items()})
        return _aligned_rows(entities, unique, result, keys)

    def _view_rows(self, request: ViewRequest, entities: pd.DataFrame) -> pd.DataFrame:
        if request.view.name in self.snapshot.frames:
            (key,) = _join_keys(request.view)
            return self.snapshot.rows(request.view.name, request.features, entities[key])
        return self._online_rows(request, entities)

    def read(self, features: FeatureSelection, entities: pd.DataFrame) -> pd.DataFrame:
        names = feature_names(features)
        if entities.empty:
            return pd.DataFrame(columns=names, index=entities.index)
        views, on_demand = self._plan(features)
        parts = [self._view_rows(request, entities) for request in views.values()]
        frame = pd.concat(parts, axis=1) if parts else pd.DataFrame(index=entities.index)
        frame = frame.loc[:, ~frame.columns.duplicated()]
        for odfv in on_demand:
            inputs = frame.reset_index(drop=True)
            for source in odfv.source_request_sources.values():
                for request_field in source.schema:
                    inputs[request_field.name] = self.snapshot.as_of
            outputs = odfv.feature_transformation.transform(inputs)
            outputs.index = frame.index
            frame = pd.concat([frame, outputs], axis=1)
        return frame[names]


class SnapshotReader(FastOnlineReader):
    """What serving knows without the online store: snapshotted views as usual, every
    per-request view missing (as for an unknown listener). Used when the store fails, so
    a shelf can still show popular and editorial cards ranked by its heuristic."""

    def _online_rows(self, request: ViewRequest, entities: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {name: pd.Series([None] * len(entities), dtype=object) for name in request.features},
            index=entities.index,
        )
