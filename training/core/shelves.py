"""Shelves as data: the declarations in shelves.yaml, validated into typed objects."""

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from training.core.constants import CONTENT_TYPES
from training.core.errors import UserError
from training.core.settings import Settings

DEFAULT_SHELVES_FILE = Path(__file__).with_name("shelves.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FamiliarSource(_Strict):
    """The listener's familiar items, most played first."""

    kind: Literal["familiar"]
    limit: int = Field(gt=0)


class NeighbourSource(_Strict):
    """Co-listening neighbours of the listener's ``seeds`` most familiar items."""

    kind: Literal["neighbours"]
    seeds: int = Field(gt=0)
    limit: int = Field(gt=0)


class PopularSource(_Strict):
    """Most listened items in the listener's market, in their market and age bucket, or
    among new listeners of their market and age bucket (``market_age_new``)."""

    kind: Literal["popular"]
    segment: Literal["market", "market_age", "market_age_new"]
    limit: int = Field(gt=0)


class EditorialSource(_Strict):
    """Editorial picks of the listener's market, newest first."""

    kind: Literal["editorial"]
    limit: int = Field(gt=0)


CandidateSource = Annotated[
    FamiliarSource | NeighbourSource | PopularSource | EditorialSource,
    Field(discriminator="kind"),
]


class Label(_Strict):
    """Graded relevance from the listener's plays of an item after the snapshot.

    ``plays``: min(plays, 4). ``minutes``: 0 when not played, else 1 + min(3, minutes // 15).
    """

    horizon_days: int = Field(gt=0)
    grade: Literal["plays", "minutes"]


class Audience(_Strict):
    """Which listeners see a shelf (and so which it is evaluated on); its model is trained
    on every listener's behaviour, with account age among its features."""

    max_account_age_days: float | None = None


class Baseline(_Strict):
    """The shelf's heuristic before ML: sum of weight x column (missing counts as 0)."""

    name: str
    weights: dict[str, float]


class Shelf(_Strict):
    """One shelf of the Home page and its ranking model."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    content_types: list[str]
    candidates: list[CandidateSource] = Field(min_length=1)
    exclude_familiar: bool = False
    max_candidates: int = Field(gt=0)
    audience: Audience = Audience()
    label: Label
    train_every_days: int | None = Field(default=None, gt=0)
    """Days between the shelf's training snapshots (default 1; HOMEREC_TRAIN_EVERY_DAYS,
    when set, overrides it for every shelf).
    Adjacent days of one listener teach a ranker much the same; ``benchmarks/
    training_rows.py`` measures how few a shelf needs."""
    train_negatives: int | None = Field(default=None, gt=0)
    """Irrelevant candidates kept per training request, a seeded sample (all when None);
    validation and test keep all. Most of a discovery shelf's candidates are irrelevant
    and far from its top: a sample of them teaches the ranker as much, for less."""
    feature_service: str
    k: int = Field(gt=0, le=50)
    baseline: Baseline

    @model_validator(mode="after")
    def _known_content_types(self) -> "Shelf":
        unknown = sorted(set(self.content_types) - set(CONTENT_TYPES))
        if unknown or not self.content_types:
            raise ValueError(
                f"content_types {unknown or '[]'} not allowed; choose from {list(CONTENT_TYPES)}"
            )
        return self


class ShelvesFile(_Strict):
    shelves: list[Shelf] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "ShelvesFile":
        names = [shelf.name for shelf in self.shelves]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"shelf names must be unique; repeated: {duplicates}")
        return self


class ShelfConfigError(UserError, ValueError):
    """A shelves file that cannot be used; the message names the file and the field."""


class UnknownShelfError(UserError, ValueError):
    """A command named a shelf the shelves file does not declare; the message lists them."""


def load_shelves(path: Path | None = None) -> list[Shelf]:
    """The shelves declared in ``path`` (default: the built-in shelves.yaml), in page order."""
    path = path or DEFAULT_SHELVES_FILE
    try:
        raw = yaml.safe_load(path.read_text())
        return ShelvesFile.model_validate(raw).shelves
    except FileNotFoundError as error:
        raise ShelfConfigError(f"{path}: shelves file not found") from error
    except (yaml.YAMLError, ValidationError) as error:
        raise ShelfConfigError(f"{path}: invalid shelves file:\n{error}") from error


def shelf_by_name(shelves: list[Shelf], name: str) -> Shelf:
    for shelf in shelves:
        if shelf.name == name:
            return shelf
    raise ShelfConfigError(f"no shelf named {name!r}; shelves: {[s.name for s in shelves]}")


def select_shelves(settings: Settings, only: list[str] | None = None) -> list[Shelf]:
    """The shelves of the shelves file (those named in ``only``), in page order;
    UnknownShelfError naming any unknown shelf."""
    shelves = load_shelves(settings.shelves_file)
    unknown = sorted(set(only or []) - {shelf.name for shelf in shelves})
    if unknown:
        raise UnknownShelfError(f"unknown shelves {unknown}; shelves: {[s.name for s in shelves]}")
    return [shelf for shelf in shelves if not only or shelf.name in only]
