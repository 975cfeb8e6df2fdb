"""Data tests of the synthetic world: each test names the property of the world it guards."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.core.constants import CONTENT_TYPES
from training.core.layout import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    LISTENER_COLUMNS,
    WorldPaths,
    coerce_table,
)
from training.world import behaviour as world
from training.world import generator
from training.world.behaviour import WorldConfig, config_from_meta
from training.world.generator import generate_world
from training.world.oracle import familiar_affinity, oracle_scores

# several chunks, so the chunked simulation and the row-group writers are exercised
SMALL = WorldConfig(listeners=300, days=21, seed=11, chunk_size=128)
SNAPSHOT_DAY = 14  # oracle tests: history before it, the 7 days from it are the future
HORIZON = pd.Timedelta(days=7)


def _read(root: Path) -> dict[str, pd.DataFrame]:
    paths = WorldPaths(root)
    tables = {name: pd.read_parquet(paths.table(name)) for name in ("listeners", "items", "events")}
    for name in world.TRUTH_FILES:
        tables[f"truth/{name}"] = pd.read_parquet(paths.truth / f"{name}.parquet")
    return tables


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small") / "world"
    generate_world(SMALL, root)
    return root


@pytest.fixture(scope="module")
def tables(world_dir: Path) -> dict[str, pd.DataFrame]:
    return _read(world_dir)


@pytest.fixture(scope="module")
def meta(world_dir: Path) -> dict:
    return json.loads(WorldPaths(world_dir).meta.read_text())


@pytest.fixture(scope="module")
def start(meta: dict) -> pd.Timestamp:
    return pd.Timestamp(meta["start"])


@pytest.fixture(scope="module")
def events(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Events with the listener's signup and market, sorted per listener by time."""
    listeners = tables["listeners"][["listener_id", "signup_at", "market"]]
    frame = tables["events"].merge(listeners, on="listener_id", how="left")
    return frame.sort_values(["listener_id", "timestamp"], kind="stable").reset_index(drop=True)


def _mean_auc(frame: pd.DataFrame, score: str, label: str = "label") -> float:
    """Mean over listeners (with both classes) of P(score of a positive > a negative), ties 1/2."""
    ranks = frame.groupby("listener_id")[score].rank()
    stats = (
        frame.assign(rank=ranks, pos=frame[label].astype(int), pos_rank=ranks * frame[label])
        .groupby("listener_id")
        .agg(n=("pos", "size"), npos=("pos", "sum"), pos_rank=("pos_rank", "sum"))
    )
    stats = stats[(stats.npos > 0) & (stats.npos < stats.n)]
    nneg = stats.n - stats.npos
    auc = (stats.pos_rank - stats.npos * (stats.npos + 1) / 2) / (stats.npos * nneg)
    assert len(auc) >= 20, "too few listeners with both classes to judge"
    return float(auc.mean())


def _split(events: pd.DataFrame, start: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    snapshot = start + pd.Timedelta(days=SNAPSHOT_DAY)
    past = events[events.timestamp < snapshot]
    future = events[(events.timestamp >= snapshot) & (events.timestamp < snapshot + HORIZON)]
    return past, future


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_tables(tmp_path: Path, tables: dict[str, pd.DataFrame]):
    generate_world(SMALL, tmp_path / "again")
    again = _read(tmp_path / "again")
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(again[name], frame, obj=name)


def test_different_seed_gives_different_world(tmp_path: Path, tables: dict[str, pd.DataFrame]):
    other = WorldConfig(listeners=SMALL.listeners, days=SMALL.days, seed=SMALL.seed + 1)
    generate_world(other, tmp_path / "other")
    again = _read(tmp_path / "other")
    assert not again["events"].equals(tables["events"])
    assert not again["listeners"]["market"].equals(tables["listeners"]["market"])


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize(
    ("name", "columns"),
    [("listeners", LISTENER_COLUMNS), ("items", ITEM_COLUMNS), ("events", EVENT_COLUMNS)],
)
def test_tables_have_exactly_the_contract_columns_and_dtypes(tables, name, columns):
    frame = tables[name]
    assert list(frame.columns) == list(columns)
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        c: str(t) for c, t in coerce_table(frame, name).dtypes.items()
    }
    assert len(frame) > 0
    assert not frame.isna().any().any(), f"{name} has missing values"


def test_world_json_describes_the_world(meta, tables):
    assert meta["source"] == "synthetic"
    assert (meta["seed"], meta["listeners"], meta["days"]) == (SMALL.seed, 300, 21)
    start, end = pd.Timestamp(meta["start"]), pd.Timestamp(meta["end"])
    assert str(start.tz) == "UTC" and end - start == pd.Timedelta(days=SMALL.days)
    assert meta["counts"]["events"] == len(tables["events"])
    assert meta["counts"]["items"] == len(tables["items"])
    assert meta["counts"]["listeners"] == len(tables["listeners"])
    assert config_from_meta(meta) == SMALL, "the stored config must rebuild the generator's config"


