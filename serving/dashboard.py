"""The manual-evaluation dashboard: a web page served by the Home ranker app.

Routes (``dashboard_router``, mounted with ``app.include_router(dashboard_router)``)::

    GET /dashboard                        the page (one self-contained HTML file, no CDN)
    GET /dashboard/api/listeners          listeners to pick from, filtered by market,
                                          tenure (new | established) and active days
    GET /dashboard/api/listener/{id}      the listener's online profile and recent plays
    GET /dashboard/api/compare/{id}       each shelf's cards from the production model, the
                                          registry's candidate and the heuristic
    GET /dashboard/api/metrics            per shelf: model vs baseline across versions, and
                                          NDCG@10 by slice from the latest evaluation
    GET /dashboard/api/drift              the latest drift report

The page is static; its own small script fetches the JSON routes and draws the tables
and plots (inline SVG). Everything the dashboard shows is computed by the code serving
and evaluation use: pages come from ``HomeRanker.home`` with shelf models swapped in,
features from the same Feast views through a ``FastOnlineReader``, tenure from the
evaluation's slice definition. Dashboard traffic is not served traffic, so it ranks on a
shadow of the serving state that neither logs feature vectors (drift would otherwise see
candidate models and picked listeners) nor counts in the app's Prometheus metrics.
"""

import functools
import json
import logging
import math
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse

from evaluation.drift_job import latest_report_path as drift_report_path
from evaluation.report import PRIMARY_K, slice_labels
from evaluation.report import latest_report_path as evaluation_report_path
from serving.deps import AppSettings, DashboardAccess, DashboardEnabled, LoadedRanker
from serving.metrics import ServingMetrics
from serving.online_features import FastOnlineReader
from serving.ranking import (
    HomeRanker,
    Page,
    RankedShelf,
    ShelfModel,
    heuristic_model,
    registry_shelf_model,
)
from serving.schemas import ID_PATTERN, MAX_K, SEGMENT_PATTERN
from training.core.layout import WorldPaths
from training.core.settings import Settings
from training.core.shelves import Shelf
from training.features.tables import NEW_LISTENER_DAYS
from training.models.registry import (
    CANDIDATE,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    RegistryLookupError,
)

logger = logging.getLogger(__name__)

PAGE_FILE = "dashboard.html"
"""The page, a resource of the ``serving`` package (shipped in the wheel with it)."""
RECENT_PLAYS = 20
"""Plays shown as the listener's recent listening."""
DIRECTORY_BATCH = 5000
"""Listeners per online read while building the listener directory."""
PROFILE_VIEW = "listener_profile"
FAMILIAR_VIEW = "listener_familiar"
DIRECTORY_FEATURES = [
    "account_age_days",
    "active_days_28d",
    "minutes_28d",
    "distinct_items_28d",
    "days_since_last_play",
]
"""Profile features the listener picker shows and filters on (besides market)."""
WORLD_LISTENER_COLUMNS = ["listener_id", "market", "age_bucket", "platform", "signup_at"]
COLUMNS = ("production", "candidate", "heuristic")
"""The three rankings the compare view shows side by side, in that order."""

_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)
"""The page may talk to this app only: no CDN, fonts or beacons, even by mistake."""


# --------------------------------------------------------------------------- dependencies


ListenerId = Annotated[
    str, Path(pattern=ID_PATTERN, description="Letters, digits and _ . : -, 1-128 chars.")
]


# --------------------------------------------------------------------------- per-state caches

_T = TypeVar("_T")


