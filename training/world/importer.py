"""Import a real listening log as a homerec world.

``import_world`` reads a listening log (and, optionally, an items file and a listeners
file), validates every row, fills what is missing with the documented defaults below, and
writes a world directory with exactly the tables of :mod:`training.core.layout`
(``listeners.parquet``, ``items.parquet``, ``events.parquet``, ``world.json``) and no
``truth/`` (an imported world has no oracle). Downstream stages cannot tell it from a
generated world.

Inputs are CSV (``.csv``) or parquet (``.parquet`` / ``.pq``). CSV cells are read as text
(ids are never turned into numbers) and an empty cell is a missing value; parquet columns
keep their types. Columns not listed here are ignored; column names are matched after
stripping surrounding whitespace.

=============  ===========================================================================
file           columns (required in bold)
=============  ===========================================================================
events         **listener_id**, **item_id**, **timestamp**, ms_played, content_type, hour
items          **item_id**, content_type, genre, market, released_at, is_editorial,
               duration_ms
listeners      **listener_id**, market, age_bucket, platform, signup_at
=============  ===========================================================================

Defaults
--------
A value is *missing* when its column is absent or its cell is empty (null).

========================================  ====================================================
missing value                             default
========================================  ====================================================
event ``content_type``                    the item's content_type: from the items file, else
                                          the content_type given on the item's other events,
                                          else ``"playlist"``
event ``ms_played``                       the item's ``duration_ms`` (given in the items file,
                                          else derived as below)
event ``hour``                            the UTC hour of the event's timestamp
item not in the items file (or no file)   derived from its events: content_type as above,
                                          genre ``"unknown"``, market ``"unknown"``,
                                          released_at = first play, is_editorial False,
                                          duration_ms as below
item ``content_type``                     content_type given on its events, else
                                          ``"playlist"``
item ``genre`` / ``market``               ``"unknown"``
item ``released_at``                      the item's first play (the world start if it is
                                          never played)
item ``is_editorial``                     False
item ``duration_ms``                      median of the item's given ms_played, rounded,
                                          at least 1000; 180000 if no ms_played is given
listener not in the listeners file        market, age_bucket, platform ``"unknown"``,
(or no file)                              signup_at = their first event
listener ``market`` / ``age_bucket`` /    ``"unknown"``
``platform``
listener ``signup_at``                    their first event (the world start if none)
========================================  ====================================================

Timestamps
----------
All timestamps (``timestamp``, ``released_at``, ``signup_at``) become UTC:

* ISO 8601 text (``2024-05-01``, ``2024-05-01T13:45:00Z``, ``2024-05-01 13:45:00+02:00``):
  an offset is converted to UTC, no offset means UTC.
* parquet timestamp / date columns: tz-aware values are converted to UTC, naive ones are UTC.
* integers (an all-digit CSV cell, an integer or whole float parquet column) are Unix
  epochs. The unit is decided per value and is never ambiguous: ``10**9 <= n <=
  9223372036`` is epoch *seconds*, ``10**12 <= n <= 9223372036854`` is epoch
  *milliseconds* (both 2001-09-09 to 2262-04-11, the datetime64[ns] limit); every other
  integer is rejected (so a compact date such as ``20240501`` is an error, not a day in
  1970, and seconds and milliseconds can never be confused).

World metadata: ``start`` is the UTC midnight of the first event's day, ``end`` the UTC
midnight of the day after the last event's day (both ISO strings), as a generated world has.

Validation
----------
Everything is validated before anything is written: on any error a
:class:`WorldImportError` names the file and, where it applies, the column and the first
offending row, nothing is created, and an existing world at ``out_dir`` is left untouched.
Rows are *data rows counted from 1*: the CSV header is not counted, so row ``N`` of a CSV
file is on line ``N + 1`` (for files without multi-line quoted cells). Checks run file by
file (events, items, listeners) and column by column; each reports its first offending row.

* file: suffix ``.csv`` / ``.parquet`` / ``.pq``; exists; not empty (no bytes, or a header
  and no data rows); readable (well-formed CSV, valid parquet); every required column
  present; no column named twice.
* ids (``listener_id``, ``item_id`` in every file): text or integers; not empty; only
  ``[A-Za-z0-9_.:-]``; at most 128 characters (the charset the serving layer accepts).
* timestamps: parseable (see above); ``timestamp`` never empty.
* ``ms_played``: whole number >= 0. ``hour``: whole number 0..23. ``duration_ms``: whole
  number >= 1.
* ``content_type``: one of show, playlist, album, artist; an event's content_type agrees
  with the items file and with the item's other events.
* ``is_editorial``: true/false, t/f, yes/no, y/n, 1/0 (any case) or a boolean column.
* items file: no ``item_id`` twice; listeners file: no ``listener_id`` twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from training.core.atomic_io import replacing_dir
from training.core.constants import CONTENT_TYPES
from training.core.errors import UserError
from training.core.layout import WorldPaths, coerce_table, write_world_meta

logger = logging.getLogger(__name__)

ID_CHARSET = "[A-Za-z0-9_.:-]"
"""Characters allowed in listener and item ids (the serving layer validates the same set)."""
ID_MAX_LENGTH = 128
ID_PATTERN = rf"{ID_CHARSET}{{1,{ID_MAX_LENGTH}}}"

DEFAULT_CONTENT_TYPE = "playlist"
DEFAULT_DURATION_MS = 180_000
MIN_DERIVED_DURATION_MS = 1_000
UNKNOWN = "unknown"

ISO_OFFSET_PATTERN = r"^[^T ]*[T ][^Z+\-]*[Z+\-]"
"""An ISO 8601 string with a UTC offset: "Z", "+" or "-" after the time separator."""
EPOCH_SECONDS_RANGE = (10**9, 9_223_372_037)
"""Accepted epoch seconds, half-open: 2001-09-09 up to 2262-04-11 (the datetime64[ns] limit)."""
EPOCH_MILLIS_RANGE = (10**12, 9_223_372_036_855)
"""Accepted epoch milliseconds, half-open: the same dates."""

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")

EVENT_REQUIRED = ("listener_id", "item_id", "timestamp")
EVENT_OPTIONAL = ("ms_played", "content_type", "hour")
ITEM_REQUIRED = ("item_id",)
ITEM_OPTIONAL = ("content_type", "genre", "market", "released_at", "is_editorial", "duration_ms")
LISTENER_REQUIRED = ("listener_id",)
LISTENER_OPTIONAL = ("market", "age_bucket", "platform", "signup_at")

TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0")

_TEXT = pd.StringDtype("pyarrow")
_NS_PER_SECOND = 1_000_000_000
_NS_PER_MILLI = 1_000_000


class WorldImportError(UserError, ValueError):
    """An input file cannot be imported; the message names the file (and row and column)."""


# --------------------------------------------------------------------------- input files


@dataclass
class _Source:
    """One input file, read into a frame whose row ``i`` is data row ``i + 1`` of the file."""

    path: Path
    frame: pd.DataFrame

    def error(
        self, problem: str, column: str | None = None, position: int | None = None
    ) -> WorldImportError:
        where = [str(self.path)]
        if position is not None:
            where.append(f"row {position + 1}")
        if column is not None:
            where.append(f"column '{column}'")
        return WorldImportError(f"{', '.join(where)}: {problem}")

    def has(self, column: str) -> bool:
        return column in self.frame.columns


def _file_error(path: Path, problem: str) -> WorldImportError:
    return WorldImportError(f"{path}: {problem}")


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first(mask: pd.Series | np.ndarray) -> int | None:
    """Position of the first True in a boolean mask (nulls count as False), or None."""
    if isinstance(mask, pd.Series):
        mask = mask.to_numpy(dtype=bool, na_value=False)
    if not mask.any():
        return None
    return int(np.argmax(mask))


def _take(values: np.ndarray, positions: np.ndarray, fill: Any) -> np.ndarray:
    """``values[positions]`` where a position is >= 0 and ``fill`` where it is -1."""
    found = positions >= 0
    out = np.full(len(positions), fill, dtype=values.dtype)
    out[found] = values[positions[found]]
    return out


def _utc(values: np.ndarray) -> pd.Series:
    """Naive datetime64[ns] values (meaning UTC) as a datetime64[ns, UTC] series."""
    return pd.Series(pd.to_datetime(values, utc=True))


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([frame for frame in frames if len(frame)], ignore_index=True)


def _read_source(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> _Source:
    """Read the known columns of one CSV or parquet file; check it is there and not empty."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        raise _file_error(
            path,
            f"unsupported file type {suffix or '(no suffix)'!r}: expected .csv, .parquet or .pq",
        )
    if not path.is_file():
        raise _file_error(path, "file not found")
    if path.stat().st_size == 0:
        raise _file_error(path, "file is empty")
    known = required + optional
    if suffix in CSV_SUFFIXES:
        frame = _read_csv(path, required, known)
    else:
        frame = _read_parquet(path, required, known)
    if len(frame) == 0:
        raise _file_error(path, "file is empty (no data rows)")
    logger.info("read %s: %d rows, columns %s", path, len(frame), list(frame.columns))
    return _Source(path, frame.reset_index(drop=True))


