"""The data-directory layout: the world contract (the tables every world, generated or
imported, is made of) and where training sets live.

A world lives in ``<data_dir>/world/``::

    listeners.parquet   one row per listener (public attributes only)
    items.parquet       one row per catalog item (public attributes only)
    events.parquet      the listening log (no row order is promised)
    world.json          metadata: source, seed, start, end, counts
    truth/              synthetic worlds only: the generator's hidden state (never a feature)

Everything downstream (features, training sets, evaluation) reads these files and only
these, so a generated world and an imported one are interchangeable.
"""

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from training.core.atomic_io import atomic_write_text
from training.core.settings import Settings

logger = logging.getLogger(__name__)

LISTENER_COLUMNS: dict[str, str] = {
    "listener_id": "string",
    "market": "string",  # country code, e.g. "SE"
    "age_bucket": "string",  # e.g. "18-24"
    "platform": "string",  # e.g. "ios", "android", "web", "desktop"
    "signup_at": "datetime64[ns, UTC]",
}

ITEM_COLUMNS: dict[str, str] = {
    "item_id": "string",
    "content_type": "string",  # one of CONTENT_TYPES
    "genre": "string",
    "market": "string",  # home market / language of the item
    "released_at": "datetime64[ns, UTC]",
    "is_editorial": "bool",  # picked by editors for the Home page
    "duration_ms": "int64",  # length of one full listen (episode, playlist session, ...)
}

EVENT_COLUMNS: dict[str, str] = {
    "listener_id": "string",
    "item_id": "string",
    "timestamp": "datetime64[ns, UTC]",
    "ms_played": "int64",
    "content_type": "string",
    "hour": "int8",  # local hour of day of the play (context)
}

TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "listeners": LISTENER_COLUMNS,
    "items": ITEM_COLUMNS,
    "events": EVENT_COLUMNS,
}


@dataclass(frozen=True)
class WorldPaths:
    """File layout of one world directory."""

    root: Path

    @property
    def listeners(self) -> Path:
        return self.root / "listeners.parquet"

    @property
    def items(self) -> Path:
        return self.root / "items.parquet"

    @property
    def events(self) -> Path:
        return self.root / "events.parquet"

    @property
    def meta(self) -> Path:
        return self.root / "world.json"

    @property
    def truth(self) -> Path:
        return self.root / "truth"

    def table(self, name: str) -> Path:
        return self.root / f"{name}.parquet"


def coerce_table(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Return ``frame`` with exactly the columns of table ``name``, in order, typed as declared."""
    columns = TABLE_COLUMNS[name]
    return frame[list(columns)].astype(columns)


def read_world_meta(paths: WorldPaths) -> dict[str, Any]:
    """Read ``world.json``; a missing world is a clear error, not a stack trace."""
    if not paths.meta.exists():
        raise FileNotFoundError(
            f"no world at {paths.root}: run `homerec world generate` or `homerec world import`"
        )
    return json.loads(paths.meta.read_text())


def write_world_meta(paths: WorldPaths, meta: Mapping[str, Any]) -> None:
    atomic_write_text(paths.meta, json.dumps(dict(meta), indent=2, default=str) + "\n")


def training_set_dir(settings: Settings, shelf: str) -> Path:
    """Where ``homerec train`` builds a shelf's training set."""
    return settings.data_dir / "training_sets" / shelf


def trained_on(settings: Settings, shelf: str, metadata: Mapping[str, Any]) -> Path:
    """The training set a model was trained on: its metadata's ``training_set`` (retraining
    runs and sweeps build theirs elsewhere), else the shelf's :func:`training_set_dir`."""
    return Path(metadata.get("training_set") or training_set_dir(settings, shelf))
