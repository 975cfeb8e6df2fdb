"""Training sets: candidates as of each snapshot, labels from strictly after it, Feast features.

For a shelf and a list of snapshot times: every listener who had signed up is a request;
stage 1 proposes candidates from point-in-time Feast reads; each candidate gets its model
features from ``get_historical_features(features=<the shelf's FeatureService>)`` and a
graded label from the listener's plays of it in ``(snapshot, snapshot + horizon]``.

The windows keep only requests with a relevant candidate (the others teach a ranker
nothing), so their rows are selected by what happened *after* the snapshot. A set also
keeps ``reference`` rows: every candidate of a seeded sample of the shelf audience's
train-window requests, whatever their labels. That is the population the model is served,
and the reference profile drift checks compare served features with.
"""

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureStore
from feast.types import Array
from tqdm.auto import tqdm

from training.candidates import (
    candidate_feature_names,
    generate_candidates,
    in_audience,
    read_candidate_inputs,
)
from training.core.atomic_io import atomic_write_text, replacing_dir
from training.core.errors import UserError
from training.core.layout import WorldPaths
from training.core.settings import Settings
from training.core.shelves import Label, Shelf, load_shelves
from training.features.store import OfflineReader, world_window

logger = logging.getLogger(__name__)

DAY = pd.Timedelta(days=1)
REQUEST_COLUMNS = ["group", "listener_id", "event_timestamp"]
REFERENCE_REQUESTS = 2000
"""Train-window requests of the shelf's audience sampled into a set's reference rows."""


@dataclass(frozen=True)
class TimeSplit:
    """Snapshot times of the train, validation and test windows, in time order.

    Test is the last window whose labels fit in the world. Each earlier window ends
    ``horizon`` days before the next one starts, so no label of a window overlaps the
    period the next window's labels come from (validation would otherwise reward
    memorizing what was trending then).
    """

    train: list[pd.Timestamp]
    valid: list[pd.Timestamp]
    test: list[pd.Timestamp]

    def to_dict(self) -> dict[str, list[str]]:
        return {
            name: [t.isoformat() for t in getattr(self, name)]
            for name in ("train", "valid", "test")
        }


class WindowTooShortError(UserError, ValueError):
    """The world window cannot hold the warm-up and the train, valid and test windows."""


def time_split(
    start: pd.Timestamp,
    end: pd.Timestamp,
    horizon_days: int,
    settings: Settings,
    every_days: int | None = None,
) -> TimeSplit:
    """Split the world window into snapshot times (see ``TimeSplit``). Training snapshots
    step back every ``settings.train_every_days`` days (unset: ``every_days``, the shelf's
    own, default 1) from the last one that fits, which is always kept: the closest to what
    the model will serve."""
    horizon = horizon_days * DAY
    test = _days_ending(end - horizon, settings.test_days)
    valid = _days_ending(test[0] - horizon, settings.valid_days)
    first_train = start + settings.warmup_days * DAY
    last_train = valid[0] - horizon
    step = (settings.train_every_days or every_days or 1) * DAY
    count = (last_train - first_train) // step + 1 if last_train >= first_train else 0
    train = [last_train - i * step for i in reversed(range(count))]
    if len(train) < 2:
        raise WindowTooShortError(
            f"world window {start.date()}..{end.date()} is too short: warm-up"
            f" {settings.warmup_days}d, 2 training snapshots, then validation"
            f" {settings.valid_days}d and test {settings.test_days}d, each followed by the"
            f" {horizon_days}d label horizon; generate more days or lower HOMEREC_*_DAYS"
        )
    return TimeSplit(train=train, valid=valid, test=test)


def _days_ending(last: pd.Timestamp, days: int) -> list[pd.Timestamp]:
    return [last - i * DAY for i in reversed(range(days))]


