"""Request and response models of the Home ranker API (kept apart, as the routes use them)."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
"""Listener and item ids: letters, digits and ``_ . : -``, 1 to 128 characters."""
MAX_K = 50
"""Most cards a shelf (or a /v1/rank answer) returns."""
MAX_RANK_ITEMS = 500
"""Most item ids one /v1/rank request may send."""

SEGMENT_PATTERN = r"^[A-Za-z0-9_+.-]{1,32}$"
"""A market or age bucket given by the caller (e.g. ``SE``, ``18-24``, ``45+``)."""

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Segment = Annotated[str, StringConstraints(pattern=SEGMENT_PATTERN)]


# --------------------------------------------------------------------------- requests


class RankRequest(BaseModel):
    """Rank caller-chosen items for one listener with one shelf's model."""

    model_config = ConfigDict(extra="forbid")

    listener_id: Identifier
    shelf: str = Field(max_length=128, description="A shelf name from the shelves file.")
    item_ids: list[Identifier] = Field(min_length=1, max_length=MAX_RANK_ITEMS)
    k: int | None = Field(
        default=None, ge=1, le=MAX_K, description="Cards to return (default: every item)."
    )
    market: Segment | None = Field(
        default=None, description="The listener's market if the store has none (new listener)."
    )
    age_bucket: Segment | None = Field(
        default=None, description="The listener's age bucket if the store has none."
    )


# --------------------------------------------------------------------------- responses


class CardOut(BaseModel):
    """One card of a shelf: an item, its model score and why stage 1 proposed it."""

    model_config = ConfigDict(from_attributes=True)

    item_id: str
    content_type: str | None = Field(description="From item_stats; null if the store had none.")
    score: float = Field(description="The shelf model's score (or its heuristic's); higher first.")
    source: str = Field(
        description="Stage-1 source: familiar | neighbours | popular | editorial, or "
        "'request' for a /v1/rank item stage 1 did not propose."
    )
    reason: str | None


class ShelfOut(BaseModel):
    """One shelf of the page, its cards in rank order."""

    model_config = ConfigDict(from_attributes=True)

    shelf: str
    title: str
    model: str = Field(description="First 12 hex digits of the model's sha256, or 'heuristic'.")
    version: str = Field(description="Registry version (v<N>) of the model, '-' for the heuristic.")
    blessed: bool | None = Field(
        description="True: the model passed the evaluation gate; false: it serves by a "
        "recorded override (homerec models promote --force); null: the heuristic ranked."
    )
    degraded: bool = Field(
        description="True when this shelf was not served by its model on complete data."
    )
    cards: list[CardOut]


class HomePage(BaseModel):
    """The Home page of one listener: shelves in declaration order."""

    listener_id: str
    cold_start: bool = Field(
        description="True when the store had no market for the listener (new or unknown) "
        "and serving filled in defaults."
    )
    shelves: list[ShelfOut]


class RankResponse(ShelfOut):
    """The items of a /v1/rank request, ranked by the shelf's model."""

    listener_id: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ShelfModelInfo(BaseModel):
    """What serves a shelf: its model (sha256 prefix) or its heuristic, and why."""

    model_config = ConfigDict(from_attributes=True)

    shelf: str
    model: str
    version: str = Field(description="Registry version (v<N>), or '-' for the heuristic.")
    blessed: bool | None = Field(
        description="True: gate passed; false: served by a recorded override; null: heuristic."
    )
    override: str | None = Field(
        default=None, description="The recorded reason of the override serving an unblessed model."
    )
    degraded: bool
    problem: str | None = None


class Ready(BaseModel):
    status: Literal["ready", "degraded"] = Field(
        default="ready",
        description="'degraded' when any shelf serves its heuristic, or kept its model "
        "because a newer one (or the registry) could not be read: see each shelf's problem.",
    )
    snapshot: str = Field(description="Materialization the in-memory entity snapshot holds.")
    snapshot_bytes: int = Field(
        description="Memory the entity snapshot takes in the worker that answered (each "
        "worker of `homerec serve --workers N` holds its own)."
    )
    worker_pid: int = Field(description="Process id of the worker that answered.")
    shelves: list[ShelfModelInfo]


class NotReady(BaseModel):
    status: Literal["loading", "failed"]
    error: str | None = None
    message: str = Field(description="One line: why serving is not ready, and the fix.")
