"""The three shelf models: training sets without leakage, rankers that beat their
heuristics, models that reload to the same predictions, imported worlds and user-added
shelves that train with no code change, and shelf files that fail clearly.

Training is costly, so it happens once: ``trained_world`` (conftest) trains and evaluates
every shelf of a small fixed-seed world; the imported world and the user-added shelf each
train once per module.
"""

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from evaluation.report import evaluate_all, format_table
from tests.conftest import SHORT_WINDOWS, TrainedWorld, candidate_dir, project_settings
from training.core.layout import training_set_dir
from training.core.settings import Settings
from training.core.shelves import (
    DEFAULT_SHELVES_FILE,
    Label,
    ShelfConfigError,
    load_shelves,
    shelf_by_name,
)
from training.features.pipeline import prepare_features
from training.features.store import open_store, world_window
from training.jobs.train import train_all
from training.models.fitting import fit_ranker
from training.models.rankers import load_ranker, save_ranker
from training.training_sets import (
    TrainingSet,
    frame_hash,
    label_rows,
    load_training_set,
    model_feature_names,
    sample_negatives,
    snapshot_requests,
    time_split,
)
from training.world.importer import import_world

SHELVES = load_shelves()
SHELF_NAMES = [shelf.name for shelf in SHELVES]
WINDOWS = ("train", "valid", "test")
DAY = pd.Timedelta(days=1)
SYSTEM_METRICS = {"ndcg@5", "ndcg@10", "recall@5", "recall@10", "map", "coverage@10", "n_groups"}

SHORTCUTS_MIN_MARGIN = 0.02
"""Shortcuts model - baseline NDCG@10 must be at least this. Measured on 300 listeners x
50 days with SHORT_WINDOWS: +0.053 (seed 1, the fixture's; 95% interval [0.042, 0.065]),
+0.037 (seed 2, [0.025, 0.049]), +0.057 (seed 3, [0.046, 0.070]). The other shelves are
not asserted at this size: shows +0.012/-0.012/+0.057 and try_something_else
+0.206/+0.021/+0.097 on seeds 1/2/3, intervals including zero on some seeds."""
ORACLE_TOLERANCE = 0.01
"""The oracle may trail the model by this much NDCG@10 (finite-sample noise)."""
ORACLE_BOUNDED_SHELVES = ["shortcuts", "shows_you_might_like"]
"""Shelves whose oracle bounds the model on the small world (oracle ahead by ~0.10 and
~0.14). Not try_something_else: evaluated on its new-listener audience only (54-75 test
groups here), the model measured 0.015-0.042 *above* the oracle on seed 1 (paired
interval for oracle - model about [-0.10, +0.02]), so that bound is noise at this size."""


def training_set(settings: Settings, name: str) -> TrainingSet:
    return load_training_set(training_set_dir(settings, name))


def all_rows(ts: TrainingSet) -> pd.DataFrame:
    return pd.concat([ts.rows[w].assign(window=w) for w in WINDOWS], ignore_index=True)


