"""Opening, applying and materializing homerec's Feast feature store.

``feature_repo/`` stays a plain Feast repository (``feast -c feature_repo apply`` works on
it); homerec opens the same repository with its paths pointed at ``Settings.data_dir`` and
the online store chosen by ``Settings.online_store``.
"""

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from feast import FeatureService, FeatureStore
from feast.feature_view import FeatureViewState
from feast.repo_config import RepoConfig
from feast.repo_operations import apply_total_with_repo_instance, parse_repo

from training.core.errors import UserError
from training.core.layout import WorldPaths, read_world_meta
from training.core.settings import Settings

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "HOMEREC_DATA_DIR"
"""The variable the declarations in feature_repo/ read their source paths from."""


def feature_store_yaml(settings: Settings) -> Path:
    """The feature_store*.yaml of the configured online store."""
    name = "feature_store.redis.yaml" if settings.online_store == "redis" else "feature_store.yaml"
    return settings.feature_repo / name


def _fail_fast(connection: str, seconds: float) -> str:
    """A Feast Redis connection string for serving: socket operations time out after
    ``seconds`` and failed commands are not retried (redis-py otherwise retries with
    backoff for seconds), so a dead or slow store degrades a shelf quickly. Options the
    string sets itself are kept."""
    for option, value in (
        ("socket_timeout", seconds),
        ("socket_connect_timeout", seconds),
        ("retry", "null"),
    ):
        if f"{option}=" not in connection:
            connection += f",{option}={value}"
    return connection


def repo_config(settings: Settings, redis_timeout: float | None = None) -> RepoConfig:
    """The repository's yaml, with registry and online store pointed where settings say;
    ``redis_timeout`` bounds each Redis call and turns retries off (serving); by default
    redis-py's own behaviour (no timeout, retries)."""
    raw: dict[str, Any] = yaml.safe_load(
        os.path.expandvars(feature_store_yaml(settings).read_text())
    )
    repo = settings.feature_repo.resolve()

    def in_feast_dir(name: str) -> str:
        # Relative to the repo, as the yaml writes them: for the default data directory the
        # Feast CLI and homerec then name the same files the same way (Feast compares
        # paths as strings when it plans infrastructure changes).
        return os.path.relpath(settings.feast_dir.resolve() / name, repo)

    raw["registry"] = in_feast_dir("registry.db")
    if settings.online_store == "redis":
        connection = settings.redis_connection
        if redis_timeout is not None:
            connection = _fail_fast(connection, redis_timeout)
        raw["online_store"]["connection_string"] = connection
    else:
        raw["online_store"]["path"] = in_feast_dir("online_store.db")
    config = RepoConfig(**raw)
    config.repo_path = repo
    return config


def open_store(settings: Settings, redis_timeout: float | None = None) -> FeatureStore:
    """A FeatureStore on the settings' data directory and online store."""
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    config = repo_config(settings, redis_timeout)
    return FeatureStore(repo_path=str(config.repo_path), config=config)


@contextlib.contextmanager
def _declarations_environment(settings: Settings):
    """Import context of the declarations: inside the repo, reading this data directory.

    Feast imports repository files as top-level modules; they are dropped from
    ``sys.modules`` so each apply reads the declarations for the current data directory.
    """
    repo = settings.feature_repo.resolve()
    previous = os.environ.get(DATA_DIR_ENV)
    os.environ[DATA_DIR_ENV] = str(settings.data_dir.resolve())
    sys.path.insert(0, str(repo))
    try:
        with contextlib.chdir(repo):
            for path in repo.glob("*.py"):
                sys.modules.pop(path.stem, None)
            yield repo
    finally:
        sys.path.remove(str(repo))
        if previous is None:
            os.environ.pop(DATA_DIR_ENV, None)
        else:
            os.environ[DATA_DIR_ENV] = previous


class ForeignRegistryError(UserError, ValueError):
    """The Feast registry was copied from another data directory."""


def _foreign_online_stores(store: FeatureStore, settings: Settings) -> list[str]:
    """SQLite online stores the registry's infrastructure names outside this data
    directory. Feast's apply tears down infrastructure it no longer plans, so applying a
    registry copied from another data directory would drop that directory's tables."""
    own = (settings.feast_dir / "online_store.db").resolve()
    repo = Path(store.repo_path)
    try:
        objects = store.registry.get_infra(store.project).infra_objects
    except Exception:  # no registry yet, or no infrastructure recorded: nothing to protect
        return []
    declared = (getattr(obj, "path", None) for obj in objects)
    paths = {(repo / path).resolve() for path in declared if path}
    return sorted(str(path) for path in paths if path != own)


@contextlib.contextmanager
def _feast_prints_to_debug_log() -> Iterator[None]:
    """Feast's apply and materialize print a line per object to stdout; keep them out of
    the command's output (which may be JSON) and in the debug log instead."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        logger.debug("feast: %s", printed.getvalue().strip())


def apply_definitions(settings: Settings) -> FeatureStore:
    """``feast apply`` of feature_repo/ against the settings' registry and online store.

    Refuses (ForeignRegistryError) a registry whose SQLite online store lies in another
    data directory: the apply would drop that store's tables."""
    store = open_store(settings)
    foreign = _foreign_online_stores(store, settings)
    if foreign:
        raise ForeignRegistryError(
            f"the Feast registry in {settings.feast_dir} belongs to another data directory "
            f"(its online store is {', '.join(foreign)}); applying here would drop that "
            f"store's tables. Copy a data directory without its feast/ folder, then run "
            "`homerec features apply` and `homerec features materialize`."
        )
    with _declarations_environment(settings) as repo, _feast_prints_to_debug_log():
        contents = parse_repo(repo)
        apply_total_with_repo_instance(
            store, store.project, store.registry, contents, skip_source_validation=False
        )
    logger.info(
        "applied %d feature views and %d feature services",
        len(contents.feature_views),
        len(contents.feature_services),
    )
    return store


