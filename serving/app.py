"""The Home ranker API: ``create_app(settings)`` builds it, ``serve(settings)`` runs it.

Routes::

    GET  /health                 liveness: always 200 {"status": "ok"}
    GET  /ready                  503 until the store and shelf models are loaded, then 200
                                 with the model (sha256 prefix or "heuristic") of each shelf
    GET  /metrics                Prometheus metrics (serving/metrics.py)
    GET  /v1/home/{listener_id}  the listener's Home page: shelves of ranked cards
    POST /v1/rank                caller-chosen items ranked by one shelf's model
    POST /admin/reload           reload store snapshot and models (bearer token; 404 when
                                 no token is configured)
    GET  /dashboard              manual evaluation page (serving/dashboard.py; its data
                                 behind HOMEREC_DASHBOARD_TOKEN, see serving/deps.py)
    GET  /docs                   OpenAPI

The lifespan loads everything once (Feast store, entity snapshot, shelves, models,
cold-start defaults) into ``app.state.ranker``; routes read it through the
``LoadedRanker`` dependency. A reload (admin call, or the refresh task noticing a new
materialization or production model) builds a new state off the event loop and swaps the
reference: requests in flight finish on the state they started with. Nothing happens at
import.
"""

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

import anyio
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.supervisors import Multiprocess

from serving.dashboard import dashboard_router
from serving.deps import AdminAccess, LoadedRanker
from serving.errors import http_error, unexpected_error, validation_error, without_paths
from serving.metrics import ServingMetrics
from serving.middleware import ServingMiddleware
from serving.ranking import HomeRanker
from serving.schemas import (
    ID_PATTERN,
    MAX_K,
    SEGMENT_PATTERN,
    Health,
    HomePage,
    NotReady,
    RankRequest,
    RankResponse,
    Ready,
    ShelfModelInfo,
)
from training.core.errors import UserError
from training.core.settings import Settings
from training.features.served_log import FeatureLog

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- lifespan


def _feature_log(settings: Settings, metrics: ServingMetrics) -> FeatureLog | None:
    if settings.feature_log_sample_rate == 0:
        return None
    return FeatureLog(
        settings.served_features_dir,
        sample_rate=settings.feature_log_sample_rate,
        batch_rows=settings.feature_log_batch_rows,
        max_rows=settings.feature_log_max_rows,
        on_drop=metrics.feature_log_dropped.inc,
    )


async def reload_ranker(app: FastAPI, reason: str) -> HomeRanker:
    """Build a new serving state off the event loop and swap it in (one reload at a time).
    A shelf whose new model is refused keeps its old one; a failure keeps the old state."""
    async with app.state.reload_lock:
        started = time.perf_counter()
        ranker = await anyio.to_thread.run_sync(
            lambda: HomeRanker.load(
                app.state.settings,
                app.state.metrics,
                app.state.feature_log,
                previous=app.state.ranker,
            )
        )
        app.state.ranker = ranker
        app.state.startup_error = None
        logger.info(
            "reloaded (%s) in %.2f s: %s",
            reason,
            time.perf_counter() - started,
            ", ".join(f"{name}={m.version}:{m.model}" for name, m in ranker.models.items()),
        )
        return ranker