def finite_numbers(value: Any, path: str = "report") -> Iterator[tuple[str, float]]:
    """Every number in a JSON-like structure, with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from finite_numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from finite_numbers(item, f"{path}[{index}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, float(value)


# ------------------------------------------------------------------------- time split


def test_time_split_windows_are_ordered_and_purged(trained_world: TrainedWorld):
    """Train, validation and test snapshots are in time order, and each window's last
    label (snapshot + horizon) falls at or before the next window's first snapshot, and
    the test labels inside the world: no label period overlaps a later window."""
    settings = trained_world.settings
    start, end = (pd.Timestamp(t) for t in world_window(settings))
    for shelf in SHELVES:
        horizon = shelf.label.horizon_days * DAY
        split = training_set(settings, shelf.name).split
        assert split == time_split(
            start, end, shelf.label.horizon_days, settings, shelf.train_every_days
        )
        assert len(split.train) >= 2 and len(split.valid) == settings.valid_days
        assert len(split.test) == settings.test_days
        for window in WINDOWS:
            times = getattr(split, window)
            assert times == sorted(times), f"{shelf.name} {window} not in time order"
        assert split.train[0] >= start + settings.warmup_days * DAY, "warm-up not respected"
        assert split.train[-1] + horizon <= split.valid[0], "train labels reach validation"
        assert split.valid[-1] + horizon <= split.test[0], "validation labels reach test"
        assert split.test[-1] + horizon <= end, "test labels run past the world's end"


@pytest.mark.parametrize(
    ("days", "horizon", "overrides"),
    [
        (35, 7, SHORT_WINDOWS),
        (50, 3, {"warmup_days": 10, "valid_days": 5, "test_days": 2, "train_every_days": 1}),
        (90, 14, {}),
    ],
)
def test_time_split_is_purged_for_any_settings(days: int, horizon: int, overrides: dict):
    """The purge holds for other horizons and window sizes, with daily test/valid steps."""
    settings = Settings(**overrides)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    end = start + days * DAY
    split = time_split(start, end, horizon, settings)
    assert split.test[-1] == end - horizon * DAY, "test is not the last window that fits"
    assert all(b - a == DAY for a, b in zip(split.test, split.test[1:], strict=False))
    assert split.train[-1] + horizon * DAY <= split.valid[0]
    assert split.valid[-1] + horizon * DAY <= split.test[0]
    assert split.train[-1] + horizon * DAY == split.valid[0], "latest train snapshot dropped"
    assert split.train[0] >= start + settings.warmup_days * DAY
    stride = (settings.train_every_days or 1) * DAY
    assert split.train[0] - stride < start + settings.warmup_days * DAY
    assert {b - a for a, b in zip(split.train, split.train[1:], strict=False)} == {stride}


def test_time_split_takes_the_shelf_stride_unless_the_setting_overrides_it():
    """A shelf's train_every_days spaces its training snapshots back from the latest one
    that fits; HOMEREC_TRAIN_EVERY_DAYS, when set, wins for every shelf."""
    start = pd.Timestamp("2026-01-01", tz="UTC")
    end = start + 75 * DAY
    daily = time_split(start, end, 7, Settings())
    by_shelf = time_split(start, end, 7, Settings(), every_days=3)
    overridden = time_split(start, end, 7, Settings(train_every_days=2), every_days=3)
    assert by_shelf.train == daily.train[::-1][::3][::-1]
    assert overridden.train == daily.train[::-1][::2][::-1]
    assert by_shelf.valid == daily.valid and by_shelf.test == daily.test


def test_time_split_refuses_a_world_too_short():
    """A window that cannot hold warm-up, two training snapshots, validation and test
    (each followed by the horizon) is an error that says what to change."""
    start = pd.Timestamp("2026-01-01", tz="UTC")
    with pytest.raises(ValueError, match="too short"):
        time_split(start, start + 20 * DAY, 7, Settings(**SHORT_WINDOWS))


# ------------------------------------------------------------------------- no leakage


def test_label_counts_plays_strictly_after_the_snapshot_up_to_the_horizon():
    """Labels come from plays in (t, t + horizon]: a play exactly at the snapshot t (the
    features' side of the cut) and one a second after t + horizon do not count; plays at
    t + 1 s and exactly at t + horizon do. Other items and listeners never mix in."""
    t = pd.Timestamp("2026-02-01", tz="UTC")
    horizon = 7 * DAY
    second = pd.Timedelta(seconds=1)
    minutes = 60_000
    events = pd.DataFrame(
        {
            "listener_id": ["a"] * 4 + ["a", "b"],
            "item_id": ["x"] * 4 + ["y", "x"],
            "timestamp": [t, t + second, t + horizon, t + horizon + second, t + DAY, t + DAY],
            "ms_played": [90 * minutes, 10 * minutes, 20 * minutes, 90 * minutes] + [minutes] * 2,
        }
    )
    rows = pd.DataFrame(
        {"listener_id": ["a", "a", "b", "c"], "item_id": ["x", "z", "y", "x"], "event_timestamp": t}
    )
    plays = label_rows(rows, events, Label(horizon_days=7, grade="plays"))
    assert plays.tolist() == [2, 0, 0, 0], "plays: only t+1s and t+horizon count"
    graded = label_rows(rows, events, Label(horizon_days=7, grade="minutes"))
    # 10 + 20 = 30 minutes -> 1 + min(3, 30 // 15) = 3; the 90-minute plays are outside.
    assert graded.tolist() == [3, 0, 0, 0], "minutes: only t+1s and t+horizon count"
    # One second later, the play at t + 1 s is AT the snapshot (out) and the one at
    # t + horizon + 1 s is AT the horizon's end (in): still 2, but not the same two.
    shifted = rows.assign(event_timestamp=t + second)
    graded = label_rows(shifted, events, Label(horizon_days=7, grade="minutes"))
    assert graded[0] == 1 + min(3, (20 + 90) // 15), "boundaries did not move with the snapshot"


def test_negative_sampling_keeps_every_positive_and_at_most_n_negatives_per_request():
    """Of each request, every relevant row and ``n`` irrelevant ones (all when fewer);
    the sample is the same whether a request is sampled alone or among others."""
    rng = np.random.default_rng(1)
    t = pd.Timestamp("2026-02-01", tz="UTC")
    sizes = [1, 3, 12, 40, 40]
    rows = pd.DataFrame(
        {
            "group": np.repeat(np.arange(len(sizes)), sizes),
            "listener_id": np.repeat([f"L{g}" for g in range(len(sizes))], sizes),
            "item_id": [f"I{i:03d}" for size in sizes for i in rng.permutation(size)],
            "event_timestamp": t,
            "label": rng.choice([0, 0, 0, 1, 2], size=sum(sizes)),
        }
    )
    keep = sample_negatives(rows, 5)
    for group, frame in rows.groupby("group"):
        kept = frame[keep[frame.index]]
        assert (kept["label"] > 0).sum() == (frame["label"] > 0).sum(), f"{group}: positive lost"
        assert (kept["label"] == 0).sum() == min(5, (frame["label"] == 0).sum()), group
        alone = sample_negatives(frame.iloc[::-1].reset_index(drop=True), 5)
        assert set(frame.iloc[::-1][alone]["item_id"]) == set(kept["item_id"]), group
    assert not sample_negatives(rows, 1)[rows["label"].to_numpy() == 0].all()


def expected_label(label: Label, pair_events: pd.DataFrame, t: pd.Timestamp) -> int:
    """A label recomputed from one pair's raw plays, written independently of label_rows."""
    timestamps = pair_events["timestamp"]
    inside = ((timestamps > t) & (timestamps <= t + label.horizon_days * DAY)).to_numpy()
    plays = int(inside.sum())
    minutes = float(pair_events["ms_played"].to_numpy()[inside].sum()) / 60_000
    if label.grade == "plays":
        return min(plays, 4)
    return 0 if plays == 0 else 1 + min(3, int(minutes // 15))


@pytest.mark.parametrize("name", SHELF_NAMES)
def test_training_labels_equal_plays_in_the_horizon_after_the_snapshot(
    trained_world: TrainedWorld, name: str
):
    """For sampled rows of every window (positives and negatives), the stored label is
    the one recomputed from the raw log strictly in (snapshot, snapshot + horizon]."""
    settings = trained_world.settings
    shelf = shelf_by_name(SHELVES, name)
    rows = all_rows(training_set(settings, name))
    sample = pd.concat(
        [
            rows[rows["label"] > 0].sample(150, random_state=0),
            rows[rows["label"] == 0].sample(150, random_state=0),
        ]
    )
    events = pd.read_parquet(settings.world_dir / "events.parquet")
    events = events.merge(sample[["listener_id", "item_id"]].drop_duplicates())
    by_pair = {key: frame for key, frame in events.groupby(["listener_id", "item_id"])}
    empty = events.iloc[:0]
    for row in sample.itertuples():
        plays = by_pair.get((row.listener_id, row.item_id), empty)
        want = expected_label(shelf.label, plays, row.event_timestamp)
        assert row.label == want, f"{name} {row.window} row {row.Index}: {row.label} != {want}"


@pytest.mark.parametrize("name", SHELF_NAMES)
def test_training_rows_are_requests_at_the_split_snapshots(trained_world: TrainedWorld, name):
    """Each window's rows are stamped at that window's snapshots, for listeners signed up
    before the snapshot, and every group (listener x snapshot) has a relevant candidate."""
    settings = trained_world.settings
    ts = training_set(settings, name)
    signup = pd.read_parquet(settings.world_dir / "listeners.parquet").set_index("listener_id")
    for window in WINDOWS:
        rows = ts.rows[window]
        assert len(rows) > 0, f"{name} {window} is empty"
        assert set(rows["event_timestamp"]) <= set(getattr(ts.split, window))
        assert (rows["listener_id"].map(signup["signup_at"]) < rows["event_timestamp"]).all()
        per_group = rows.groupby("group").agg(
            listeners=("listener_id", "nunique"),
            times=("event_timestamp", "nunique"),
            best=("label", "max"),
        )
        assert (per_group["listeners"] == 1).all() and (per_group["times"] == 1).all()
        assert (per_group["best"] > 0).all(), f"{name} {window}: group without a positive"


def plays_before(events: pd.DataFrame, rows: pd.DataFrame, keys: list[str], days: int):
    """Plays of each row's ``keys`` in [event_timestamp - days, event_timestamp)."""
    joined = rows[[*keys, "event_timestamp"]].reset_index().merge(events, on=keys)
    inside = (joined["timestamp"] < joined["event_timestamp"]) & (
        joined["timestamp"] >= joined["event_timestamp"] - days * DAY
    )
    counts = joined[inside].groupby("index").size()
    return counts.reindex(rows.index, fill_value=0)


def as_of(table: pd.DataFrame, rows: pd.DataFrame, keys: list[str], ttl: pd.Timedelta):
    """The latest row of ``table`` per key stamped at or before each row's timestamp."""
    left = rows[[*keys, "event_timestamp"]].reset_index().sort_values("event_timestamp")
    right = table.sort_values("event_timestamp")
    right = right.assign(event_timestamp=right["event_timestamp"].astype(left.dtypes.iloc[-1]))
    merged = pd.merge_asof(
        left, right, on="event_timestamp", by=keys, direction="backward", tolerance=ttl
    )
    return merged.set_index("index").reindex(rows.index)


@pytest.mark.parametrize("name", ["shortcuts", "shows_you_might_like"])
def test_training_features_see_only_plays_before_the_snapshot(trained_world, name):
    """Model features of training rows are the offline table rows stamped at or before
    the row's snapshot, and count only plays strictly before it: pair_plays_7d/28d and
    plays_7d_show equal counts of raw plays in [t - window, t)."""
    settings = trained_world.settings
    store = open_store(settings)
    rows = all_rows(training_set(settings, name)).sample(400, random_state=1)
    events = pd.read_parquet(
        settings.world_dir / "events.parquet", columns=["listener_id", "item_id", "timestamp"]
    )
    content = pd.read_parquet(settings.world_dir / "items.parquet").set_index("item_id")
    shows = events[events["item_id"].map(content["content_type"]) == "show"]
    pair = ["listener_id", "item_id"]
    for column, days in (("pair_plays_7d", 7), ("pair_plays_28d", 28)):
        got = rows[column].fillna(0).astype(int)
        want = plays_before(events, rows, pair, days)
        assert (got == want).all(), f"{name} {column}: {(got != want).sum()} rows differ"
    got = rows["plays_7d_show"].fillna(0).astype(int)
    want = plays_before(shows, rows, ["listener_id"], 7)
    assert (got == want).all(), f"{name} plays_7d_show: {(got != want).sum()} rows differ"

    tables = {
        "listener_item": (pair, ["pair_plays_28d", "pair_minutes_28d"]),
        "listener_profile": (["listener_id"], ["plays_7d_show", "account_age_days"]),
        "item_stats": (["item_id"], ["item_listeners_7d", "item_plays_28d"]),
    }
    for view, (keys, columns) in tables.items():
        table = pd.read_parquet(settings.features_dir / f"{view}.parquet")
        ttl = pd.Timedelta(store.get_feature_view(view).ttl)
        want = as_of(table, rows, keys, ttl)
        for column in columns:
            np.testing.assert_allclose(
                rows[column].astype(float),
                want[column].astype(float),
                err_msg=f"{name} {view}:{column} is not the row as of the snapshot",
            )


# ------------------------------------------------------------------------- model quality


def test_report_has_every_system_metric_slice_and_comparison(trained_world: TrainedWorld):
    """evaluate_all returns {"shelves": {name: {model, baseline, oracle, slices,
    model_vs_baseline, test_window}}} for every shelf, as strict JSON (no NaN), with
    metrics in [0, 1] over every test group of the shelf's audience."""
    report = trained_world.report
    assert set(report) == {"shelves"}
    assert list(report["shelves"]) == SHELF_NAMES
    json.dumps(report, allow_nan=False)
    for name, shelf_report in report["shelves"].items():
        assert {"model", "baseline", "oracle", "slices", "model_vs_baseline"} <= set(shelf_report)
        for system in ("model", "baseline", "oracle"):
            metrics = shelf_report[system]
            assert SYSTEM_METRICS <= set(metrics), f"{name} {system}: {set(metrics)}"
            for metric in SYSTEM_METRICS - {"n_groups"}:
                assert 0.0 <= metrics[metric] <= 1.0, f"{name} {system} {metric}"
            assert metrics["n_groups"] == shelf_report["test_window"]["groups"] > 0
        comparison = shelf_report["model_vs_baseline"]
        assert {"ndcg@10_diff", "ci95", "interval_excludes_zero", "gap_closed"} <= set(comparison)
        low, high = comparison["ci95"]
        assert low <= comparison["ndcg@10_diff"] <= high
        diff = shelf_report["model"]["ndcg@10"] - shelf_report["baseline"]["ndcg@10"]
        assert comparison["ndcg@10_diff"] == pytest.approx(diff)
        assert comparison["resampled"] == "listeners"
        gap_low, gap_high = comparison["gap_closed_ci95"]
        assert gap_low <= comparison["gap_closed"] <= gap_high
        assert set(shelf_report["slices"]) == {"tenure", "market", "platform"}
        for values in shelf_report["slices"].values():
            for entry in values.values():
                assert {"groups", "model", "baseline", "oracle"} <= set(entry)
    cold_start = report["shelves"]["try_something_else"]["slices"]["tenure"]
    assert "established" not in cold_start, "the cold-start shelf was evaluated on old listeners"
    assert "oracle" in format_table(report).splitlines()[0]


def test_shortcuts_model_beats_its_recency_frequency_baseline(trained_world: TrainedWorld):
    """The Shortcuts ranker beats the recency/frequency heuristic on the held-out test
    window by a clear margin, with a bootstrap 95% interval above zero."""
    shelf = trained_world.report["shelves"]["shortcuts"]
    model, baseline = shelf["model"]["ndcg@10"], shelf["baseline"]["ndcg@10"]
    assert model - baseline >= SHORTCUTS_MIN_MARGIN, f"model {model:.4f} baseline {baseline:.4f}"
    assert shelf["model_vs_baseline"]["ci95"][0] > 0, shelf["model_vs_baseline"]
    valid = trained_world.trained["shortcuts"].metadata["metrics"]
    assert valid["valid_ndcg@8"] > valid["valid_baseline_ndcg@8"], valid


@pytest.mark.parametrize("name", ORACLE_BOUNDED_SHELVES)
def test_oracle_bounds_the_model(trained_world: TrainedWorld, name: str):
    """The generator's expected engagement ranks at least as well as the trained model
    (it is the best any model could do), and closes a gap the model only partly closes."""
    shelf = trained_world.report["shelves"][name]
    oracle, model = shelf["oracle"]["ndcg@10"], shelf["model"]["ndcg@10"]
    assert oracle >= model - ORACLE_TOLERANCE, f"{name}: oracle {oracle:.4f} model {model:.4f}"
    assert oracle > shelf["baseline"]["ndcg@10"]


# ------------------------------------------------------------------------- saved models


@pytest.mark.parametrize("name", SHELF_NAMES)
def test_saved_model_reloads_to_the_predictions_made_right_after_training(
    trained_world: TrainedWorld, name: str
):
    """The registered candidate, loaded, scores the saved test rows exactly (bit for bit)
    as the ranker train_all held in memory before saving it."""
    settings = trained_world.settings
    test = training_set(settings, name).rows["test"]
    loaded, _ = load_ranker(candidate_dir(settings, name))
    in_memory = trained_world.fitted[name].predict(test)
    np.testing.assert_array_equal(loaded.predict(test), in_memory)
    assert np.unique(in_memory).size > 1, "a constant model would pass trivially"


def test_refit_on_the_saved_training_set_reproduces_the_model(trained_world, tmp_path):
    """Fitting again on the training set read back from disk gives the saved model's
    predictions exactly (same data, same seed), and so does that refit after a save and
    load round trip through a fresh directory."""
    settings = trained_world.settings
    ts = training_set(settings, "shortcuts")
    test = ts.rows["test"]
    refit = fit_ranker(ts)
    predictions = refit.predict(test)
    saved, _ = load_ranker(candidate_dir(settings, "shortcuts"))
    np.testing.assert_array_equal(predictions, saved.predict(test))
    save_ranker(refit, tmp_path / "model", {"shelf": "shortcuts"})
    reloaded, metadata = load_ranker(tmp_path / "model")
    np.testing.assert_array_equal(reloaded.predict(test), predictions)
    assert metadata == {"shelf": "shortcuts"}


@pytest.mark.parametrize("name", SHELF_NAMES)
def test_ranker_json_records_the_models_contract(trained_world: TrainedWorld, name: str):
    """ranker.json holds what serving and audits need: the FeatureService, the ordered
    feature names (the service's scalar features, then candidate signals), the time
    split, the hash of the training data it was fitted on, and validation metrics."""
    settings = trained_world.settings
    shelf = shelf_by_name(SHELVES, name)
    ts = training_set(settings, name)
    _, metadata = load_ranker(candidate_dir(settings, name))
    contract = json.loads((candidate_dir(settings, name) / "ranker.json").read_text())
    assert contract["sha256"] == trained_world.trained[name].sha256
    assert metadata["feature_service"] == shelf.feature_service
    assert metadata["feature_names"] == ts.feature_names == contract["feature_names"]
    assert metadata["feature_names"] == model_feature_names(open_store(settings), shelf)
    assert metadata["split"] == ts.split.to_dict()
    rehashed = "".join(frame_hash(f) for f in [*(ts.rows[w] for w in WINDOWS), ts.reference])
    assert metadata["data_hash"] == ts.data_hash
    assert metadata["data_hash"] == hashlib.sha256(rehashed.encode()).hexdigest()
    assert metadata["rows"] == {w: len(ts.rows[w]) for w in WINDOWS}
    for key in (f"valid_ndcg@{shelf.k}", f"valid_baseline_ndcg@{shelf.k}"):
        assert 0.0 <= metadata["metrics"][key] <= 1.0, key


# ------------------------------------------------------------------------- imported world


@pytest.fixture(scope="module")
def imported_report(small_world_store: Settings, tmp_path_factory) -> dict[str, Any]:
    """small_world_store's public tables exported to CSV (no truth), imported into a fresh
    data directory, featurized, trained and evaluated."""
    world = small_world_store.world_dir
    export = tmp_path_factory.mktemp("export")
    files = {}
    for table in ("listeners", "items", "events"):
        files[table] = export / f"{table}.csv"
        pd.read_parquet(world / f"{table}.parquet").to_csv(files[table], index=False)
    settings = project_settings(export / "data", **SHORT_WINDOWS)
    meta = import_world(
        files["events"], settings.world_dir, items=files["items"], listeners=files["listeners"]
    )
    assert meta["source"] == "imported"
    prepare_features(settings)
    trained = train_all(settings)
    assert [t.shelf for t in trained] == SHELF_NAMES
    return evaluate_all(settings)


def test_imported_world_trains_and_evaluates_without_an_oracle(imported_report):
    """A world imported from CSV files goes through features, Feast, training and
    evaluation unchanged; its report has model and baseline but no oracle (imported
    worlds have no ground truth) and only finite numbers."""
    assert list(imported_report["shelves"]) == SHELF_NAMES
    for name, shelf_report in imported_report["shelves"].items():
        assert "oracle" not in shelf_report, f"{name}: an oracle without ground truth"
        assert "gap_closed" not in shelf_report["model_vs_baseline"]
        for system in ("model", "baseline"):
            assert SYSTEM_METRICS <= set(shelf_report[system]), name
            assert shelf_report[system]["n_groups"] > 0, f"{name} {system}: no test group"
        for path, value in finite_numbers(shelf_report, name):
            assert math.isfinite(value), f"{path} = {value}"
    json.dumps(imported_report, allow_nan=False)
    assert "shortcuts" in format_table(imported_report)


# ------------------------------------------------------------------------- shelves as data


def write_shelves(path: Path, mutate) -> Path:
    raw = yaml.safe_load(DEFAULT_SHELVES_FILE.read_text())
    mutate(raw["shelves"])
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


BAD_SHELVES = {
    "unknown content type": (
        lambda shelves: shelves[1].update(content_types=["show", "audiobook"]),
        ["content_types", "audiobook"],
    ),
    "duplicate shelf name": (
        lambda shelves: shelves[2].update(name="shortcuts"),
        ["names", "shortcuts"],
    ),
    "unknown candidate kind": (
        lambda shelves: shelves[1]["candidates"].append({"kind": "trending", "limit": 5}),
        ["candidates", "kind", "trending"],
    ),
    "missing field": (lambda shelves: shelves[0].pop("label"), ["label", "required"]),
    "misspelt field": (
        lambda shelves: shelves[0].update(max_candidate=shelves[0].pop("max_candidates")),
        ["max_candidate"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_SHELVES))
def test_bad_shelves_file_is_rejected_naming_file_and_field(tmp_path: Path, case: str):
    """An invalid shelves file raises ShelfConfigError whose message names the file and
    the offending field, before anything is trained."""
    mutate, words = BAD_SHELVES[case]
    path = write_shelves(tmp_path / "shelves.yaml", mutate)
    with pytest.raises(ShelfConfigError) as error:
        load_shelves(path)
    message = str(error.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message}"


def test_missing_or_unparsable_shelves_file_is_a_shelf_config_error(tmp_path: Path):
    """A shelves file that does not exist or is not YAML fails with its path."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ShelfConfigError, match="nope.yaml"):
        load_shelves(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("shelves: [\n  - name: x\n")
    with pytest.raises(ShelfConfigError, match="broken.yaml"):
        load_shelves(broken)


MORE_ALBUMS = {
    "name": "more_albums",
    "title": "More albums for you",
    "content_types": ["album"],
    "candidates": [
        {"kind": "popular", "segment": "market", "limit": 40},
        {"kind": "neighbours", "seeds": 8, "limit": 40},
    ],
    "exclude_familiar": True,
    "max_candidates": 60,
    "label": {"horizon_days": 7, "grade": "plays"},
    "feature_service": "shows_you_might_like_v1",
    "k": 10,
    "baseline": {
        "name": "popular_albums",
        "weights": {"cand_popular_market_listeners_7d": 1.0, "item_listeners_7d": 0.001},
    },
}


def test_user_added_shelf_trains_and_evaluates_with_no_code_change(
    trained_world: TrainedWorld, tmp_path: Path
):
    """A shelf declared only in a user's shelves file (albums from popular lists and
    co-listening, an existing FeatureService) gets a training set of albums, a saved
    model and a report, through Settings.shelves_file alone."""
    path = tmp_path / "shelves.yaml"
    path.write_text(yaml.safe_dump({"shelves": [MORE_ALBUMS]}, sort_keys=False))
    settings = project_settings(trained_world.settings.data_dir, shelves_file=path, **SHORT_WINDOWS)
    trained = train_all(settings)
    assert [t.shelf for t in trained] == ["more_albums"]
    ts = training_set(settings, "more_albums")
    items = pd.read_parquet(settings.world_dir / "items.parquet").set_index("item_id")
    for window in WINDOWS:
        types = set(ts.rows[window]["item_id"].map(items["content_type"]))
        assert types == {"album"}, f"{window}: {types}"
        assert set(ts.rows[window]["source"]) <= {"popular", "neighbours"}
    _, metadata = load_ranker(candidate_dir(settings, "more_albums"))
    assert metadata["feature_service"] == "shows_you_might_like_v1"
    report = evaluate_all(settings)
    assert list(report["shelves"]) == ["more_albums"]
    albums = report["shelves"]["more_albums"]
    for system in ("model", "baseline", "oracle"):
        assert math.isfinite(albums[system]["ndcg@10"]) and albums[system]["n_groups"] > 0


def test_snapshot_requests_sample_large_snapshots_reproducibly():
    """Above max_per_snapshot a seeded sample is drawn per snapshot; listeners who had not
    signed up yet are never requests, and smaller snapshots keep every listener."""
    start = pd.Timestamp("2026-01-01", tz="UTC")
    listeners = pd.DataFrame(
        {
            "listener_id": [f"L{i:03d}" for i in range(100)],
            "signup_at": [start - pd.Timedelta(days=1)] * 90 + [start + pd.Timedelta(days=5)] * 10,
        }
    )
    snapshots = [start + pd.Timedelta(days=1), start + pd.Timedelta(days=10)]
    sampled = snapshot_requests(listeners, snapshots, max_per_snapshot=30, seed=3)
    assert sampled.groupby("event_timestamp").size().tolist() == [30, 30]
    first = sampled[sampled.event_timestamp == snapshots[0]]
    assert set(first.listener_id) <= {f"L{i:03d}" for i in range(90)}
    assert sampled.group.is_unique
    again = snapshot_requests(listeners, snapshots, max_per_snapshot=30, seed=3)
    pd.testing.assert_frame_equal(sampled, again)
    everyone = snapshot_requests(listeners, snapshots, max_per_snapshot=500)
    assert everyone.groupby("event_timestamp").size().tolist() == [90, 100]