def world_window(settings: Settings) -> tuple[datetime, datetime]:
    """(start, end) of the world, as timezone-aware datetimes."""
    meta = read_world_meta(WorldPaths(settings.world_dir))
    start = pd.Timestamp(meta["start"]).tz_convert("UTC").normalize()
    return start.to_pydatetime(), pd.Timestamp(meta["end"]).tz_convert("UTC").to_pydatetime()


def materialize(
    settings: Settings, end: datetime | None = None, incremental: bool = True
) -> datetime:
    """Load the online store with the latest feature values up to ``end`` (default: world end).

    Incremental (the default) continues from where the previous run ended, as ``feast
    materialize-incremental`` does; the first run, or ``incremental=False`` (after the
    tables were rebuilt), loads the whole world window.
    """
    store = open_store(settings)
    start, world_end = world_window(settings)
    end = end or world_end
    views = store.list_feature_views()
    with _feast_prints_to_debug_log():
        if incremental and all(view.most_recent_end_time is not None for view in views):
            store.materialize_incremental(end_date=end)
        else:
            store.materialize(start_date=start, end_date=end)
    logger.info("materialized %d feature views up to %s", len(views), end.isoformat())
    return end


SERVABLE_STATES = frozenset({FeatureViewState.STATE_UNSPECIFIED, FeatureViewState.AVAILABLE_ONLINE})
"""Feature view states Feast serves online features from."""


class UnservableViewsError(UserError, RuntimeError):
    """Feature views Feast refuses to serve from, e.g. left ``MATERIALIZING`` by an
    interrupted materialize; the message names them and the fix."""


def check_servable(store: FeatureStore) -> None:
    """Raise UnservableViewsError when any feature view is not in a servable state."""
    stuck = {
        view.name: FeatureViewState(view.state).name
        for view in store.list_feature_views()
        if FeatureViewState(view.state) not in SERVABLE_STATES
    }
    if stuck:
        states = ", ".join(f"{name} ({state})" for name, state in sorted(stuck.items()))
        raise UnservableViewsError(
            f"feature views Feast will not serve from: {states}; a materialize was "
            "interrupted: run `homerec features materialize` to repair"
        )


FeatureSelection = list[str] | FeatureService
"""Feature references ("view:feature") or a FeatureService (one model version's features)."""


def feature_names(selection: FeatureSelection) -> list[str]:
    """Column names a read of ``selection`` returns, in order."""
    if isinstance(selection, FeatureService):
        return [
            feature.name
            for projection in selection.feature_view_projections
            for feature in projection.features
        ]
    return [reference.split(":", 1)[1] for reference in selection]


def aligned(entities: pd.DataFrame, result: pd.DataFrame, keys: list[str], names: list[str]):
    """``result`` rows (one per unique entity) matched back to every row of ``entities``."""
    merged = entities[keys].merge(result[keys + names], on=keys, how="left")
    merged.index = entities.index
    return merged[names]


class OfflineReader:
    """Point-in-time reads (``get_historical_features``) for entity rows with event_timestamp."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def read(self, features: FeatureSelection, entities: pd.DataFrame) -> pd.DataFrame:
        names = feature_names(features)
        if entities.empty:
            return pd.DataFrame(columns=names, index=entities.index)
        keys = list(entities.columns)
        unique = entities.drop_duplicates().reset_index(drop=True)
        unique["event_timestamp"] = pd.to_datetime(unique["event_timestamp"], utc=True)
        result = self.store.get_historical_features(entity_df=unique, features=features).to_df()
        result["event_timestamp"] = pd.to_datetime(result["event_timestamp"], utc=True)
        entities = entities.assign(
            event_timestamp=pd.to_datetime(entities["event_timestamp"], utc=True)
        )
        return aligned(entities, result, keys, names)


def online_as_of(store: FeatureStore) -> datetime:
    """The time the online store's values describe: its latest materialization end (now,
    if it was never materialized: then it holds nothing and the time does not matter)."""
    ends = [end for view in store.list_feature_views() for _, end in view.materialization_intervals]
    return max(ends) if ends else datetime.now(UTC)


def request_fields(store: FeatureStore, selection: FeatureSelection) -> set[str]:
    """Names of the request fields the on-demand views in ``selection`` need."""
    if isinstance(selection, FeatureService):
        names = {projection.name for projection in selection.feature_view_projections}
    else:
        names = {reference.split(":", 1)[0] for reference in selection}
    return {
        field.name
        for odfv in store.list_on_demand_feature_views()
        if odfv.name in names
        for source in odfv.source_request_sources.values()
        for field in source.schema
    }


class OnlineReader:
    """Latest values (``get_online_features``) for entity rows of join keys only; the
    request fields of on-demand views (the read time) are ``as_of`` (default:
    ``online_as_of``), as in serving's fast reader."""

    def __init__(self, store: FeatureStore, as_of: datetime | None = None) -> None:
        self.store = store
        self.as_of = as_of or online_as_of(store)

    def read(self, features: FeatureSelection, entities: pd.DataFrame) -> pd.DataFrame:
        names = feature_names(features)
        keys = list(entities.columns)
        unique = entities.dropna().drop_duplicates()
        if unique.empty:
            return pd.DataFrame(columns=names, index=entities.index)
        read_time = dict.fromkeys(request_fields(self.store, features), self.as_of)
        rows = [{**row, **read_time} for row in unique.to_dict("records")]
        result = self.store.get_online_features(features=features, entity_rows=rows).to_df()
        return aligned(entities, result, keys, names)
