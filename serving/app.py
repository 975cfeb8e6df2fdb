"""The Home ranker API: ``create_app(settings)`` builds it, ``serve(settings)`` runs it.

Routes::

    GET  /health                 liveness: always 200 {"status": "ok"}
    GET  /ready                  503 until the store and shelf models are loaded, then 200
                                 with the model (sha256 prefix or "heuristic") of each shelf
    GET  /v1/home/{listener_id}  the listener's Home page: shelves of ranked cards
    POST /v1/rank                caller-chosen items ranked by one shelf's model

The lifespan loads everything once (Feast store, shelves, models, cold-start defaults) into
``app.state.ranker``; routes read it through the ``LoadedRanker`` dependency. Nothing
happens at import.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated

import anyio
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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
from training.settings import Settings

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- lifespan


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the serving state before the first request; a failure leaves the app up but
    not ready (``/ready`` 503 with the error, ``/v1`` routes 503)."""
    settings: Settings = app.state.settings
    app.state.ranker = None
    app.state.startup_error = None
    try:
        app.state.ranker = await anyio.to_thread.run_sync(HomeRanker.load, settings)
    except Exception as error:  # the app stays up to report it on /ready
        logger.exception("serving state failed to load from %s", settings.data_dir)
        app.state.startup_error = f"{type(error).__name__}: {error}"
    else:
        logger.info(
            "ready: %s",
            ", ".join(f"{name}={m.model}" for name, m in app.state.ranker.models.items()),
        )
    yield
    app.state.ranker = None


# --------------------------------------------------------------------------- dependencies


def loaded_ranker(request: Request) -> HomeRanker:
    ranker: HomeRanker | None = request.app.state.ranker
    if ranker is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"not ready: {request.app.state.startup_error or 'loading'}",
        )
    return ranker


LoadedRanker = Annotated[HomeRanker, Depends(loaded_ranker)]
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


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body plus a one-line ``message`` naming each bad field."""
    errors = error.errors()
    message = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in errors
    )
    return JSONResponse(
        status_code=422,
        content={"detail": jsonable_encoder(errors), "message": message},
    )


router = APIRouter()


@router.get("/health", response_model=Health)
def health() -> Health:
    """Liveness: the process answers."""
    return Health()


@router.get("/ready", response_model=Ready, responses={503: {"model": NotReady}})
def ready(request: Request) -> Ready | JSONResponse:
    """Readiness: 200 with each shelf's model once loaded, else 503 with the reason."""
    ranker: HomeRanker | None = request.app.state.ranker
    if ranker is None:
        error = request.app.state.startup_error
        body = NotReady(status="failed" if error else "loading", error=error)
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content=body.model_dump()
        )
    return Ready(
        shelves=[
            ShelfModelInfo(shelf=name, model=m.model, degraded=m.degraded, problem=m.problem)
            for name, m in ranker.models.items()
        ]
    )


@router.get("/v1/home/{listener_id}", response_model=HomePage)
def home(
    listener_id: ListenerId,
    ranker: LoadedRanker,
    k: CardsPerShelf = None,
    market: Market = None,
    age_bucket: AgeBucket = None,
) -> HomePage:
    """The listener's Home page. Unknown or new listeners get a cold-start page (popular
    and editorial cards of ``market``/``age_bucket``, or of the world's most common ones)."""
    page = ranker.home(listener_id, k=k, market=market, age_bucket=age_bucket)
    return HomePage(**asdict(page))


@router.post("/v1/rank", response_model=RankResponse)
def rank(body: RankRequest, ranker: LoadedRanker) -> RankResponse:
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
    )
    return RankResponse(listener_id=body.listener_id, **asdict(ranked))


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
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """``create_app(Settings())`` for ``uvicorn --factory serving.app:app_from_env``
    (several workers): settings from ``HOMEREC_*`` variables, read when called."""
    return create_app(Settings())


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the Home ranker with uvicorn until interrupted (the ``homerec serve`` command)."""
    logger.info("serving %s on http://%s:%d", settings.data_dir, host, port)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None)