def _select_columns(
    path: Path, names: list[str], required: tuple[str, ...], known: tuple[str, ...]
) -> dict[str, str]:
    """Map the file's raw column names to known column names (whitespace-stripped)."""
    selected: dict[str, str] = {}
    for raw in names:
        name = raw.strip()
        if name not in known:
            continue
        if name in selected.values():
            raise _file_error(path, f"column '{name}' appears more than once in the header")
        selected[raw] = name
    missing = [name for name in required if name not in selected.values()]
    if missing:
        found = ", ".join(repr(n) for n in names) or "none"
        raise _file_error(path, f"missing required column '{missing[0]}' (columns found: {found})")
    ignored = [raw for raw in names if raw not in selected]
    if ignored:
        logger.info("%s: ignoring columns %s", path, ignored)
    return selected


def _read_csv(path: Path, required: tuple[str, ...], known: tuple[str, ...]) -> pd.DataFrame:
    # pyarrow's reader with every column typed as text: multi-threaded (10M-row logs) and,
    # unlike pandas' pyarrow engine with dtype=str, it never parses "2024" into "2024.0".
    try:
        names = pa_csv.open_csv(path).schema.names
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise _file_error(path, "file is empty") from exc
        raise _file_error(path, f"cannot read CSV: {exc}") from exc
    selected = _select_columns(path, names, required, known)
    options = pa_csv.ConvertOptions(
        column_types={raw: pa.string() for raw in selected},
        include_columns=list(selected),
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    try:
        table = pa_csv.read_csv(path, convert_options=options)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise _file_error(path, f"cannot read CSV: {exc}") from exc
    # one chunk per column: factorizing and regex matching are much faster on it
    frame = table.combine_chunks().to_pandas(types_mapper={pa.string(): _TEXT}.get)
    return frame.rename(columns=selected)


def _read_parquet(path: Path, required: tuple[str, ...], known: tuple[str, ...]) -> pd.DataFrame:
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise _file_error(path, f"cannot read parquet: {exc}") from exc
    selected = _select_columns(path, names, required, known)
    try:
        table = pq.read_table(path, columns=list(selected))
    except (pa.ArrowException, OSError) as exc:
        raise _file_error(path, f"cannot read parquet: {exc}") from exc
    frame = table.to_pandas(
        types_mapper={pa.string(): _TEXT, pa.large_string(): _TEXT}.get,
        date_as_object=False,
    )
    return frame.rename(columns=selected)


# ------------------------------------------------------------------------- column checks


def _is_text(series: pd.Series) -> bool:
    return isinstance(series.dtype, pd.StringDtype | pd.CategoricalDtype) or series.dtype == object


def _as_text(source: _Source, column: str, series: pd.Series) -> pd.Series:
    """``series`` as pyarrow-backed strings; values that are not text are a column error."""
    try:
        return series.astype(_TEXT)
    except (TypeError, ValueError, pa.ArrowException) as exc:
        raise source.error(f"expected text: {exc}", column) from exc


def _text(source: _Source, column: str) -> pd.Series:
    """An optional text column as pyarrow-backed strings (nulls kept)."""
    series = source.frame[column]
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_datetime64_any_dtype(
        series.dtype
    ):
        raise source.error(f"expected text, found type {series.dtype}", column)
    return _as_text(source, column, series)


def _ids(source: _Source, column: str) -> pd.Series:
    """An id column: text (or integers, written as text), never null, charset and length checked."""
    series = source.frame[column]
    integers = pd.api.types.is_integer_dtype(series.dtype)
    if (integers and not pd.api.types.is_bool_dtype(series.dtype)) or _is_text(series):
        series = _as_text(source, column, series)
    else:
        raise source.error(f"ids must be text or integers, found type {series.dtype}", column)
    position = _first(series.isna())
    if position is not None:
        raise source.error("empty id", column, position)
    position = _first(~series.str.fullmatch(ID_PATTERN).to_numpy(dtype=bool, na_value=False))
    if position is not None:
        value = series.iloc[position]
        if len(value) == 0:
            problem = "empty id"
        elif len(value) > ID_MAX_LENGTH:
            problem = f"id is {len(value)} characters long (at most {ID_MAX_LENGTH} allowed)"
        else:
            problem = f"id {_show(value)} has characters outside {ID_CHARSET}"
        raise source.error(problem, column, position)
    return series


def _content_types(source: _Source, column: str = "content_type") -> pd.Series:
    """content_type as codes into CONTENT_TYPES (int8, -1 where missing)."""
    series = _text(source, column)
    codes = pd.Categorical(series, categories=list(CONTENT_TYPES)).codes
    position = _first((codes < 0) & series.notna().to_numpy())
    if position is not None:
        raise source.error(
            f"unknown content_type {_show(series.iloc[position])} "
            f"(allowed: {', '.join(CONTENT_TYPES)})",
            column,
            position,
        )
    return pd.Series(codes.astype(np.int8), index=series.index)


def _integers(source: _Source, column: str, minimum: int, maximum: int | None = None) -> pd.Series:
    """An integer column (nullable Int64): text or numbers, whole values within the bounds."""
    series = source.frame[column]
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_datetime64_any_dtype(
        series.dtype
    ):
        raise source.error(f"expected integers, found type {series.dtype}", column)
    if _is_text(series):
        text = _as_text(source, column, series)
        try:  # fast path: every cell is a plain integer
            exact = pc.cast(pa.array(text.array), pa.int64())
            numbers = pd.Series(exact, dtype=pd.ArrowDtype(pa.int64())).astype("Int64")
        except pa.ArrowInvalid:
            numbers = pd.to_numeric(text, errors="coerce").astype("Float64")
            position = _first(text.notna() & numbers.isna())
            if position is not None:
                raise source.error(
                    f"not an integer: {_show(text.iloc[position])}", column, position
                ) from None
    elif pd.api.types.is_integer_dtype(series.dtype):
        numbers = series.astype("Int64")
    else:
        numbers = series.astype("Float64")
    if not pd.api.types.is_integer_dtype(numbers.dtype):
        position = _first(numbers.notna() & ((numbers % 1 != 0) | numbers.abs().ge(2.0**62)))
        if position is not None:
            raise source.error(f"not an integer: {_show(series.iloc[position])}", column, position)
        numbers = numbers.round().astype("Int64")
    position = _first(numbers.notna() & numbers.lt(minimum))
    if position is not None:
        raise source.error(
            f"{numbers.iloc[position]} is below the minimum {minimum}", column, position
        )
    if maximum is not None:
        position = _first(numbers.notna() & numbers.gt(maximum))
        if position is not None:
            raise source.error(
                f"{numbers.iloc[position]} is above the maximum {maximum}", column, position
            )
    return numbers


def _booleans(source: _Source, column: str) -> pd.Series:
    """A boolean column (nullable boolean): true/false, t/f, yes/no, y/n, 1/0 or booleans."""
    series = source.frame[column]
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("boolean")
    if pd.api.types.is_numeric_dtype(series.dtype):
        bad = series.notna() & ~series.isin([0, 1])
        position = _first(bad)
        if position is None:
            return series.astype("Float64").astype("boolean")
    else:
        words = _as_text(source, column, series).str.strip().str.lower()
        is_true, is_false = words.isin(TRUE_WORDS), words.isin(FALSE_WORDS)
        position = _first(words.notna() & ~is_true & ~is_false)
        if position is None:
            return is_true.astype("boolean").mask(words.isna())
    raise source.error(
        f"not a boolean: {_show(series.iloc[position])} (use true/false, yes/no or 1/0)",
        column,
        position,
    )


def _epochs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer epochs, seconds or millis decided per value, as (int64 nanoseconds, bad mask)."""
    seconds = (values >= EPOCH_SECONDS_RANGE[0]) & (values < EPOCH_SECONDS_RANGE[1])
    millis = (values >= EPOCH_MILLIS_RANGE[0]) & (values < EPOCH_MILLIS_RANGE[1])
    bad = ~(seconds | millis) | (values % 1 != 0)
    whole = np.where(bad, 0, values).astype(np.int64)
    return np.where(seconds, whole * _NS_PER_SECOND, whole * _NS_PER_MILLI), bad


def _epoch_problem(value: Any) -> str:
    return (
        f"integer timestamp {_show(value)} is neither epoch seconds (10**9 to 9223372036) "
        "nor epoch milliseconds (10**12 to 9223372036854), i.e. 2001-09-09 to 2262-04-11"
    )


def _timestamps(source: _Source, column: str, required: bool) -> pd.Series:
    """A timestamp column as datetime64[ns, UTC] (NaT where missing, unless required)."""
    series = source.frame[column]
    if pd.api.types.is_bool_dtype(series.dtype):
        raise source.error(f"expected timestamps, found type {series.dtype}", column)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        if series.dt.tz is None:
            series = series.dt.tz_localize("UTC")
        series = series.dt.tz_convert("UTC")
        low, high = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
        position = _first(series.notna() & (series.lt(low) | series.gt(high)))
        if position is not None:
            raise source.error(
                f"timestamp {series.iloc[position]} is outside the supported range "
                "(years 1677 to 2262)",
                column,
                position,
            )
        result = series.astype("datetime64[ns, UTC]")
    elif pd.api.types.is_numeric_dtype(series.dtype):
        # float64 holds every accepted epoch (< 10**14) exactly
        values = series.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        present = ~np.isnan(values)
        nanos, bad = _epochs(np.where(present, values, EPOCH_SECONDS_RANGE[0]))
        position = _first(bad & present)
        if position is not None:
            raise source.error(_epoch_problem(series.iloc[position]), column, position)
        nanos[~present] = np.datetime64("NaT").view(np.int64)
        result = _utc(nanos.view("datetime64[ns]"))
    elif _is_text(series):
        result = _parse_timestamp_text(source, column, series)
    else:
        raise source.error(f"expected timestamps, found type {series.dtype}", column)
    result = result.reset_index(drop=True)
    if required:
        position = _first(result.isna())
        if position is not None:
            raise source.error("empty timestamp", column, position)
    return result


def _parse_iso(text: pd.Series, aware: bool) -> np.ndarray:
    """Non-null ISO 8601 strings, all with (``aware``) or all without a UTC offset, as int64
    nanoseconds since the epoch in UTC (NaT's value where unparseable)."""
    try:  # fast path: pyarrow's strict ISO 8601 parser, when it accepts every string
        parsed = pc.cast(pa.array(text.array), pa.timestamp("ns", "UTC" if aware else None))
        return parsed.cast(pa.int64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        parsed = parsed.astype("datetime64[ns, UTC]").dt.tz_convert(None)
        return parsed.to_numpy(dtype="datetime64[ns]").view(np.int64)


def _parse_timestamp_text(source: _Source, column: str, series: pd.Series) -> pd.Series:
    """Text timestamps: all-digit cells are epochs, every other cell is ISO 8601."""
    text = _as_text(source, column, series).str.strip()
    text = text.mask(text == "")
    nanos = np.full(len(text), np.datetime64("NaT").view(np.int64), dtype=np.int64)
    epoch_bad = np.zeros(len(text), dtype=bool)
    iso_bad = np.zeros(len(text), dtype=bool)

    digits = text.str.fullmatch(r"\d{1,15}").to_numpy(dtype=bool, na_value=False)
    if digits.any():
        values = pd.to_numeric(text[digits]).to_numpy(dtype=np.float64)
        nanos[digits], epoch_bad[digits] = _epochs(values)

    # pandas' ISO 8601 parser carries the offset of one string over to the naive strings
    # after it (["...+02:00", "... 08:00"] reads the second as 06:00 UTC), so strings with
    # and without an offset are parsed separately. An offset can only follow the time part,
    # which starts at the first "T" or space.
    others = text.notna().to_numpy() & ~digits
    with_offset = text.str.contains(ISO_OFFSET_PATTERN).to_numpy(dtype=bool, na_value=False)
    for group, aware in ((others & with_offset, True), (others & ~with_offset, False)):
        if group.any():
            nanos[group] = _parse_iso(text if group.all() else text[group], aware)
            iso_bad[group] = nanos[group] == np.datetime64("NaT").view(np.int64)

    position = _first(epoch_bad | iso_bad)
    if position is not None:
        value = text.iloc[position]
        if epoch_bad[position]:
            problem = _epoch_problem(int(value))
        else:
            problem = (
                f"cannot parse {_show(value)} as a timestamp (expected ISO 8601 such as "
                "2024-05-01T13:45:00Z, years 1677 to 2262, or epoch seconds/milliseconds)"
            )
        raise source.error(problem, column, position)
    return _utc(nanos.view("datetime64[ns]"))


def _duplicates(source: _Source, ids: pd.Series, column: str) -> None:
    position = _first(ids.duplicated(keep="first"))
    if position is not None:
        value = ids.iloc[position]
        first = _first(ids.eq(value))
        assert first is not None  # value was read from ids
        raise source.error(
            f"duplicate {column} {_show(value)} (first seen on row {first + 1})",
            column,
            position,
        )


# ------------------------------------------------------------------------ parsed inputs


@dataclass
class _Events:
    listener_id: pd.Series
    item_id: pd.Series
    timestamp: pd.Series
    ms_played: pd.Series | None
    content_type: np.ndarray  # int8 codes into CONTENT_TYPES, -1 missing
    hour: pd.Series | None


def _parse_events(source: _Source) -> _Events:
    n = len(source.frame)
    return _Events(
        listener_id=_ids(source, "listener_id"),
        item_id=_ids(source, "item_id"),
        timestamp=_timestamps(source, "timestamp", required=True),
        ms_played=_integers(source, "ms_played", 0) if source.has("ms_played") else None,
        content_type=(
            _content_types(source).to_numpy()
            if source.has("content_type")
            else np.full(n, -1, dtype=np.int8)
        ),
        hour=_integers(source, "hour", 0, 23) if source.has("hour") else None,
    )


_NOTHING: dict[str, Any] = {
    "text": pd.NA,
    "content_type": -1,
    "timestamp": pd.NaT,
    "boolean": pd.NA,
    "integer": pd.NA,
}
_NOTHING_DTYPE = {
    "text": _TEXT,
    "content_type": np.int8,
    "timestamp": "datetime64[ns, UTC]",
    "boolean": "boolean",
    "integer": "Int64",
}


def _attributes(source: _Source | None, id_column: str, kinds: dict[str, str]) -> pd.DataFrame:
    """Parse an optional attribute file (items or listeners): unique ids, typed attributes.

    Absent columns (or no file at all) become all-missing columns, so the builders see one
    shape; content_type is int8 codes into CONTENT_TYPES (-1: missing).
    """
    if source is None:
        frame = pd.DataFrame({id_column: pd.Series([], dtype=_TEXT)})
        n = 0
    else:
        ids = _ids(source, id_column)
        _duplicates(source, ids, id_column)
        frame = pd.DataFrame({id_column: ids})
        n = len(ids)
    for column, kind in kinds.items():
        if source is None or not source.has(column):
            frame[column] = pd.Series(_NOTHING[kind], index=range(n), dtype=_NOTHING_DTYPE[kind])
        elif kind == "text":
            frame[column] = _text(source, column)
        elif kind == "content_type":
            frame[column] = _content_types(source, column)
        elif kind == "timestamp":
            frame[column] = _timestamps(source, column, required=False)
        elif kind == "boolean":
            frame[column] = _booleans(source, column)
        else:
            frame[column] = _integers(source, column, minimum=1)
    return frame


def _parse_items(source: _Source | None) -> pd.DataFrame:
    kinds = {
        "content_type": "content_type",
        "genre": "text",
        "market": "text",
        "released_at": "timestamp",
        "is_editorial": "boolean",
        "duration_ms": "integer",  # at least 1
    }
    return _attributes(source, "item_id", kinds)


def _parse_listeners(source: _Source | None) -> pd.DataFrame:
    kinds = {"market": "text", "age_bucket": "text", "platform": "text", "signup_at": "timestamp"}
    return _attributes(source, "listener_id", kinds)


# ------------------------------------------------------------------------- assembly


def _check_content_types(
    events_source: _Source,
    log: _Events,
    item_codes: np.ndarray,
    event_items: pd.Index,
    items_source: _Source | None,
    given: pd.DataFrame,
) -> np.ndarray:
    """Check the events' content_types against the items file and against each other.

    Returns, per distinct event item, the content_type code its events give (-1: none).
    """
    event_ct = log.content_type
    labels = np.array(CONTENT_TYPES, dtype=object)
    if items_source is not None:
        file_pos = pd.Index(given["item_id"]).get_indexer(event_items)[item_codes]
        file_ct = _take(given["content_type"].to_numpy(np.int8), file_pos, -1)
        position = _first((event_ct >= 0) & (file_ct >= 0) & (event_ct != file_ct))
        if position is not None:
            raise events_source.error(
                f"content_type {labels[event_ct[position]]!r} of item "
                f"{_show(log.item_id.iloc[position])} contradicts "
                f"{labels[file_ct[position]]!r} in {items_source.path} "
                f"(row {file_pos[position] + 1})",
                "content_type",
                position,
            )
    first_ct = np.full(len(event_items), -1, dtype=np.int8)
    first_row = np.full(len(event_items), -1, dtype=np.int64)
    rows = np.flatnonzero(event_ct >= 0)
    if len(rows):
        firsts = rows[~pd.Series(item_codes[rows]).duplicated().to_numpy()]
        first_ct[item_codes[firsts]] = event_ct[firsts]
        first_row[item_codes[firsts]] = firsts
        position = _first((event_ct >= 0) & (event_ct != first_ct[item_codes]))
        if position is not None:
            code = item_codes[position]
            raise events_source.error(
                f"item {_show(log.item_id.iloc[position])} has content_type "
                f"{labels[event_ct[position]]!r} here but {labels[first_ct[code]]!r} on "
                f"row {first_row[code] + 1}",
                "content_type",
                position,
            )
    return first_ct


def _derived_durations(log: _Events, item_codes: np.ndarray, n_items: int) -> np.ndarray:
    """Per distinct event item: median given ms_played (rounded, >= 1000), else the default."""
    durations = np.full(n_items, DEFAULT_DURATION_MS, dtype=np.int64)
    if log.ms_played is not None:
        present = log.ms_played.notna().to_numpy()
        if present.any():
            played = log.ms_played.to_numpy(dtype=np.float64, na_value=0)[present]
            medians = pd.Series(played).groupby(item_codes[present]).median()
            values = np.maximum(np.round(medians.to_numpy()), MIN_DERIVED_DURATION_MS)
            durations[medians.index.to_numpy()] = values.astype(np.int64)
    return durations


def _first_times(codes: np.ndarray, timestamp: pd.Series, n_groups: int) -> np.ndarray:
    """Earliest timestamp per group code ``0..n_groups-1``, as naive datetime64[ns] (UTC)."""
    nanos = timestamp.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]").view(np.int64)
    first = pd.Series(nanos).groupby(codes).min().reindex(range(n_groups))
    return first.to_numpy(dtype=np.int64).view("datetime64[ns]")


def _build_items(
    log: _Events,
    item_codes: np.ndarray,
    event_items: pd.Index,
    events_ct: np.ndarray,
    given: pd.DataFrame,
    world_start: pd.Timestamp,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The catalog: the items-file rows (gaps filled), then items known only from events.

    Also returns each distinct event item's final duration_ms and content_type code, which
    fill the events' missing ms_played and content_type.
    """
    labels = np.array(CONTENT_TYPES, dtype=object)
    playlist = CONTENT_TYPES.index(DEFAULT_CONTENT_TYPE)
    first_play = _first_times(item_codes, log.timestamp, len(event_items))
    derived_duration = _derived_durations(log, item_codes, len(event_items))
    derived_ct = np.where(events_ct >= 0, events_ct, playlist).astype(np.int8)

    # items-file rows: a missing attribute comes from the item's events, else the default
    event_pos = event_items.get_indexer(given["item_id"])  # -1: never played
    given_ct = given["content_type"].to_numpy(np.int8)
    content_type = np.where(given_ct >= 0, given_ct, _take(derived_ct, event_pos, playlist))
    duration = np.where(
        given["duration_ms"].isna().to_numpy(),
        _take(derived_duration, event_pos, DEFAULT_DURATION_MS),
        given["duration_ms"].to_numpy(dtype=np.int64, na_value=0),
    )
    released = (
        given["released_at"]
        .fillna(_utc(_take(first_play, event_pos, np.datetime64("NaT"))))
        .fillna(world_start)
    )
    from_file = pd.DataFrame(
        {
            "item_id": given["item_id"],
            "content_type": labels[content_type],
            "genre": given["genre"].fillna(UNKNOWN),
            "market": given["market"].fillna(UNKNOWN),
            "released_at": released,
            "is_editorial": given["is_editorial"].fillna(False).astype(bool),
            "duration_ms": duration,
        }
    )

    # items known only from the events
    file_pos = pd.Index(given["item_id"]).get_indexer(event_items)  # -1: not in the file
    new = file_pos < 0
    derived = pd.DataFrame(
        {
            "item_id": pd.Series(event_items[new], dtype=_TEXT),
            "content_type": labels[derived_ct[new]],
            "genre": UNKNOWN,
            "market": UNKNOWN,
            "released_at": _utc(first_play[new]),
            "is_editorial": False,
            "duration_ms": derived_duration[new],
        }
    )
    logger.info(
        "items: %d from the items file (%d never played), %d derived from the events",
        len(from_file),
        int((event_pos < 0).sum()),
        len(derived),
    )
    final_duration = np.where(new, derived_duration, _take(duration, file_pos, 0))
    final_ct = np.where(new, derived_ct, _take(content_type.astype(np.int8), file_pos, 0))
    return _concat([from_file, derived]), final_duration, final_ct


def _build_listeners(log: _Events, given: pd.DataFrame, world_start: pd.Timestamp) -> pd.DataFrame:
    """The audience: the listeners-file rows (gaps filled), then listeners only in events."""
    codes, uniques = pd.factorize(log.listener_id)
    uniques = pd.Index(uniques)
    first_event = _first_times(codes, log.timestamp, len(uniques))

    event_pos = uniques.get_indexer(given["listener_id"])  # -1: no events
    signup = (
        given["signup_at"]
        .fillna(_utc(_take(first_event, event_pos, np.datetime64("NaT"))))
        .fillna(world_start)
    )
    from_file = pd.DataFrame(
        {
            "listener_id": given["listener_id"],
            "market": given["market"].fillna(UNKNOWN),
            "age_bucket": given["age_bucket"].fillna(UNKNOWN),
            "platform": given["platform"].fillna(UNKNOWN),
            "signup_at": signup,
        }
    )
    new = pd.Index(given["listener_id"]).get_indexer(uniques) < 0
    derived = pd.DataFrame(
        {
            "listener_id": pd.Series(uniques[new], dtype=_TEXT),
            "market": UNKNOWN,
            "age_bucket": UNKNOWN,
            "platform": UNKNOWN,
            "signup_at": _utc(first_event[new]),
        }
    )
    logger.info(
        "listeners: %d from the listeners file (%d without events), %d derived from the events",
        len(from_file),
        int((event_pos < 0).sum()),
        len(derived),
    )
    return _concat([from_file, derived])


# ------------------------------------------------------------------------------ entry


def import_world(
    events: Path,
    out_dir: Path,
    items: Path | None = None,
    listeners: Path | None = None,
) -> dict[str, Any]:
    """Validate a listening log (plus optional items/listeners files) and write it as a world.

    Args:
        events: the listening log (``.csv``, ``.parquet`` or ``.pq``).
        out_dir: the world directory to (re)place, e.g. ``settings.world_dir``.
        items: optional catalog attributes, one row per item.
        listeners: optional listener attributes, one row per listener.

    Returns:
        The ``world.json`` metadata written.

    Raises:
        WorldImportError: an input is missing, unreadable or invalid; nothing was written.
    """
    events, out_dir = Path(events), Path(out_dir)
    items = Path(items) if items is not None else None
    listeners = Path(listeners) if listeners is not None else None

    # read and validate everything before writing anything
    events_source = _read_source(events, EVENT_REQUIRED, EVENT_OPTIONAL)
    items_source = _read_source(items, ITEM_REQUIRED, ITEM_OPTIONAL) if items else None
    listeners_source = (
        _read_source(listeners, LISTENER_REQUIRED, LISTENER_OPTIONAL) if listeners else None
    )
    log = _parse_events(events_source)
    given_items = _parse_items(items_source)
    given_listeners = _parse_listeners(listeners_source)

    item_codes, event_items = pd.factorize(log.item_id)
    event_items = pd.Index(event_items)
    events_ct = _check_content_types(
        events_source, log, item_codes, event_items, items_source, given_items
    )

    world_start = log.timestamp.min().floor("D")
    world_end = log.timestamp.max().floor("D") + pd.Timedelta(days=1)
    catalog, item_duration, item_ct = _build_items(
        log, item_codes, event_items, events_ct, given_items, world_start
    )
    audience = _build_listeners(log, given_listeners, world_start)

    labels = np.array(CONTENT_TYPES, dtype=object)
    ms_played = item_duration[item_codes]
    if log.ms_played is not None:
        ms_played = np.where(
            log.ms_played.notna().to_numpy(),
            log.ms_played.to_numpy(np.int64, na_value=0),
            ms_played,
        )
    hour = log.timestamp.dt.hour.to_numpy(np.int8)
    if log.hour is not None:
        hour = np.where(log.hour.notna().to_numpy(), log.hour.to_numpy(np.int8, na_value=0), hour)
    played = pd.DataFrame(
        {
            "listener_id": log.listener_id,
            "item_id": log.item_id,
            "timestamp": log.timestamp,
            "ms_played": ms_played,
            "content_type": labels[item_ct[item_codes]],
            "hour": hour,
        }
    )

    tables = {
        "listeners": coerce_table(audience, "listeners"),
        "items": coerce_table(catalog, "items"),
        "events": coerce_table(played, "events"),
    }
    meta: dict[str, Any] = {
        "source": "imported",
        "seed": None,
        "start": world_start.isoformat(),
        "end": world_end.isoformat(),
        "importer": __name__,
        "days": int((world_end - world_start) / pd.Timedelta(days=1)),
        "counts": {
            **{name: len(frame) for name, frame in tables.items()},
            "items_by_type": {
                kind: int(count)
                for kind, count in zip(
                    CONTENT_TYPES,
                    np.bincount(
                        pd.Categorical(tables["items"]["content_type"], CONTENT_TYPES).codes,
                        minlength=len(CONTENT_TYPES),
                    ),
                    strict=True,
                )
            },
        },
        "inputs": {
            "events": str(events.resolve()),
            "items": str(items.resolve()) if items else None,
            "listeners": str(listeners.resolve()) if listeners else None,
        },
    }

    with replacing_dir(out_dir) as staged:
        paths = WorldPaths(staged)
        for name, frame in tables.items():
            frame.to_parquet(paths.table(name), index=False)
        write_world_meta(paths, meta)
    logger.info(
        "imported world at %s: %d listeners, %d items, %d events (%s to %s)",
        out_dir,
        len(tables["listeners"]),
        len(tables["items"]),
        len(tables["events"]),
        meta["start"],
        meta["end"],
    )
    return meta