def snapshot_requests(
    listeners: pd.DataFrame,
    snapshots: list[pd.Timestamp],
    max_per_snapshot: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """One request (group) per listener signed up before each snapshot; where there are
    more than ``max_per_snapshot``, a seeded random sample of that many (bounds the size
    of training sets on large worlds)."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in snapshots:
        ids = listeners.loc[listeners["signup_at"] < t, "listener_id"].to_numpy()
        if max_per_snapshot is not None and len(ids) > max_per_snapshot:
            ids = np.sort(rng.choice(ids, size=max_per_snapshot, replace=False))
        frames.append(pd.DataFrame({"listener_id": ids, "event_timestamp": t}))
    requests = pd.concat(frames, ignore_index=True)
    requests.insert(0, "group", np.arange(len(requests)))
    return requests


def grade(label: Label, plays: np.ndarray, minutes: np.ndarray) -> np.ndarray:
    """Relevance grades as ``Label`` defines them (0..4)."""
    if label.grade == "plays":
        return np.minimum(plays, 4).astype(np.int64)
    return np.where(plays > 0, 1 + np.minimum(3, minutes // 15), 0).astype(np.int64)


def label_rows(rows: pd.DataFrame, events: pd.DataFrame, label: Label) -> np.ndarray:
    """Relevance of each (listener_id, item_id, event_timestamp) row from the plays in
    ``(event_timestamp, event_timestamp + horizon]`` — strictly after the snapshot."""
    keyed = rows[["listener_id", "item_id", "event_timestamp"]].reset_index(drop=True)
    keyed["row"] = np.arange(len(keyed))
    joined = keyed.merge(events, on=["listener_id", "item_id"], how="inner")
    after = joined["timestamp"] > joined["event_timestamp"]
    within = joined["timestamp"] <= joined["event_timestamp"] + label.horizon_days * DAY
    joined = joined[after & within]
    plays = np.bincount(joined["row"], minlength=len(keyed))
    minutes = np.bincount(
        joined["row"], weights=joined["ms_played"] / 60_000.0, minlength=len(keyed)
    )
    return grade(label, plays, minutes)


def model_feature_names(store: FeatureStore, shelf: Shelf) -> list[str]:
    """A shelf model's input contract: its FeatureService's scalar features, then the
    candidate signals. Array features feed stage 1 only."""
    service = store.get_feature_service(shelf.feature_service)
    names = [
        field.name
        for projection in service.feature_view_projections
        for field in projection.features
        if not isinstance(field.dtype, Array)
    ]
    return names + candidate_feature_names(shelf)


def build_rows(
    store: FeatureStore,
    shelf: Shelf,
    requests: pd.DataFrame,
    events: pd.DataFrame,
) -> pd.DataFrame:
    """Candidates, labels and model features for ``requests`` (columns REQUEST_COLUMNS and
    ``part``: train, valid, test or reference).

    Requests none of whose candidates is relevant teach a ranker nothing and have no NDCG,
    so they are dropped before the (costly) feature read, except reference ones (drift
    profiles the population as served). Train requests keep every relevant candidate and
    a sample of ``shelf.train_negatives`` irrelevant ones (all when None).
    """
    reader = OfflineReader(store)
    inputs = read_candidate_inputs(reader, requests, [shelf])
    rows = generate_candidates(shelf, inputs).merge(requests, on="group", how="left")
    rows["label"] = label_rows(rows, events, shelf.label)
    part = rows["part"].to_numpy()
    keep = rows.groupby("group")["label"].transform("max").to_numpy() > 0
    keep |= part == "reference"
    if shelf.train_negatives is not None:
        keep &= (part != "train") | sample_negatives(rows, shelf.train_negatives)
    rows = rows[keep].reset_index(drop=True)
    features = reader.read(
        store.get_feature_service(shelf.feature_service),
        rows[["listener_id", "item_id", "event_timestamp"]],
    )
    return pd.concat([rows, features.drop(columns=[c for c in features if c in rows])], axis=1)


def sample_negatives(rows: pd.DataFrame, per_request: int) -> np.ndarray:
    """Which ``rows`` (group, listener_id, item_id, event_timestamp, label) to keep: every
    relevant one, and of each request's irrelevant ones the ``per_request`` with the
    smallest hash of (listener, item, time). The sample is seeded by the rows themselves,
    so it does not depend on how requests were batched."""
    negative = rows["label"].to_numpy() == 0
    draw = pd.util.hash_pandas_object(
        rows[["listener_id", "item_id", "event_timestamp"]], index=False
    ).to_numpy()
    order = np.lexsort((draw, rows["group"].to_numpy()))
    group, counted = rows["group"].to_numpy()[order], np.cumsum(negative[order])
    first = np.searchsorted(group, group, side="left")
    before = np.where(first > 0, counted[np.maximum(first - 1, 0)], 0)
    keep = np.empty(len(rows), dtype=bool)
    keep[order] = ~negative[order] | (counted - before <= per_request)
    return keep


def frame_hash(frame: pd.DataFrame) -> str:
    """SHA-256 over a frame's column names and values (identical data, same hash)."""
    digest = hashlib.sha256(json.dumps(list(map(str, frame.columns))).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class TrainingSet:
    """One shelf's train/valid/test rows and what they were built from; ``reference``: the
    rows drift checks profile (see the module docstring; None in sets saved without)."""

    shelf: str
    rows: dict[str, pd.DataFrame]
    feature_names: list[str]
    split: TimeSplit
    data_hash: str
    reference: pd.DataFrame | None = None

    def reference_rows(self) -> pd.DataFrame:
        """``reference``; ValueError for a set saved without it (by an older homerec)."""
        if self.reference is None:
            raise ValueError(
                f"the {self.shelf} training set has no reference rows (saved by an older "
                "homerec): build it again (homerec train)"
            )
        return self.reference


def reference_requests(
    listeners: pd.DataFrame, shelf: Shelf, snapshots: list[pd.Timestamp], count: int, seed: int = 0
) -> pd.DataFrame:
    """A seeded sample of ``count`` requests of the shelf's audience at ``snapshots``."""
    requests = snapshot_requests(listeners, snapshots)
    signup = requests["listener_id"].map(listeners.set_index("listener_id")["signup_at"])
    age = (requests["event_timestamp"] - signup) / DAY
    audience = requests[in_audience(shelf, age)]
    sample = audience.sample(min(count, len(audience)), random_state=seed).sort_values("group")
    return sample.assign(group=np.arange(len(sample))).reset_index(drop=True)


REFERENCE_FILE = "reference.parquet"
WINDOWS = ("train", "valid", "test")
REQUESTS_PER_BATCH = 25_000
"""Requests read from Feast together: a retrieval has a fixed cost of about a second, so
few of them, but each batch's candidates and features must fit in memory."""


def _stacked(requests: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Each part's requests, one after another, with a ``part`` column and group ids
    offset so they stay unique: one frame, read from Feast in batches (``_batches``)."""
    frames, offset = [], 0
    for part, frame in requests.items():
        frames.append(frame.assign(group=frame["group"] + offset, part=part))
        offset += len(frame)
    return pd.concat(frames, ignore_index=True)


def _batches(requests: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    """``requests`` in runs of whole snapshot times of about ``size`` requests each."""
    per_time = requests.groupby("event_timestamp").size()
    batch_of_time = (per_time.cumsum() - 1) // size
    batch = requests["event_timestamp"].map(batch_of_time).to_numpy()
    return [requests[batch == b] for b in np.unique(batch)]


def _unstacked(rows: pd.DataFrame, requests: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """``rows`` of stacked requests split back by part, with each part's own group ids."""
    parts, offset = {}, 0
    for part, frame in requests.items():
        selected = rows[rows["part"] == part].drop(columns="part").reset_index(drop=True)
        parts[part] = selected.assign(group=selected["group"] - offset)
        offset += len(frame)
    return parts


def build_training_set(
    store: FeatureStore,
    shelf: Shelf,
    world_dir: Path,
    split: TimeSplit,
    max_requests_per_snapshot: int | None = None,
) -> TrainingSet:
    """Rows of every window of ``split`` and the reference rows for ``shelf``, read from
    Feast in a few batches of whole snapshots; scalar features only are kept."""
    paths = WorldPaths(world_dir)
    listeners = pd.read_parquet(paths.listeners, columns=["listener_id", "signup_at"])
    events = pd.read_parquet(
        paths.events, columns=["listener_id", "item_id", "timestamp", "ms_played"]
    )
    names = model_feature_names(store, shelf)
    columns = [*REQUEST_COLUMNS, "item_id", "source", "reason", *names, "label"]
    requests = {
        window: snapshot_requests(listeners, getattr(split, window), max_requests_per_snapshot)
        for window in WINDOWS
    }
    requests["reference"] = reference_requests(listeners, shelf, split.train, REFERENCE_REQUESTS)
    batches = _batches(_stacked(requests), REQUESTS_PER_BATCH)
    built = pd.concat(
        [
            build_rows(store, shelf, batch, events)[[*columns, "part"]]
            for batch in tqdm(batches, desc=f"{shelf.name} training set", unit="batch")
        ],
        ignore_index=True,
    )
    parts = {part: frame[columns] for part, frame in _unstacked(built, requests).items()}
    for window in WINDOWS:
        logger.info(
            "%s %s: %d of %d requests with a relevant candidate, %d candidates, %.1f%% positive",
            shelf.name,
            window,
            parts[window]["group"].nunique(),
            len(requests[window]),
            len(parts[window]),
            100 * (parts[window]["label"] > 0).mean() if len(parts[window]) else 0.0,
        )
    rows = {window: parts[window] for window in WINDOWS}
    frames = [*rows.values(), parts["reference"]]
    data_hash = hashlib.sha256("".join(map(frame_hash, frames)).encode()).hexdigest()
    return TrainingSet(shelf.name, rows, names, split, data_hash, parts["reference"])


def save_training_set(training_set: TrainingSet, directory: Path) -> None:
    """Parquet per window plus ``training_set.json`` (windows, features, hash), written to a
    staging directory and swapped in whole."""
    with replacing_dir(directory) as staged:
        _write_training_set(training_set, staged)


def _write_training_set(training_set: TrainingSet, staged: Path) -> None:
    for window, frame in training_set.rows.items():
        frame.to_parquet(staged / f"{window}.parquet", index=False)
    if training_set.reference is not None:
        training_set.reference.to_parquet(staged / REFERENCE_FILE, index=False)
    meta = {
        "shelf": training_set.shelf,
        "feature_names": training_set.feature_names,
        "split": training_set.split.to_dict(),
        "data_hash": training_set.data_hash,
        "rows": {window: len(frame) for window, frame in training_set.rows.items()},
        "reference_rows": None if training_set.reference is None else len(training_set.reference),
    }
    atomic_write_text(staged / "training_set.json", json.dumps(meta, indent=2) + "\n")


def _check_saved(directory: Path) -> Path:
    """The set's ``training_set.json``; FileNotFoundError naming the fix when missing."""
    meta_path = directory / "training_set.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no training set at {directory}: run `homerec train` first")
    return meta_path


def load_training_set(directory: Path) -> TrainingSet:
    meta = json.loads(_check_saved(directory).read_text())
    split = TimeSplit(**{w: [pd.Timestamp(t) for t in ts] for w, ts in meta["split"].items()})
    rows = {w: pd.read_parquet(directory / f"{w}.parquet") for w in WINDOWS}
    reference_path = directory / REFERENCE_FILE
    reference = pd.read_parquet(reference_path) if reference_path.exists() else None
    return TrainingSet(
        meta["shelf"], rows, meta["feature_names"], split, meta["data_hash"], reference
    )


def load_window(directory: Path, window: str) -> pd.DataFrame:
    """One window's rows of a saved training set (evaluation reads only ``test``, a fraction
    of the whole set)."""
    _check_saved(directory)
    return pd.read_parquet(directory / f"{window}.parquet")


def shelf_split(settings: Settings, shelf: Shelf, as_of: datetime | None = None) -> TimeSplit:
    """The shelf's train/valid/test snapshots in the world window, cut at ``as_of`` when
    given: every snapshot and label then comes from events before ``as_of``."""
    start, end = world_window(settings)
    if as_of is not None:
        end = min(end, as_of)
    return time_split(
        pd.Timestamp(start),
        pd.Timestamp(end),
        shelf.label.horizon_days,
        settings,
        shelf.train_every_days,
    )


def check_windows_fit(settings: Settings, start: date, days: int) -> None:
    """WindowTooShortError when a world of ``days`` days from ``start`` cannot hold some
    shelf's warm-up, train, valid and test windows (checked before a world is made)."""
    first = pd.Timestamp(start, tz="UTC")
    for shelf in load_shelves(settings.shelves_file):
        last = first + pd.Timedelta(days=days)
        time_split(first, last, shelf.label.horizon_days, settings, shelf.train_every_days)


def build_shelf_training_set(
    settings: Settings, store: FeatureStore, shelf: Shelf, split: TimeSplit, directory: Path
) -> TrainingSet:
    """Build the shelf's training set for ``split`` from Feast and save it to ``directory``."""
    training_set = build_training_set(
        store, shelf, settings.world_dir, split, settings.max_requests_per_snapshot
    )
    save_training_set(training_set, directory)
    return training_set
