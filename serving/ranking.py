"""Serving a Home page: stage 1 and stage 2 on Feast online features, one shelf at a time.

Serving runs the code training runs: candidates come from ``read_candidate_inputs`` +
``generate_candidates`` on an ``OnlineReader`` (training uses an ``OfflineReader``), and
model features from the shelf's FeatureService. The one serving-only step is
:class:`ListenerFallbackReader`, which supplies a market and age bucket for listeners the
store has no profile of, so a new or unknown listener gets a cold-start page of popular
and editorial cards instead of an empty one.

Models come from the model registry alone: the shelf's ``production`` version, verified
(checksum, feature contract) and servable (gate passed, or forced in by a recorded
override). Nothing else is ever served, so an unreadable alias file or an ungated model
folder cannot put an unblessed model in front of listeners.

Failures degrade one shelf, never the page: a shelf without a loadable model, or whose
model cannot score (feature read error, contract mismatch), is ranked by its heuristic
on the data at hand and marked ``degraded``; a shelf whose candidates cannot be read has
no cards and is marked ``degraded``.
"""

import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureService, FeatureStore

from serving.metrics import ServingMetrics
from serving.online_features import (
    Columns,
    EntityColumns,
    EntitySnapshot,
    FastOnlineReader,
    PageReader,
    SnapshotReader,
)
from training.candidates import (
    LISTENER_FEATURES,
    CandidateInputs,
    Candidates,
    ColumnReader,
    candidate_feature_names,
    in_audience,
    propose,
    read_candidate_inputs,
)
from training.core.layout import WorldPaths
from training.core.settings import Settings
from training.core.shelves import Shelf, load_shelves
from training.features.served_log import FeatureLog
from training.features.store import check_servable, open_store
from training.models.fitting import baseline_ranker
from training.models.rankers import HeuristicRanker, ModelIntegrityError, ShelfRanker
from training.models.registry import ModelRegistry, ModelVersion, RegistryError
from training.training_sets import model_feature_names

logger = logging.getLogger(__name__)

HEURISTIC = "heuristic"
"""The ``model`` label of a shelf ranked by its pre-ML heuristic."""
SHA_PREFIX = 12
"""Hex digits of a model's sha256 shown as its ``model`` label."""
STAGE1_VIEWS = {reference.split(":")[0] for reference in LISTENER_FEATURES} | {
    "item_neighbours",
    "segment_popular",
    "market_editorial",
}
"""Feature views stage 1 reads (``read_candidate_inputs``): serving is not ready without."""
CATALOG_VIEW = "item_stats"
"""The view whose entities are the catalog: an item it lacks is unknown."""
REQUEST_SOURCE = "request"
"""``source`` of a /v1/rank item that stage 1 did not propose for the listener."""


# --------------------------------------------------------------------------- cold start


@dataclass(frozen=True)
class ListenerDefaults:
    """Market and age bucket assumed for a listener the online store has no profile of."""

    market: str | None
    age_bucket: str | None


def listener_defaults(settings: Settings) -> ListenerDefaults:
    """The most common market of the world's listeners, and the most common age bucket in
    that market (so the market-and-age popular segment exists). No listeners table: no
    defaults (cold-start pages then stay empty, still without error)."""
    path = WorldPaths(settings.world_dir).listeners
    try:
        listeners = pd.read_parquet(path, columns=["market", "age_bucket"]).dropna()
    except (OSError, ValueError) as error:
        logger.warning("no listener defaults (%s): cold-start pages will be empty", error)
        return ListenerDefaults(None, None)
    if listeners.empty:
        return ListenerDefaults(None, None)
    market = str(listeners["market"].value_counts().index[0])
    in_market = listeners.loc[listeners["market"] == market, "age_bucket"]
    return ListenerDefaults(market, str(in_market.value_counts().index[0]))


class ListenerFallbackReader:
    """A stage-1 ``ColumnReader`` that fills a missing ``listener_profile`` market and age
    bucket with given values; every other read passes through unchanged.

    Feast has no profile for a brand-new or unknown listener, so stage 1 would find no
    segment (popular) or market (editorial) to read. ``filled`` tells whether it had to.
    """

    _FILLED = {"listener_profile:market": "market", "listener_profile:age_bucket": "age_bucket"}

    def __init__(self, reader: ColumnReader, market: str | None, age_bucket: str | None):
        self.reader = reader
        self.values = {"market": market, "age_bucket": age_bucket}
        self.filled = False

    def columns(self, features: list[str], entities: EntityColumns) -> Columns:
        found = dict(self.reader.columns(features, entities))
        for reference, column in self._FILLED.items():
            value = self.values[column]
            if reference not in features or value is None:
                continue
            values = np.asarray(found[column], dtype=object)
            missing = np.array([v is None for v in values], dtype=bool)
            if missing.any():
                found[column] = np.where(missing, value, values)
                self.filled = True
        return found