async def _refresh_when_changed(app: FastAPI, every: float) -> None:
    """Reload when a materialization or a production model newer than the state appears."""
    while True:
        await asyncio.sleep(every)
        ranker: HomeRanker | None = app.state.ranker
        try:
            current = ranker is not None and await anyio.to_thread.run_sync(
                ranker.is_current, app.state.settings
            )
            if not current:
                await reload_ranker(app, "store or model changed")
        except Exception:  # keep serving the old state; try again next round
            logger.exception("refresh failed; serving the previous state")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the serving state before the first request; a failure leaves the app up but
    not ready (``/ready`` 503 with the error, ``/v1`` routes 503). Start the refresh task
    and the feature log; on shutdown stop them and flush the log."""
    settings: Settings = app.state.settings
    app.state.feature_log = _feature_log(settings, app.state.metrics)
    try:
        await reload_ranker(app, "startup")
    except Exception as error:  # the app stays up to report it on /ready
        logger.exception("serving state failed to load from %s", settings.data_dir)
        app.state.startup_error = f"{type(error).__name__}: {error}"
    refresh = None
    if settings.serve_refresh_seconds > 0:
        refresh = asyncio.create_task(_refresh_when_changed(app, settings.serve_refresh_seconds))
    try:
        yield
    finally:
        if refresh is not None:
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresh
        if app.state.feature_log is not None:
            await anyio.to_thread.run_sync(app.state.feature_log.close)
        app.state.ranker = None


# --------------------------------------------------------------------------- dependencies


ListenerId = Annotated[
    str, Path(pattern=ID_PATTERN, description="Letters, digits and _ . : -, 1-128 chars.")
]
CardsPerShelf = Annotated[
    int | None, Query(ge=1, le=MAX_K, description="Cards per shelf (default: the shelf's k).")
]
Market = Annotated[
    str | None,
    Query(pattern=SEGMENT_PATTERN, description="Market if the store has none (new listener)."),
]
AgeBucket = Annotated[
    str | None,
    Query(pattern=SEGMENT_PATTERN, description="Age bucket if the store has none."),
]


def _known_shelf(ranker: HomeRanker, name: str) -> str:
    if name not in ranker.models:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"unknown shelf {name!r}; shelves: {list(ranker.models)}",
        )
    return name


# --------------------------------------------------------------------------- app


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex


router = APIRouter()


@router.get("/health", response_model=Health)
def health() -> Health:
    """Liveness: the process answers."""
    return Health()


@router.get("/ready", response_model=Ready, responses={503: {"model": NotReady}})
def ready(request: Request) -> Ready | JSONResponse:
    """Readiness: 200 with each shelf's model once loaded (and this worker's snapshot
    memory), else 503 with the reason."""
    ranker: HomeRanker | None = request.app.state.ranker
    if ranker is None:
        error = request.app.state.startup_error
        error = None if error is None else without_paths(error)
        body = NotReady(
            status="failed" if error else "loading",
            error=error,
            message=f"not ready: {error or 'loading'}",
        )
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content=body.model_dump()
        )
    return _ready(ranker)


def _ready(ranker: HomeRanker) -> Ready:
    shelves = [
        ShelfModelInfo(
            shelf=name,
            model=m.model,
            version=m.version,
            blessed=m.served.blessed,
            override=m.override,
            degraded=m.degraded,
            problem=None if m.problem is None else without_paths(m.problem),
        )
        for name, m in ranker.models.items()
    ]
    healthy = all(not shelf.degraded and shelf.problem is None for shelf in shelves)
    return Ready(
        status="ready" if healthy else "degraded",
        snapshot=ranker.snapshot.version,
        snapshot_bytes=ranker.snapshot.nbytes,
        worker_pid=os.getpid(),
        shelves=shelves,
    )


@router.get("/v1/home/{listener_id}", response_model=HomePage)
def home(
    request: Request,
    listener_id: ListenerId,
    ranker: LoadedRanker,
    k: CardsPerShelf = None,
    market: Market = None,
    age_bucket: AgeBucket = None,
) -> HomePage:
    """The listener's Home page. Unknown or new listeners get a cold-start page (popular
    and editorial cards of ``market``/``age_bucket``, or of the world's most common ones)."""
    page = ranker.home(
        listener_id, k=k, market=market, age_bucket=age_bucket, request_id=_request_id(request)
    )
    return HomePage(**asdict(page))