class _PerRanker:
    """Values derived from one serving state, built once and dropped with it: a reload
    makes a new ``HomeRanker``, so a new materialization or model is never shown stale."""

    def __init__(self) -> None:
        self._values: weakref.WeakKeyDictionary[HomeRanker, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.RLock()  # builds nest (the directory reads via the shadow)

    def get(self, ranker: HomeRanker, key: str, build: Callable[[], _T]) -> _T:
        with self._lock:
            values = self._values.setdefault(ranker, {})
            if key not in values:
                values[key] = build()
            return values[key]


_cached = _PerRanker()


def _shadow(ranker: HomeRanker) -> HomeRanker:
    """The serving state without its feature log and with metrics of its own."""

    def build() -> HomeRanker:
        return HomeRanker(
            ranker.store,
            ranker.snapshot,
            ranker.shelves,
            ranker.models,
            ranker.defaults,
            metrics=ServingMetrics(),
            feature_log=None,
        )

    return _cached.get(ranker, "shadow", build)


def _reader(ranker: HomeRanker) -> FastOnlineReader:
    """An online reader that does not count the dashboard's reads as missing-row metrics."""
    return _shadow(ranker).reader


def _view_references(ranker: HomeRanker, view: str) -> list[str]:
    return [f"{view}:{feature.name}" for feature in ranker.store.get_feature_view(view).features]


# --------------------------------------------------------------------------- JSON helpers


def _plain(value: Any) -> Any:
    """A JSON-safe copy: numpy scalars and arrays to Python, NaN/NaT/None to null,
    timestamps to ISO strings, floats rounded to 4 decimals for display."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(item) for item in value]
    if isinstance(value, pd.Timestamp | datetime):
        return None if pd.isna(value) else value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 4)
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    return value


def _read_json(path: FilePath, data_dir: FilePath) -> dict[str, Any]:
    """``{"available", "path", "modified_at", "content" | "error"}`` for a JSON object file
    another command writes: absent or unreadable is a state to show, not a server error.
    ``path`` is shown relative to ``data_dir`` (no filesystem paths in responses)."""
    shown = path.relative_to(data_dir) if path.is_relative_to(data_dir) else path.name
    answer: dict[str, Any] = {"available": False, "path": str(shown), "modified_at": None}
    try:
        text = path.read_text(encoding="utf-8")
        modified = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()
    except FileNotFoundError:
        return answer
    except OSError as error:
        return answer | {"error": f"unreadable: {error}"}
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        return answer | {"modified_at": modified, "error": f"not valid JSON: {error}"}
    if not isinstance(content, dict):
        return answer | {"modified_at": modified, "error": "expected a JSON object"}
    return answer | {"available": True, "modified_at": modified, "content": content}


def _sequence(value: Any) -> list[Any]:
    """A list feature's values; a missing list (None or NaN) is empty."""
    if isinstance(value, list | tuple | np.ndarray):
        return list(value)
    return []


# --------------------------------------------------------------------------- world tables


def _world_listeners(ranker: HomeRanker, settings: Settings) -> pd.DataFrame:
    """The world's listeners table (public attributes), indexed by listener id."""

    def build() -> pd.DataFrame:
        path = WorldPaths(settings.world_dir).listeners
        try:
            frame = pd.read_parquet(path, columns=WORLD_LISTENER_COLUMNS)
        except (OSError, ValueError) as error:
            logger.warning("dashboard: no listeners table (%s)", error)
            frame = pd.DataFrame(columns=WORLD_LISTENER_COLUMNS)
        frame["listener_id"] = frame["listener_id"].astype(str)
        return frame.drop_duplicates("listener_id").set_index("listener_id")

    return _cached.get(ranker, "world_listeners", build)


def _items(ranker: HomeRanker, settings: Settings) -> pd.DataFrame:
    """The catalog's genre and market per item id (cards and plays show them)."""

    def build() -> pd.DataFrame:
        path = WorldPaths(settings.world_dir).items
        try:
            frame = pd.read_parquet(path, columns=["item_id", "genre", "market"])
        except (OSError, ValueError) as error:
            logger.warning("dashboard: no items table (%s)", error)
            frame = pd.DataFrame(columns=["item_id", "genre", "market"])
        frame["item_id"] = frame["item_id"].astype(str)
        return frame.drop_duplicates("item_id").set_index("item_id")

    return _cached.get(ranker, "items", build)


def recent_plays(events: FilePath, listener_id: str, limit: int = RECENT_PLAYS) -> pd.DataFrame:
    """The listener's last ``limit`` plays, newest first. The parquet scan filters on
    ``listener_id`` batch by batch, so only that listener's rows are held in memory."""
    columns = ["item_id", "timestamp", "ms_played", "content_type"]
    try:
        dataset = ds.dataset(events, format="parquet")
    except (FileNotFoundError, OSError) as error:
        logger.warning("dashboard: no events table (%s)", error)
        return pd.DataFrame(columns=columns)
    table = dataset.to_table(columns=columns, filter=ds.field("listener_id") == listener_id)
    frame = table.to_pandas()
    return frame.sort_values("timestamp", ascending=False, kind="stable").head(limit)


# --------------------------------------------------------------------------- listeners


def _listener_directory(ranker: HomeRanker, settings: Settings) -> pd.DataFrame:
    """Every world listener with the profile features the picker filters on, read once per
    serving state from the online store (batched) — what serving sees, not the raw log."""

    def build() -> pd.DataFrame:
        world = _world_listeners(ranker, settings)
        ids = pd.DataFrame({"listener_id": world.index.to_numpy()})
        references = [
            f"{PROFILE_VIEW}:{name}" for name in ("market", "platform", *DIRECTORY_FEATURES)
        ]
        parts = [
            _reader(ranker).read(references, ids.iloc[start : start + DIRECTORY_BATCH])
            for start in range(0, len(ids), DIRECTORY_BATCH)
        ]
        empty = pd.DataFrame(columns=[reference.split(":")[1] for reference in references])
        online = pd.concat(parts) if parts else empty
        frame = pd.concat([ids, online.reset_index(drop=True)], axis=1)
        for column in DIRECTORY_FEATURES:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        frame["has_profile"] = frame["account_age_days"].notna()
        for column in ("market", "platform"):  # the world's value when the store has none
            fallback = world[column].reindex(frame["listener_id"]).to_numpy()
            frame[column] = frame[column].astype(object).where(frame[column].notna(), fallback)
        frame["age_bucket"] = world["age_bucket"].reindex(frame["listener_id"]).to_numpy()
        frame["tenure"] = slice_labels(frame)["tenure"].where(frame["has_profile"], "unknown")
        logger.info("dashboard: listener directory of %d listeners", len(frame))
        return frame.sort_values(
            ["active_days_28d", "listener_id"], ascending=[False, True], na_position="last"
        ).reset_index(drop=True)

    return _cached.get(ranker, "directory", build)


def filter_listeners(
    directory: pd.DataFrame,
    market: str | None,
    tenure: str | None,
    min_active_days: int | None,
) -> pd.DataFrame:
    """The directory rows matching every given filter (None: no filter)."""
    keep = pd.Series(True, index=directory.index)
    if market is not None:
        keep &= directory["market"] == market
    if tenure is not None:
        keep &= directory["tenure"] == tenure
    if min_active_days is not None:
        keep &= directory["active_days_28d"].fillna(0) >= min_active_days
    return directory[keep]


# --------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class Column:
    """One shelf as one ranking shows it; ``note`` says why it has no cards, if so."""

    available: bool
    model: str | None = None
    version: str | None = None
    degraded: bool = False
    problem: str | None = None
    note: str | None = None
    cards: tuple[dict[str, Any], ...] = ()


def _candidate_models(
    ranker: HomeRanker, settings: Settings
) -> tuple[dict[str, ShelfModel], dict[str, str]]:
    """Each shelf's registry candidate (loaded once per version), and for the shelves
    without one, why not (``no candidate``, or the registry error)."""
    registry = ModelRegistry(settings.model_registry_dir)
    models: dict[str, ShelfModel] = {}
    missing: dict[str, str] = {}
    for shelf in ranker.shelves:
        try:
            version = registry.alias(shelf.name, CANDIDATE)
            if version is None:
                missing[shelf.name] = "no candidate"
                continue
            sha256 = registry.get(shelf.name, version).sha256
            models[shelf.name] = _cached.get(
                ranker,
                f"candidate:{shelf.name}:{version}:{sha256}",
                functools.partial(registry_shelf_model, settings, ranker.store, shelf, version),
            )
        except RegistryLookupError:
            missing[shelf.name] = "no candidate"
        except RegistryError as error:  # corrupt or refused: say so instead of failing
            logger.warning("dashboard: candidate of %s unusable: %s", shelf.name, error)
            missing[shelf.name] = f"no candidate: {error}"
    return models, missing


def _card_rows(shelf: RankedShelf, items: pd.DataFrame) -> tuple[dict[str, Any], ...]:
    genres = items["genre"].reindex([card.item_id for card in shelf.cards]).to_numpy()
    return tuple(
        _plain({**asdict(card), "rank": rank, "genre": genre})
        for rank, (card, genre) in enumerate(zip(shelf.cards, genres, strict=True), start=1)
    )


def _column(
    page: Page, shelf: Shelf, model: ShelfModel, items: pd.DataFrame, note: str | None = None
) -> Column:
    ranked = next((s for s in page.shelves if s.shelf == shelf.name), None)
    if ranked is None:
        return Column(False, note="not in this listener's audience")
    return Column(
        True,
        model=ranked.model,
        version=model.version,
        degraded=ranked.degraded,
        problem=model.problem,
        note=note,
        cards=_card_rows(ranked, items),
    )


def compare_pages(
    ranker: HomeRanker, settings: Settings, listener_id: str, k: int | None
) -> dict[str, Any]:
    """The listener's page three times — production models, registry candidates (where a
    shelf has one; the others keep production so cross-shelf deduplication stays that of
    a real page), heuristics — regrouped per shelf as three columns."""
    shadow = _shadow(ranker)
    candidates, no_candidate = _candidate_models(ranker, settings)
    heuristics = {shelf.name: heuristic_model(shelf) for shelf in ranker.shelves}
    models: dict[str, dict[str, ShelfModel]] = {
        "production": ranker.models,
        "candidate": {**ranker.models, **candidates},
        "heuristic": heuristics,
    }
    pages = {
        name: shadow.home(listener_id, k=k, models=models[name] if name != "production" else None)
        for name in COLUMNS
        if name != "candidate" or candidates
    }
    items = _items(ranker, settings)
    shelves = []
    for shelf in ranker.shelves:
        columns: dict[str, Column] = {}
        for name in COLUMNS:
            if name == "candidate" and shelf.name in no_candidate:
                columns[name] = Column(False, note=no_candidate[shelf.name])
                continue
            columns[name] = _column(pages[name], shelf, models[name][shelf.name], items)
        shelves.append(
            {
                "shelf": shelf.name,
                "title": shelf.title,
                "k": k or shelf.k,
                "columns": {name: asdict(column) for name, column in columns.items()},
            }
        )
    return {
        "listener_id": listener_id,
        "cold_start": pages["production"].cold_start,
        "shelves": shelves,
    }


# --------------------------------------------------------------------------- metrics


def _ndcg_pair(metrics: Mapping[str, Any]) -> tuple[str | None, float | None, float | None]:
    """``(metric name, model value, baseline value)`` of the NDCG a version recorded at
    training (``valid_ndcg@k`` and ``valid_baseline_ndcg@k``)."""
    model = sorted(name for name in metrics if "ndcg" in name and "baseline" not in name)
    baseline = sorted(name for name in metrics if "ndcg" in name and "baseline" in name)
    name = model[0] if model else None
    return (
        name,
        _plain(metrics.get(name)) if name else None,
        _plain(metrics.get(baseline[0])) if baseline else None,
    )


def _number(value: Any) -> float | None:
    return _plain(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _version_row(record: ModelVersion) -> dict[str, Any]:
    """One version: validation NDCG recorded at training and, once the evaluation gate
    decided, the test-window NDCG of the version and of the heuristic it was held to
    (the decision's ``metric``, ``candidate`` and ``baseline``, evaluation/gate.py)."""
    metric, model, baseline = _ndcg_pair(record.metrics)
    decision = record.decision or {}
    return {
        "version": f"v{record.version}",
        "sha256": record.sha256[:12],
        "registered_at": record.registered_at,
        "aliases": list(record.aliases),
        "gate": record.gate,
        "metric": metric,
        "model": model,
        "baseline": baseline,
        "test_metric": decision.get("metric") if isinstance(decision.get("metric"), str) else None,
        "test_model": _number(decision.get("candidate")),
        "test_baseline": _number(decision.get("baseline")),
    }


def shelf_versions(settings: Settings, shelf: str) -> tuple[list[dict[str, Any]], str | None]:
    """Every registered version of the shelf with its model and baseline NDCG, and a
    registry error to show, if any."""
    try:
        records = ModelRegistry(settings.model_registry_dir).versions(shelf)
    except RegistryLookupError:
        return [], None
    except RegistryError as error:
        return [], str(error)
    return [_version_row(record) for record in records], None


def _slices(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """``{slice: {value: {groups, model, baseline, oracle}}}`` with NDCG@10 values."""
    key = f"ndcg@{PRIMARY_K}"
    result: dict[str, Any] = {}
    for name, values in (evaluation.get("slices") or {}).items():
        result[name] = {
            value: {
                "groups": entry.get("groups"),
                **{
                    system: _plain(entry[system].get(key))
                    for system in ("model", "baseline", "oracle")
                    if isinstance(entry.get(system), Mapping)
                },
            }
            for value, entry in values.items()
            if isinstance(entry, Mapping)
        }
    return result


def shelf_metrics(settings: Settings, shelves: list[Shelf]) -> dict[str, Any]:
    """Per shelf: versions (model vs baseline NDCG recorded at training) and, from the
    latest evaluation file, test-window NDCG@10 overall and by slice."""
    evaluation = _read_json(evaluation_report_path(settings), settings.data_dir)
    reports = (evaluation.get("content") or {}).get("shelves") or {}
    key = f"ndcg@{PRIMARY_K}"
    answer = []
    for shelf in shelves:
        versions, registry_error = shelf_versions(settings, shelf.name)
        report = reports.get(shelf.name)
        overall = None
        if isinstance(report, Mapping):
            overall = {
                system: _plain(report[system].get(key))
                for system in ("model", "baseline", "oracle")
                if isinstance(report.get(system), Mapping)
            }
            overall["model_vs_baseline"] = _plain(report.get("model_vs_baseline"))
        answer.append(
            {
                "shelf": shelf.name,
                "title": shelf.title,
                "versions": versions,
                "registry_error": registry_error,
                "evaluation": overall,
                "slices": _slices(report) if isinstance(report, Mapping) else None,
            }
        )
    return {
        "metric": key,
        "evaluation": {k: v for k, v in evaluation.items() if k != "content"},
        "shelves": answer,
    }


# --------------------------------------------------------------------------- routes

dashboard_router = APIRouter(
    prefix="/dashboard", tags=["dashboard"], dependencies=[DashboardEnabled]
)
dashboard_api = APIRouter(prefix="/api", dependencies=[DashboardAccess])
"""The JSON routes (listener data): behind the dashboard token when one is configured.
The page itself holds no data; its script sends the token it was opened with."""


@cache
def _page_html() -> str:
    return resources.files("serving").joinpath(PAGE_FILE).read_text(encoding="utf-8")


@dashboard_router.get("", response_class=HTMLResponse, include_in_schema=False)
def dashboard_page() -> HTMLResponse:
    """The dashboard page; ``?listener=<id>`` opens that listener."""
    return HTMLResponse(_page_html(), headers={"Content-Security-Policy": _CSP})


@dashboard_api.get("/listeners")
def listeners(
    ranker: LoadedRanker,
    settings: AppSettings,
    market: Annotated[str | None, Query(pattern=SEGMENT_PATTERN)] = None,
    tenure: Annotated[Literal["new", "established"] | None, Query()] = None,
    min_active_days: Annotated[int | None, Query(ge=0, le=366)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Listeners matching the filters, most active first (at most ``limit``), the
    number matching, and the markets to filter by."""
    directory = _listener_directory(ranker, settings)
    matching = filter_listeners(directory, market, tenure, min_active_days)
    columns = ["listener_id", "market", "age_bucket", "platform", "tenure", *DIRECTORY_FEATURES]
    return {
        "snapshot": ranker.snapshot.version,
        "total": int(len(matching)),
        "markets": sorted(str(m) for m in directory["market"].dropna().unique()),
        "new_listener_days": NEW_LISTENER_DAYS,
        "listeners": _plain(matching.head(limit)[columns].to_dict("records")),
    }


@dashboard_api.get("/listener/{listener_id}")
def listener(
    listener_id: ListenerId, ranker: LoadedRanker, settings: AppSettings
) -> dict[str, Any]:
    """The listener's world attributes, online profile and familiar items (as serving
    reads them) and their last plays from the world's events."""
    entities = pd.DataFrame({"listener_id": [listener_id]})
    references = _view_references(ranker, PROFILE_VIEW) + _view_references(ranker, FAMILIAR_VIEW)
    row = _reader(ranker).read(references, entities).iloc[0]
    world = _world_listeners(ranker, settings)
    attributes = world.loc[listener_id].to_dict() if listener_id in world.index else None
    plays = recent_plays(WorldPaths(settings.world_dir).events, listener_id)
    items = _items(ranker, settings)
    plays = plays.assign(
        genre=items["genre"].reindex(plays["item_id"]).to_numpy(),
        minutes=plays["ms_played"] / 60_000,
    )
    features = {name: value for name, value in row.items() if not name.startswith("familiar_")}
    familiar = list(_sequence(row.get("familiar_items")))
    types = list(_sequence(row.get("familiar_content_types")))
    return {
        "listener_id": listener_id,
        "in_world": attributes is not None,
        "has_profile": bool(pd.notna(row.get("account_age_days"))),
        "world": _plain(attributes),
        "features": _plain(features),
        "familiar_items": _plain(
            [
                {"item_id": item, "content_type": types[i] if i < len(types) else None}
                for i, item in enumerate(familiar)
            ]
        ),
        "recent": _plain(plays.to_dict("records")),
    }


@dashboard_api.get("/compare/{listener_id}")
def compare(
    listener_id: ListenerId,
    ranker: LoadedRanker,
    settings: AppSettings,
    k: Annotated[int | None, Query(ge=1, le=MAX_K)] = None,
) -> dict[str, Any]:
    """Per shelf: the cards of the production model, the candidate and the heuristic."""
    return compare_pages(ranker, settings, listener_id, k)


@dashboard_api.get("/metrics")
def metrics(ranker: LoadedRanker, settings: AppSettings) -> dict[str, Any]:
    """Per shelf: model vs baseline NDCG across versions, NDCG@10 by slice."""
    return shelf_metrics(settings, ranker.shelves)


@dashboard_api.get("/drift")
def drift(settings: AppSettings) -> dict[str, Any]:
    """The latest drift report as ``homerec drift`` wrote it (``available`` false if none)."""
    answer = _read_json(drift_report_path(settings), settings.data_dir)
    content = answer.pop("content", None)
    return answer | {"report": content}


dashboard_router.include_router(dashboard_api)