# --------------------------------------------------------------------------- shelf models


@dataclass(frozen=True)
class ServedBy:
    """What scored a shelf, as responses and metrics show it."""

    model: str  # sha256 prefix, or HEURISTIC
    version: str  # "v<N>" from the registry, or "-" for the heuristic
    blessed: bool | None  # gate passed; False: forced in by an override; None: heuristic


HEURISTIC_SERVED = ServedBy(HEURISTIC, "-", None)


@dataclass(frozen=True)
class ShelfModel:
    """What ranks one shelf: its trained model or, degraded, its heuristic."""

    shelf: Shelf
    ranker: ShelfRanker | HeuristicRanker
    served: ServedBy
    degraded: bool
    source: str  # model_source() when loaded: serving reloads when it changes
    problem: str | None = None
    override: str | None = None  # the recorded reason of a forced (unblessed) production

    @property
    def model(self) -> str:
        return self.served.model

    @property
    def version(self) -> str:
        return self.served.version


NO_MODEL = "none"
"""``model_source`` of a shelf whose registry has no production version."""


def model_source(settings: Settings, shelf: str) -> str:
    """A token naming the model serving should load for ``shelf``: the registry's
    production version (``registry:v<N>:<sha256>``), ``none`` when there is none, or
    ``error:<problem>`` when the registry cannot be read. Cheap (JSON files only):
    serving polls it to notice a pushed or rolled-back model."""
    try:
        production = ModelRegistry(settings.model_registry_dir).production_sha(shelf)
    except RegistryError as error:
        return f"error:{error}"
    if production is None:
        return NO_MODEL
    return _registry_source(production[0], production[1])


def _registry_source(version: int, sha256: str) -> str:
    return f"registry:v{version}:{sha256}"


def _heuristic(shelf: Shelf, source: str, problem: str) -> ShelfModel:
    logger.warning("shelf %s serves its heuristic: %s", shelf.name, problem)
    return ShelfModel(shelf, baseline_ranker(shelf), HEURISTIC_SERVED, True, source, problem)


def load_shelf_model(settings: Settings, store: FeatureStore, shelf: Shelf) -> ShelfModel:
    """The shelf's production model from the registry, verified by its checksum and
    contract, servable (blessed or overridden) and checked against the shelf's
    FeatureService; anything missing, refused or inconsistent gives the heuristic,
    degraded."""
    source = model_source(settings, shelf.name)
    if source == NO_MODEL:
        return _heuristic(shelf, source, f"no production model of {shelf.name} in the registry")
    try:
        ranker, metadata, record = ModelRegistry(settings.model_registry_dir).load(shelf.name)
    except (RegistryError, ModelIntegrityError, OSError, ValueError, KeyError) as error:
        return _heuristic(shelf, source, f"no usable production model: {error}")
    if not record.servable:
        return _heuristic(
            shelf,
            source,
            f"production v{record.version} refused: gate decision {record.gate!r} and no "
            "recorded override",
        )
    return _checked_model(store, shelf, ranker, metadata, record)


def registry_shelf_model(
    settings: Settings, store: FeatureStore, shelf: Shelf, alias_or_version: str | int
) -> ShelfModel:
    """Any registered version of the shelf's model (e.g. the ``candidate``), checked as
    the production one is; RegistryError when it does not exist or is corrupt."""
    ranker, metadata, record = ModelRegistry(settings.model_registry_dir).load(
        shelf.name, alias_or_version
    )
    return _checked_model(store, shelf, ranker, metadata, record)


def heuristic_model(shelf: Shelf) -> ShelfModel:
    """The shelf's pre-ML heuristic as a ShelfModel (not degraded: chosen, not fallen to)."""
    return ShelfModel(shelf, baseline_ranker(shelf), HEURISTIC_SERVED, False, "heuristic")