@router.post("/v1/rank", response_model=RankResponse)
def rank(request: Request, body: RankRequest, ranker: LoadedRanker) -> RankResponse:
    """``item_ids`` ranked for the listener by the shelf's model (all of them unless
    ``k``); items stage 1 proposes carry their candidate signals, others do not."""
    _known_shelf(ranker, body.shelf)
    ranked = ranker.rank(
        body.listener_id,
        body.shelf,
        body.item_ids,
        k=body.k,
        market=body.market,
        age_bucket=body.age_bucket,
        request_id=_request_id(request),
    )
    return RankResponse(listener_id=body.listener_id, **asdict(ranked))


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus exposition of this app's metrics."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/admin/reload", response_model=Ready, responses={401: {}, 404: {}}, dependencies=[AdminAccess]
)
async def admin_reload(request: Request) -> Ready:
    """Reload the store snapshot, shelves and production models without dropping requests."""
    try:
        ranker = await reload_ranker(request.app, "admin request")
    except Exception as error:
        logger.exception("admin reload failed; serving the previous state")
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"reload failed: {error}"
        ) from error
    return _ready(ranker)


def create_app(settings: Settings) -> FastAPI:
    """The Home ranker on the store, shelves and models under ``settings.data_dir``."""
    app = FastAPI(
        title="homerec Home ranker",
        summary="Home page shelves ranked by per-shelf models on Feast online features.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.ranker = None
    app.state.startup_error = None
    app.state.feature_log = None
    app.state.metrics = ServingMetrics()
    app.state.reload_lock = asyncio.Lock()
    # Starlette types a handler as taking any Exception; each of these takes its own type.
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected_error)
    app.add_middleware(
        ServingMiddleware,
        metrics=app.state.metrics,
        max_body_bytes=settings.serve_max_body_bytes,
        max_header_bytes=settings.serve_max_header_bytes,
        max_headers=settings.serve_max_headers,
    )
    app.include_router(router)
    app.include_router(dashboard_router)
    return app


def app_from_env() -> FastAPI:
    """``create_app(Settings())`` for ``uvicorn --factory serving.app:app_from_env``
    (several workers): settings from ``HOMEREC_*`` variables, read when called."""
    return create_app(Settings())


class ServeAddressError(UserError, OSError):
    """The address to serve on cannot be listened on (in use, not local, not permitted)."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, for uvicorn to listen on; ServeAddressError (before
    any model loads) when the port is taken or the host is not an address of this machine."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ServeAddressError(
            f"cannot listen on {host}:{port}: {error.strerror or error}: choose a free port "
            "with --port (or stop what holds this one)"
        ) from error
    return sock


APP_FACTORY = "serving.app:app_from_env"
"""What each worker process imports and calls to build its app."""


class WorkersError(UserError, ValueError):
    """A number of serving workers below one."""


def _export(settings: Settings) -> None:
    """Put ``settings`` into this process's ``HOMEREC_*`` variables, which the workers
    (spawned processes) inherit and ``app_from_env`` reads."""
    for name, value in settings.as_environment().items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _run_workers(
    settings: Settings, sock: socket.socket, workers: int, log_config: dict[str, Any] | None
) -> None:
    """``workers`` uvicorn processes on ``sock``, each building the app from the
    environment; uvicorn's supervisor restarts a worker that dies."""
    _export(settings)
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        workers=workers,
        log_config=log_config,
        h11_max_incomplete_event_size=settings.serve_max_header_bytes,
    )
    sock.set_inheritable(True)
    Multiprocess(config, sockets=[sock]).run()


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_config: dict[str, Any] | None = None,
) -> None:
    """Run the Home ranker with uvicorn until interrupted (the ``homerec serve`` command).

    One worker serves in this process. Several are uvicorn worker processes sharing the
    socket, each with its own serving state (entity snapshot, models: memory grows with
    ``workers``); they read ``settings`` from ``HOMEREC_*`` variables this function sets,
    and set up logging with ``log_config`` (a ``logging.config.dictConfig`` dict; None:
    uvicorn leaves it as a new process has it). The port is checked before anything loads."""
    if workers < 1:
        raise WorkersError(f"--workers must be at least 1, got {workers}")
    sock = listening_socket(host, port)
    logger.info("serving %s on http://%s:%d (%d workers)", settings.data_dir, host, port, workers)
    if workers > 1:
        _run_workers(settings, sock, workers, log_config)
        return
    config = uvicorn.Config(
        create_app(settings),
        log_config=None,
        h11_max_incomplete_event_size=settings.serve_max_header_bytes,
    )
    uvicorn.Server(config).run(sockets=[sock])