def test_truth_holds_parquet_files_only(world_dir: Path):
    files = sorted(p.name for p in WorldPaths(world_dir).truth.iterdir())
    assert files == sorted(f"{name}.parquet" for name in world.TRUTH_FILES)


def test_ids_are_formatted_and_unique(tables):
    listeners, items = tables["listeners"], tables["items"]
    assert listeners.listener_id.is_unique and items.item_id.is_unique
    assert listeners.listener_id.str.fullmatch(r"L\d{7}").all()
    prefix = items.item_id.str.extract(r"^([a-z]+)_\d{6}$", expand=False)
    assert (prefix == items.content_type).all(), "item ids carry their type as prefix"


def test_attributes_cover_their_vocabularies(tables):
    listeners, items = tables["listeners"], tables["items"]
    assert set(listeners.market) == set(world.MARKETS)
    assert set(listeners.age_bucket) == set(world.AGE_BUCKETS)
    assert set(listeners.platform) == set(world.PLATFORMS)
    shares = listeners.market.value_counts(normalize=True)
    assert shares.max() > 2 * shares.min(), "market sizes are unequal"
    assert set(items.content_type) == set(CONTENT_TYPES)
    assert set(items.market) <= set(world.MARKETS)
    assert 8 <= items.genre.nunique() <= 10
    assert 0 < items.is_editorial.mean() < 0.3


def test_item_durations_fit_their_type(tables):
    minutes = tables["items"].groupby("content_type").duration_ms.median() / 60_000
    assert 20 <= minutes["show"] <= 60
    assert 30 <= minutes["album"] <= 50
    assert 45 <= minutes["playlist"] <= 75
    assert 20 <= minutes["artist"] <= 40


# --------------------------------------------------------------------------- the event log


def test_events_lie_in_the_window_and_hour_is_the_timestamp_hour(events, meta):
    start, end = pd.Timestamp(meta["start"]), pd.Timestamp(meta["end"])
    assert events.timestamp.min() >= start and events.timestamp.max() < end
    assert (events.hour.astype(int) == events.timestamp.dt.hour).all()


def test_events_reference_known_listeners_and_items_with_their_type(tables):
    events, items = tables["events"], tables["items"].set_index("item_id")
    assert events.listener_id.isin(tables["listeners"].listener_id).all()
    assert events.item_id.isin(items.index).all()
    assert (events.content_type.to_numpy() == items.content_type[events.item_id].to_numpy()).all()


def test_no_play_precedes_signup_or_release(events, tables):
    released = tables["items"].set_index("item_id").released_at
    assert (events.timestamp >= events.signup_at).all(), "a play before the listener signed up"
    assert (events.timestamp.to_numpy() >= released[events.item_id].to_numpy()).all(), (
        "a play before the item was released"
    )


def test_ms_played_is_bounded_by_duration_and_skips_are_short(tables):
    events = tables["events"].merge(tables["items"][["item_id", "duration_ms"]], on="item_id")
    assert (events.ms_played > 0).all()
    assert (events.ms_played <= 1.05 * events.duration_ms + 1).all()
    short = events.ms_played < 30_000
    assert 0.01 < short.mean() < 0.25, "some plays are skips, most are not"
    share = events.ms_played / events.duration_ms
    assert 0.3 < share.median() < 0.95, "minutes listened are graded, not all-or-nothing"


def test_activity_is_modest_and_heavy_tailed(tables):
    events, listeners = tables["events"], tables["listeners"]
    per_listener_day = len(events) / (len(listeners) * SMALL.days)
    assert 0.5 < per_listener_day < 3.0
    plays = events.listener_id.value_counts()
    assert plays.quantile(0.9) > 3 * plays.quantile(0.25), "a few listeners play much more"


# --------------------------------------------------------------------------- behaviour


def test_about_fifteen_percent_of_listeners_sign_up_during_the_window(tables, start):
    new = tables["listeners"].signup_at >= start
    assert 0.08 <= new.mean() <= 0.25
    assert (tables["listeners"].signup_at[~new] < start).all()


def test_new_content_arrives_during_the_window(tables, events, start):
    items = tables["items"]
    fresh = items.released_at >= start
    assert 0.01 < fresh.mean() < 0.15, "a few percent of the catalog is released in the window"
    assert events.item_id.isin(items.item_id[fresh]).any(), "new releases get played"
    assert items.is_editorial[fresh].mean() > items.is_editorial[~fresh].mean()