def _checked_model(
    store: FeatureStore,
    shelf: Shelf,
    ranker: ShelfRanker,
    metadata: dict[str, Any],
    record: ModelVersion,
) -> ShelfModel:
    """The model, if its contract fits the shelf's FeatureService; else the heuristic."""
    source = _registry_source(record.version, record.sha256)
    trained_on = metadata.get("feature_service")
    if trained_on not in (None, shelf.feature_service):
        return _heuristic(
            shelf,
            source,
            f"model was trained on FeatureService {trained_on!r}, the shelf declares "
            f"{shelf.feature_service!r}",
        )
    try:
        available = set(model_feature_names(store, shelf))
    except Exception as error:  # registry errors are Feast-specific; any one degrades
        return _heuristic(shelf, source, f"FeatureService {shelf.feature_service!r}: {error}")
    missing = [name for name in ranker.feature_names_ if name not in available]
    if missing:
        return _heuristic(
            shelf, source, f"model needs features its FeatureService lacks: {missing}"
        )
    # A request scores a few hundred rows: one thread is faster than waking a pool, and
    # concurrent requests are the parallelism.
    ranker.booster_.set_param({"nthread": 1})
    served = ServedBy(record.sha256[:SHA_PREFIX], f"v{record.version}", record.blessed)
    override = None
    if not record.blessed and record.override is not None:
        override = str(record.override.get("reason"))
        logger.warning(
            "shelf %s: %s is served by override: %s", shelf.name, served.version, override
        )
    logger.info("shelf %s: model %s (%s)", shelf.name, served.model, served.version)
    return ShelfModel(shelf, ranker, served, False, source, override=override)


def _kept(new: ShelfModel, old: ShelfModel | None) -> ShelfModel:
    """On reload: a refused new model keeps the old working one (its source is updated so
    the refusal is not retried until the production model changes again)."""
    if new.degraded and old is not None and not old.degraded:
        logger.warning(
            "shelf %s: new model refused (%s); keeping %s %s",
            new.shelf.name,
            new.problem,
            old.version,
            old.model,
        )
        return replace(old, source=new.source, problem=f"new model refused: {new.problem}")
    return new


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Card:
    item_id: str
    content_type: str | None
    score: float
    source: str
    reason: str | None


@dataclass(frozen=True)
class RankedShelf:
    shelf: str
    title: str
    model: str
    version: str
    blessed: bool | None
    degraded: bool
    cards: list[Card]

    @classmethod
    def of(
        cls, shelf: Shelf, served: ServedBy, problem: str | None, cards: list[Card]
    ) -> "RankedShelf":
        """The shelf's answer: scored by ``served``, degraded when there was a problem."""
        return cls(
            shelf.name,
            shelf.title,
            served.model,
            served.version,
            served.blessed,
            problem is not None,
            cards,
        )


@dataclass(frozen=True)
class Page:
    listener_id: str
    cold_start: bool
    shelves: list[RankedShelf]


def _optional_str(value: Any) -> str | None:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def heuristic_scores(shelf: Shelf, columns: Columns, rows: int) -> np.ndarray:
    """The shelf's heuristic on whatever ``columns`` has (a missing one counts as 0)."""
    weights = shelf.baseline.weights
    frame = pd.DataFrame({name: columns.get(name, np.full(rows, np.nan)) for name in weights})
    try:
        return baseline_ranker(shelf).predict(frame)
    except ValueError:
        logger.exception("shelf %s: heuristic failed; candidates keep stage-1 order", shelf.name)
        return np.zeros(rows)


@dataclass(frozen=True)
class Scored:
    """A shelf's rows ranked: best first (ties keep stage-1 order)."""

    item_id: np.ndarray
    content_type: np.ndarray
    score: np.ndarray
    source: np.ndarray
    reason: np.ndarray

    def take(self, order: np.ndarray) -> "Scored":
        return Scored(
            self.item_id[order],
            self.content_type[order],
            self.score[order],
            self.source[order],
            self.reason[order],
        )

    def cards(self, k: int | None, skip: set[str] | frozenset[str] = frozenset()) -> list[Card]:
        """The first ``k`` (all with None) rows as cards, without items in ``skip``."""
        cards: list[Card] = []
        for item_id, content_type, score, source, reason in zip(
            self.item_id, self.content_type, self.score, self.source, self.reason, strict=True
        ):
            if item_id in skip:
                continue
            if k is not None and len(cards) >= k:
                break
            cards.append(
                Card(
                    item_id=str(item_id),
                    content_type=_optional_str(content_type),
                    score=float(score),
                    source=str(source),
                    reason=_optional_str(reason),
                )
            )
        return cards


