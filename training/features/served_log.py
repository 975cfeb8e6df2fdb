"""Served-feature log: a sample of the feature vectors models scored, for drift checks.

``FeatureLog.record`` is called on the request path and only samples and enqueues; a
writer thread turns queued rows into parquet files, one file per ``batch_rows`` rows (or
per ``flush_seconds``) and shelf::

    <directory>/<shelf>/served-<UTC time>-<sequence>.parquet

Each row: ``request_id``, ``shelf``, ``model``, ``model_version``, ``served_at`` (UTC),
``listener_id``, ``item_id`` and the model's features. Memory is bounded: the queue holds
at most ``max_rows`` rows and drops (and counts) what does not fit. Files are written to a
temp name and renamed, so readers see whole files only; temp files a killed server left
are removed when the next log starts. ``close()`` flushes everything.
"""

import logging
import random
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from training.core.atomic_io import atomic_writer, remove_leftovers

logger = logging.getLogger(__name__)

LOG_COLUMNS = [
    "request_id",
    "shelf",
    "model",
    "model_version",
    "served_at",
    "listener_id",
    "item_id",
]
"""Columns every logged row has before the model's features."""
LEFTOVERS = "*/.served-*.tmp"
"""Temp files of log writes a killed server never renamed (removed when a log starts)."""


@dataclass(frozen=True)
class _Batch:
    shelf: str
    frame: pd.DataFrame


class FeatureLog:
    """Samples requests and writes their feature rows to parquet off the request path."""

    def __init__(
        self,
        directory: Path,
        sample_rate: float,
        batch_rows: int = 5000,
        max_rows: int = 100_000,
        flush_seconds: float = 10.0,
        on_drop=None,
        seed: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.sample_rate = sample_rate
        self.batch_rows = batch_rows
        self.max_rows = max_rows
        self.flush_seconds = flush_seconds
        self.on_drop = on_drop or (lambda rows: None)
        self._random = random.Random(seed)
        self._queue: deque[_Batch] = deque()
        self._queued_rows = 0
        self._lock = threading.Condition()
        self._closed = False
        self._sequence = 0
        self.dropped_rows = 0
        self.written_files: list[Path] = []
        remove_leftovers(self.directory, LEFTOVERS)
        self._writer = threading.Thread(target=self._run, name="feature-log", daemon=True)
        self._writer.start()

    def sampled(self) -> bool:
        """Whether this request's features are logged (one draw per request)."""
        return self.sample_rate > 0 and self._random.random() < self.sample_rate

    def record(
        self,
        request_id: str,
        shelf: str,
        model: str,
        model_version: str,
        features: pd.DataFrame,
    ) -> None:
        """Enqueue the rows of one scored shelf (columns listener_id, item_id, features)."""
        rows = len(features)
        if rows == 0:
            return
        frame = features.reset_index(drop=True).assign(
            request_id=request_id,
            shelf=shelf,
            model=model,
            model_version=model_version,
            served_at=pd.Timestamp(datetime.now(UTC)),
        )
        frame = frame[LOG_COLUMNS + [c for c in frame.columns if c not in LOG_COLUMNS]]
        with self._lock:
            if self._closed or self._queued_rows + rows > self.max_rows:
                self.dropped_rows += rows
                self.on_drop(rows)
                return
            self._queue.append(_Batch(shelf, frame))
            self._queued_rows += rows
            if self._queued_rows >= self.batch_rows:
                self._lock.notify()

    def _take(self) -> list[_Batch]:
        with self._lock:
            batches = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            return batches

    def _write(self, batches: list[_Batch]) -> None:
        by_shelf: dict[str, list[pd.DataFrame]] = {}
        for batch in batches:
            by_shelf.setdefault(batch.shelf, []).append(batch.frame)
        for shelf, frames in by_shelf.items():
            frame = frames[0] if len(frames) == 1 else _concat(frames)
            for start in range(0, len(frame), self.batch_rows):
                self._write_file(shelf, frame.iloc[start : start + self.batch_rows])

    def _write_file(self, shelf: str, frame: pd.DataFrame) -> None:
        folder = self.directory / shelf
        folder.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        path = folder / f"served-{stamp}-{self._sequence:06d}.parquet"
        with atomic_writer(path) as handle:
            frame.to_parquet(handle, index=False)
        self.written_files.append(path)
        logger.debug("feature log: %d rows to %s", len(frame), path)

    def _run(self) -> None:
        last_flush = time.monotonic()
        while True:
            with self._lock:
                if not self._closed and self._queued_rows < self.batch_rows:
                    self._lock.wait(
                        timeout=max(0.0, self.flush_seconds - (time.monotonic() - last_flush))
                    )
                closed = self._closed
            due = time.monotonic() - last_flush >= self.flush_seconds
            if closed or due or self._queued_rows >= self.batch_rows:
                batches = self._take()
                if batches:
                    try:
                        self._write(batches)
                    except Exception:  # a full disk must not stop serving
                        logger.exception("feature log: %d batches lost", len(batches))
                last_flush = time.monotonic()
            if closed:
                return

    def close(self) -> None:
        """Stop taking rows, write what is queued, and wait for the writer."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._writer.join()


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames of one shelf, one after another. They share the dtypes of the shelf's
    contract, so pandas' warning about all-null columns changing result dtypes in a future
    release does not apply (a shelf's pair features are all null on a discovery page)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The behavior of DataFrame concatenation", FutureWarning)
        return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class LoggedRows:
    """What a read of the log found: the rows of every readable file, oldest first, and
    the files that could not be read (torn or corrupt), which were skipped."""

    rows: pd.DataFrame
    unreadable: list[Path]


def read_logged_rows(directory: Path, shelf: str | None = None) -> LoggedRows:
    """Every logged row under ``directory`` (of one shelf, or all); an unreadable file is
    skipped with a warning naming it, so one torn file never hides the others."""
    pattern = f"{shelf}/served-*.parquet" if shelf else "*/served-*.parquet"
    frames, unreadable = [], []
    for path in sorted(Path(directory).glob(pattern)):
        try:
            frames.append(pd.read_parquet(path))
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            logger.warning("feature log: skipped unreadable %s (%s)", path, error)
            unreadable.append(path)
    rows = _concat(frames) if frames else pd.DataFrame(columns=LOG_COLUMNS)
    return LoggedRows(rows, unreadable)


def read_feature_log(directory: Path, shelf: str | None = None) -> pd.DataFrame:
    """The rows of :func:`read_logged_rows`."""
    return read_logged_rows(directory, shelf).rows
