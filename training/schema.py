"""The world contract: the tables every world (generated or imported) is made of.

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
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

CONTENT_TYPES: tuple[str, ...] = ("show", "playlist", "album", "artist")
"""Card types of the Home page. ``show`` is a podcast; the others are music."""

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


def fsync_directory(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable (POSIX only; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` through a fsynced temp file beside it, renamed over
    ``path`` (readers see the old file or the whole new one, never part of one). With
    ``exclusive`` the temp file is hard-linked instead, which never replaces: an existing
    ``path`` raises FileExistsError and is left as it was (write-once records)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        (os.link if exclusive else os.replace)(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_world_meta(paths: WorldPaths, meta: Mapping[str, Any]) -> None:
    atomic_write_text(paths.meta, json.dumps(dict(meta), indent=2, default=str) + "\n")


def staging_dir(final: Path) -> Path:
    """A fresh empty directory beside ``final`` to build a replacement for it in."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))


def publish_dir(staged: Path, final: Path) -> None:
    """Swap a fully written ``staged`` directory into place as ``final``.

    The old directory is moved aside first and removed only after the rename, so
    ``final`` is never a mix: it is the complete old version, briefly absent, or the
    complete new one.
    """
    retired = None
    if final.exists():
        retired = final.with_name(f".{final.name}.retired-{os.getpid()}")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(final, retired)
    os.replace(staged, final)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