def requested_rows(shelf: Shelf, item_ids: list[str], proposed: Candidates | None) -> Candidates:
    """``item_ids`` as rows to rank: an item stage 1 ``proposed`` keeps its source, reason
    and signals; any other has source ``"request"``, no reason and missing signals."""
    names = candidate_feature_names(shelf)
    if proposed is None:
        nothing = np.zeros(0, dtype=object)
        signals = {name: np.zeros(0) for name in names}
        proposed = Candidates(np.zeros(0, dtype=np.int64), nothing, nothing, nothing, signals)
    position = {item: i for i, item in enumerate(proposed.item_id)}
    found = np.array([position.get(item, -1) for item in item_ids], dtype=np.intp)

    def pick(values: np.ndarray, missing: Any) -> np.ndarray:
        """``values`` of each item, ``missing`` where stage 1 did not propose it."""
        return np.append(values, np.array([missing], dtype=values.dtype))[found]

    return Candidates(
        np.zeros(len(item_ids), dtype=np.int64),
        np.array(item_ids, dtype=object),
        pick(proposed.source, REQUEST_SOURCE),
        pick(proposed.reason, None),
        {name: pick(proposed.signals[name], np.nan) for name in names},
    )


# --------------------------------------------------------------------------- the ranker


class HomeRanker:
    """The loaded serving state: store, entity snapshot, shelves, one ShelfModel per shelf,
    cold-start defaults. Immutable once loaded: a reload builds a new one and swaps it in,
    so a request in flight finishes on the state it started with."""

    def __init__(
        self,
        store: FeatureStore,
        snapshot: EntitySnapshot,
        shelves: list[Shelf],
        models: dict[str, ShelfModel],
        defaults: ListenerDefaults,
        metrics: ServingMetrics | None = None,
        feature_log: FeatureLog | None = None,
    ) -> None:
        self.store = store
        self.snapshot = snapshot
        self.shelves = shelves
        self.models = models
        self.defaults = defaults
        self.metrics = metrics or ServingMetrics()
        self.feature_log = feature_log
        self.reader = FastOnlineReader(store, snapshot, self._count_missing)
        self.snapshot_reader = SnapshotReader(store, snapshot)
        self.services: dict[str, FeatureService] = {}
        for shelf in shelves:
            try:
                self.services[shelf.name] = store.get_feature_service(shelf.feature_service)
            except Exception as error:  # its reads will fail and degrade the shelf
                logger.warning("shelf %s: FeatureService unavailable: %s", shelf.name, error)

    @classmethod
    def load(
        cls,
        settings: Settings,
        metrics: ServingMetrics | None = None,
        feature_log: FeatureLog | None = None,
        previous: "HomeRanker | None" = None,
    ) -> "HomeRanker":
        """Open the store, check its registry, snapshot the entity views, load the shelves
        and their models. With ``previous`` (a reload), a shelf whose new model is refused
        keeps the model ``previous`` served."""
        registry = settings.feast_dir / "registry.db"
        if not registry.is_file():
            raise FileNotFoundError(
                f"no Feast registry at {registry}: run `homerec features apply` and "
                "`homerec features materialize` first"
            )
        store = open_store(settings, redis_timeout=settings.serve_feature_timeout_seconds)
        missing = sorted(STAGE1_VIEWS - {view.name for view in store.list_feature_views()})
        if missing:
            raise LookupError(f"feature views {missing} are not in the registry at {registry}")
        check_servable(store)
        snapshot = EntitySnapshot.load(store)
        shelves = load_shelves(settings.shelves_file)
        models = {shelf.name: load_shelf_model(settings, store, shelf) for shelf in shelves}
        if previous is not None:
            models = {
                name: _kept(model, previous.models.get(name)) for name, model in models.items()
            }
        ranker = cls(
            store, snapshot, shelves, models, listener_defaults(settings), metrics, feature_log
        )
        ranker.metrics.set_models({name: m.served for name, m in models.items()})
        return ranker

    def is_current(self, settings: Settings) -> bool:
        """False when a materialization or a model newer than this state exists."""
        if not self.snapshot.is_current(self.store):
            return False
        return all(
            model_source(settings, name) == model.source for name, model in self.models.items()
        )

    def _count_missing(self, view: str, rows: int) -> None:
        self.metrics.missing_feature_rows.labels(view=view).inc(rows)

    # ---------------------------------------------------------------- stage 1

    def _candidate_inputs(
        self,
        page: PageReader,
        listener_id: str,
        shelves: list[Shelf],
        market: str | None,
        age_bucket: str | None,
    ) -> tuple[CandidateInputs | None, bool, bool]:
        """Stage-1 inputs: ``(inputs, cold_start, store_failed)``. When the online store
        fails, the listener is served as an unknown one from the snapshot (popular and
        editorial of the default segment); None only if even that fails."""
        requests = {"group": np.zeros(1, dtype=np.int64), "listener_id": [listener_id]}
        for reader in (page, self.snapshot_reader.page()):
            fallback = ListenerFallbackReader(
                reader, market or self.defaults.market, age_bucket or self.defaults.age_bucket
            )
            try:
                inputs = read_candidate_inputs(fallback, requests, shelves)
            except Exception:
                logger.exception("stage 1 read failed for listener %s", listener_id)
                continue
            return inputs, fallback.filled, reader is not page
        return None, True, True

    # ---------------------------------------------------------------- stage 2

    def _prefetch(
        self, page: PageReader, listener_id: str, proposed: dict[str, Candidates]
    ) -> None:
        """Read the listener x item rows of every shelf's candidates in one round trip."""
        items = list(dict.fromkeys(item for rows in proposed.values() for item in rows.item_id))
        services = [self.services[name] for name in proposed if name in self.services]
        try:
            page.prefetch(services, {"listener_id": [listener_id] * len(items), "item_id": items})
        except Exception:  # each shelf's own read then fails and degrades it
            logger.exception("prefetch of listener x item rows failed")

    def _scored(
        self,
        shelf_model: ShelfModel,
        listener_id: str,
        rows: Candidates,
        page: PageReader,
        request_id: str,
    ) -> tuple[Scored, ServedBy, str | None]:
        """``rows`` with model features read and scored, best first; with what scored
        them and why the shelf is degraded (None if it is not)."""
        shelf = shelf_model.shelf
        served, problem = shelf_model.served, "no_model" if shelf_model.degraded else None
        n = len(rows)
        entities = {"listener_id": [listener_id] * n, "item_id": rows.item_id}
        service = self.services.get(shelf.name)
        columns: Columns = {}
        if service is None:
            problem = "feature_store"
        elif n:
            try:
                columns = dict(page.columns(service, entities))
            except Exception:
                logger.exception("shelf %s: model feature read failed", shelf.name)
                problem = "feature_store"
                columns = dict(self.snapshot_reader.columns(service, entities))
        columns.update(rows.signals)
        scores = None
        if isinstance(shelf_model.ranker, ShelfRanker) and problem is None and n:
            try:
                scores = shelf_model.ranker.predict_columns(columns, n)
            except Exception:
                logger.exception("shelf %s: model could not score", shelf.name)
                problem = "model_error"
            else:
                self._log_features(request_id, shelf_model, listener_id, rows, columns)
        if scores is None:
            scores = heuristic_scores(shelf, columns, n)
            served = HEURISTIC_SERVED
        content_type = columns.get("content_type", np.full(n, None, dtype=object))
        scored = Scored(
            rows.item_id, content_type, np.asarray(scores, np.float64), rows.source, rows.reason
        )
        return scored.take(np.argsort(-scored.score, kind="stable")), served, problem

    def _log_features(
        self,
        request_id: str,
        shelf_model: ShelfModel,
        listener_id: str,
        rows: Candidates,
        columns: Columns,
    ) -> None:
        log = self.feature_log
        if log is None or not log.sampled():
            return
        names = shelf_model.ranker.feature_names_
        frame = pd.DataFrame(
            {
                "listener_id": [listener_id] * len(rows),
                "item_id": rows.item_id,
                **{name: columns[name] for name in names},
            }
        )
        log.record(
            request_id, shelf_model.shelf.name, shelf_model.model, shelf_model.version, frame
        )

    def _finish_shelf(self, shelf: Shelf, seconds: float, problem: str | None) -> None:
        self.metrics.shelf_seconds.labels(shelf=shelf.name).observe(seconds)
        if problem is not None:
            self.metrics.fallbacks.labels(shelf=shelf.name, reason=problem).inc()

    # ---------------------------------------------------------------- endpoints

    def home(
        self,
        listener_id: str,
        k: int | None = None,
        market: str | None = None,
        age_bucket: str | None = None,
        request_id: str | None = None,
        models: dict[str, ShelfModel] | None = None,
    ) -> Page:
        """The listener's Home page: every shelf whose audience includes them and that has
        cards, in declaration order, each with its top ``k`` (default ``shelf.k``)
        candidates by model score; an item already on an earlier shelf is skipped on later
        ones. A shelf without cards is left off the page. ``models`` replaces the serving
        models of some shelves (to compare versions)."""
        request_id = request_id or uuid.uuid4().hex
        models = {**self.models, **(models or {})}
        page = self.reader.page()
        inputs, cold_start, store_failed = self._candidate_inputs(
            page, listener_id, self.shelves, market, age_bucket
        )
        account_age = inputs.listeners["account_age_days"] if inputs else np.array([np.nan])
        audience = [shelf for shelf in self.shelves if in_audience(shelf, account_age)[0]]
        seconds: dict[str, float] = {}
        proposed: dict[str, Candidates] = {}
        problems: dict[str, str | None] = {}
        for shelf in audience:
            started = time.perf_counter()
            problems[shelf.name] = "feature_store"
            if inputs is not None:
                try:
                    proposed[shelf.name] = propose(shelf, inputs)
                    problems[shelf.name] = None
                except Exception:
                    logger.exception("shelf %s: candidate generation failed", shelf.name)
                    problems[shelf.name] = "candidates"
            seconds[shelf.name] = time.perf_counter() - started
        self._prefetch(page, listener_id, proposed)
        shelves: list[RankedShelf] = []
        shown: set[str] = set()
        for shelf in audience:
            started = time.perf_counter()
            shelf_model = models[shelf.name]
            served, cards, problem = shelf_model.served, [], problems[shelf.name]
            if shelf.name in proposed:
                scored, served, problem = self._scored(
                    shelf_model, listener_id, proposed[shelf.name], page, request_id
                )
                cards = scored.cards(k or shelf.k, skip=shown)
                if store_failed:
                    problem = "feature_store"
            self._finish_shelf(shelf, seconds[shelf.name] + time.perf_counter() - started, problem)
            shown.update(card.item_id for card in cards)
            if cards:
                shelves.append(RankedShelf.of(shelf, served, problem, cards))
        return Page(listener_id, cold_start, shelves)

    def rank(
        self,
        listener_id: str,
        shelf_name: str,
        item_ids: list[str],
        k: int | None = None,
        market: str | None = None,
        age_bucket: str | None = None,
        request_id: str | None = None,
    ) -> RankedShelf:
        """``item_ids`` (duplicates dropped) ranked for the listener by the shelf's model.

        Candidate features come from stage 1 itself: the shelf's candidates are generated
        for the listener and merged in, so an item stage 1 proposes is scored exactly as on
        the Home page (same source, reason and signals); any other item has missing
        candidate signals (NaN, as in training for signals a source did not give) and
        source ``"request"``. Items unknown to the catalog come last, after every known
        one, whatever their score. A stage-1 failure leaves all signals missing, degraded.
        """
        request_id = request_id or uuid.uuid4().hex
        started = time.perf_counter()
        shelf_model = self.models[shelf_name]
        shelf = shelf_model.shelf
        items = list(dict.fromkeys(item_ids))
        page = self.reader.page()
        inputs, _, store_failed = self._candidate_inputs(
            page, listener_id, [shelf], market, age_bucket
        )
        stage1_problem = "feature_store" if store_failed else None
        proposed = None
        if inputs is not None:
            try:
                proposed = propose(shelf, inputs)
            except Exception:
                logger.exception("shelf %s: stage 1 failed for /v1/rank", shelf.name)
                stage1_problem = "candidates"
        rows = requested_rows(shelf, items, proposed)
        scored, served, problem = self._scored(shelf_model, listener_id, rows, page, request_id)
        unknown = np.array(
            [self.snapshot.row_of(CATALOG_VIEW, str(item)) < 0 for item in scored.item_id],
            dtype=bool,
        )
        scored = scored.take(np.argsort(unknown, kind="stable"))
        problem = problem or stage1_problem
        self._finish_shelf(shelf, time.perf_counter() - started, problem)
        return RankedShelf.of(shelf, served, problem, scored.cards(k))