def test_established_listeners_mostly_replay_familiar_items(events, start):
    """Shortcuts: late in the window most plays of established listeners are repeats."""
    replay = events.duplicated(["listener_id", "item_id"])
    late = events.timestamp >= start + pd.Timedelta(days=SMALL.days // 2)
    established = events.signup_at < start
    share = replay[late & established].mean()
    assert 0.4 < share < 0.85


def test_listeners_mostly_play_items_of_their_own_market(events, tables):
    item_market = tables["items"].set_index("item_id").market
    own = events.market.to_numpy() == item_market[events.item_id].to_numpy()
    assert own.mean() > 0.5


def test_new_listeners_start_with_playlists(events, start):
    """Try something else: early plays of new listeners lean on playlists."""
    tenure = (events.timestamp - events.signup_at).dt.days
    playlist = events.content_type == "playlist"
    new_start = playlist[(events.signup_at >= start) & (tenure < 3)]
    established = playlist[tenure > 365]
    assert len(new_start) > 50
    assert new_start.mean() > established.mean() + 0.15


def test_podcasts_lean_to_the_morning(events):
    show = events.content_type == "show"
    assert show[events.hour.between(6, 9)].mean() > show[events.hour.between(19, 22)].mean()


# --------------------------------------------------------------------------- the oracle


def test_oracle_ranks_future_plays_above_random_items_of_the_same_type(
    world_dir, tables, events, start
):
    _, future = _split(events, start)
    snapshot = start + pd.Timedelta(days=SNAPSHOT_DAY)
    positives = future[["listener_id", "item_id", "content_type"]].drop_duplicates()
    items = tables["items"]
    rng = np.random.default_rng(0)
    negatives = positives.copy()
    for content_type, rows in positives.groupby("content_type").groups.items():
        pool = items.item_id[items.content_type == content_type].to_numpy()
        negatives.loc[rows, "item_id"] = rng.choice(pool, len(rows))
    played = set(zip(future.listener_id, future.item_id, strict=True))
    negatives = negatives[
        [pair not in played for pair in zip(negatives.listener_id, negatives.item_id, strict=True)]
    ]
    pairs = pd.concat([positives.assign(label=True), negatives.assign(label=False)])
    pairs["timestamp"] = snapshot
    pairs["oracle"] = oracle_scores(world_dir, pairs[["listener_id", "item_id", "timestamp"]])
    assert _mean_auc(pairs, "oracle") > 0.7


def test_oracle_knows_more_than_recency_about_familiar_items(world_dir, tables, events, start):
    """Which familiar item is replayed is only partly a recency effect."""
    past, future = _split(events, start)
    snapshot = start + pd.Timedelta(days=SNAPSHOT_DAY)
    familiar = past.groupby(["listener_id", "item_id"], as_index=False).timestamp.max()
    played = set(zip(future.listener_id, future.item_id, strict=True))
    familiar["label"] = [
        pair in played for pair in zip(familiar.listener_id, familiar.item_id, strict=True)
    ]
    familiar["recency"] = familiar.timestamp.astype("int64")
    pairs = familiar[["listener_id", "item_id"]].assign(timestamp=snapshot)
    familiar["oracle"] = oracle_scores(world_dir, pairs)
    oracle_auc, recency_auc = _mean_auc(familiar, "oracle"), _mean_auc(familiar, "recency")
    assert oracle_auc > 0.7
    assert oracle_auc > recency_auc + 0.05


def test_oracle_scores_new_shows_by_taste_beyond_market_popularity(
    world_dir, tables, events, start
):
    """Shows you might like: the oracle ranks shows a listener starts above other new shows."""
    past, future = _split(events, start)
    snapshot = start + pd.Timedelta(days=SNAPSHOT_DAY)
    shows = tables["items"].item_id[tables["items"].content_type == "show"].to_numpy()
    listeners = future.listener_id.unique()
    pairs = pd.DataFrame(
        {"listener_id": np.repeat(listeners, len(shows)), "item_id": np.tile(shows, len(listeners))}
    )
    heard = pd.MultiIndex.from_frame(past[["listener_id", "item_id"]])
    pairs = pairs[~pd.MultiIndex.from_frame(pairs).isin(heard)]
    started = pd.MultiIndex.from_frame(future[["listener_id", "item_id"]])
    pairs["label"] = pd.MultiIndex.from_frame(pairs[["listener_id", "item_id"]]).isin(started)
    pairs["oracle"] = oracle_scores(
        world_dir, pairs[["listener_id", "item_id"]].assign(timestamp=snapshot)
    )
    assert _mean_auc(pairs, "oracle") > 0.75


def test_oracle_is_vectorized_finite_and_zero_for_unknown_ids(world_dir, tables, start):
    known = tables["events"].iloc[:5]
    pairs = pd.DataFrame(
        {
            "listener_id": [*known.listener_id, "L9999999", known.listener_id.iloc[0]],
            "item_id": [*known.item_id, known.item_id.iloc[0], "show_999999"],
            "timestamp": start + pd.Timedelta(days=3),
        }
    )
    scores = oracle_scores(world_dir, pairs)
    assert scores.shape == (len(pairs),)
    assert np.isfinite(scores).all() and (scores >= 0).all()
    assert (scores[-2:] == 0).all()
    assert (scores[:5] > 0).any()
    minutes = oracle_scores(world_dir, pairs, measure="minutes")
    assert np.isfinite(minutes).all() and (minutes[-2:] == 0).all()
    assert len(oracle_scores(world_dir, pairs.iloc[:0])) == 0


def _familiar_pairs(events: pd.DataFrame, start: pd.Timestamp) -> pd.DataFrame:
    """Every (listener, item) played before the snapshot, at the snapshot."""
    past, _ = _split(events, start)
    pairs = past[["listener_id", "item_id"]].drop_duplicates().reset_index(drop=True)
    return pairs.assign(timestamp=start + pd.Timedelta(days=SNAPSHOT_DAY))


def test_oracle_play_sources_add_up_to_the_full_score(world_dir, events, start):
    """Diagnostics: the score is the sum of what each play source contributes."""
    pairs = _familiar_pairs(events, start)
    for measure in ("plays", "minutes"):
        full = oracle_scores(world_dir, pairs, measure=measure)
        parts = [
            oracle_scores(world_dir, pairs, measure=measure, sources=[source])
            for source in world.PLAY_SOURCES
        ]
        np.testing.assert_allclose(np.sum(parts, axis=0), full, rtol=1e-9, atol=1e-12)
        assert all((part > 0).any() for part in parts[:2])  # repeats and taste both count
    with pytest.raises(ValueError, match=r"unknown play sources \['radio'\]"):
        oracle_scores(world_dir, pairs, sources=["repeat", "radio"])


def test_oracle_with_estimated_affinity(world_dir, tables, events, start):
    """The true affinities as estimates change nothing; a raised one raises that pair's
    score and changes no other listener's."""
    listeners = events["listener_id"].drop_duplicates().to_numpy()[:20]
    items = tables["items"]["item_id"].to_numpy()
    pairs = pd.DataFrame(
        {"listener_id": np.repeat(listeners, len(items)), "item_id": np.tile(items, len(listeners))}
    ).assign(timestamp=start + pd.Timedelta(days=SNAPSHOT_DAY))
    truth = familiar_affinity(world_dir, pairs)
    member = ~np.isnan(truth)
    assert 0 < member.sum() < len(pairs)
    estimates = pairs[member].assign(affinity=truth[member])
    full = oracle_scores(world_dir, pairs)
    np.testing.assert_allclose(oracle_scores(world_dir, pairs, affinity=estimates), full)

    target = int(np.flatnonzero(member)[0])
    raised = estimates.copy()
    raised.loc[raised.index == target, "affinity"] += 3.0
    changed = oracle_scores(world_dir, pairs, affinity=raised)
    same_listener = (pairs["listener_id"] == pairs.loc[target, "listener_id"]).to_numpy()
    assert changed[target] > full[target]
    np.testing.assert_allclose(changed[~same_listener], full[~same_listener])
    with pytest.raises(ValueError, match="finite"):
        oracle_scores(world_dir, pairs, affinity=estimates.assign(affinity=np.nan))


# --------------------------------------------------------------------------- crash safety


def _fail(*args, **kwargs):
    raise RuntimeError("disk full")


def test_failed_generation_leaves_no_world_behind(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(generator, "_events_frame", _fail)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_world(WorldConfig(listeners=40, days=3, seed=1), tmp_path / "world")
    assert list(tmp_path.iterdir()) == [], "neither a world nor a staging directory is left"


def test_failed_generation_keeps_the_old_world_intact(tmp_path: Path, monkeypatch):
    root = tmp_path / "world"
    generate_world(WorldConfig(listeners=40, days=3, seed=1), root)
    before = _read(root)
    meta_before = WorldPaths(root).meta.read_text()
    monkeypatch.setattr(generator, "_events_frame", _fail)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_world(WorldConfig(listeners=60, days=3, seed=2), root)
    assert WorldPaths(root).meta.read_text() == meta_before
    for name, frame in _read(root).items():
        pd.testing.assert_frame_equal(frame, before[name], obj=name)
    assert [p.name for p in tmp_path.iterdir()] == ["world"]


def test_generation_replaces_an_existing_world(tmp_path: Path):
    root = tmp_path / "world"
    generate_world(WorldConfig(listeners=40, days=3, seed=1), root)
    meta = generate_world(WorldConfig(listeners=60, days=3, seed=2), root)
    assert json.loads(WorldPaths(root).meta.read_text()) == json.loads(json.dumps(meta))
    assert len(pd.read_parquet(WorldPaths(root).listeners)) == 60
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT00:00:00\+00:00", meta["start"])
