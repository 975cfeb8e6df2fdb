"""Feature values on a tiny hand-made log, checked against values worked out by hand."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from tests.conftest import project_settings
from tests.feature_definitions import (
    assert_pair_features_match,
    daily_plays,
    expected_pair_features,
    familiar_list,
)
from training.core.layout import WorldPaths, coerce_table, write_world_meta
from training.core.settings import Settings
from training.features.store import OfflineReader, apply_definitions
from training.features.tables import build_features

START = pd.Timestamp("2026-01-01", tz="UTC")
ZERO = pd.Timedelta(0)
SECOND = pd.Timedelta(seconds=1)


def at(day: int, hour: int) -> pd.Timestamp:
    return START + pd.Timedelta(days=day, hours=hour)


def snapshot(s: int) -> pd.Timestamp:
    """Snapshot s is stamped at midnight after day s-1: it sees days 0..s-1."""
    return START + pd.Timedelta(days=s)


def write_world(root: Path, listeners, items, events, days: int) -> None:
    paths = WorldPaths(root)
    root.mkdir(parents=True)
    coerce_table(pd.DataFrame(listeners), "listeners").to_parquet(paths.listeners)
    coerce_table(pd.DataFrame(items), "items").to_parquet(paths.items)
    frame = pd.DataFrame(events, columns=["listener_id", "item_id", "timestamp", "ms_played"])
    kinds = {item["item_id"]: item["content_type"] for item in items}
    frame["content_type"] = frame["item_id"].map(kinds)
    frame["hour"] = frame["timestamp"].map(lambda ts: ts.hour)
    coerce_table(frame, "events").to_parquet(paths.events)
    write_world_meta(
        paths, {"source": "test", "start": START.isoformat(), "end": snapshot(days).isoformat()}
    )


WORLD_DAYS = 400
"""Longer than a closing row's 365-day TTL, so the hand world shows its expiry."""


@pytest.fixture(scope="module")
def hand_world(tmp_path_factory) -> Settings:
    """Three listeners, three items, ten plays over a 400-day world, features built.

    L1 (old account): show_a on day 0 08:00 (10 of 20 min) and day 1 08:00 (20 min);
        album_b on day 1 20:00 (1 min) and day 8 21:00 (2 min).
    L2 (signs up day 3 09:00): album_b day 3 10:00 (4 min) and again day 100 10:00;
        playlist_c day 6 18:00 (30 min).
    L3 (old account): show_a on days 10 and 38, playlist_c on day 15: at snapshot 39 one
        show_a play leaves the 28-day window as another enters, so no count changes but
        show_a becomes the most recent of two items with one play each.
    playlist_c is released on day 5 and editorial in SE.
    """
    root = tmp_path_factory.mktemp("hand") / "data"
    listeners = [
        {
            "listener_id": "L1",
            "market": "SE",
            "age_bucket": "25-34",
            "platform": "ios",
            "signup_at": START - pd.Timedelta(days=100),
        },
        {
            "listener_id": "L2",
            "market": "SE",
            "age_bucket": "18-24",
            "platform": "web",
            "signup_at": at(3, 9),
        },
        {
            "listener_id": "L3",
            "market": "SE",
            "age_bucket": "25-34",
            "platform": "android",
            "signup_at": START - pd.Timedelta(days=50),
        },
    ]
    items = [
        {
            "item_id": "show_a",
            "content_type": "show",
            "genre": "news",
            "market": "SE",
            "released_at": START - pd.Timedelta(days=50),
            "is_editorial": False,
            "duration_ms": 1_200_000,
        },
        {
            "item_id": "album_b",
            "content_type": "album",
            "genre": "rock",
            "market": "SE",
            "released_at": START - pd.Timedelta(days=10),
            "is_editorial": False,
            "duration_ms": 240_000,
        },
        {
            "item_id": "playlist_c",
            "content_type": "playlist",
            "genre": "pop",
            "market": "SE",
            "released_at": at(5, 12),
            "is_editorial": True,
            "duration_ms": 3_600_000,
        },
    ]
    events = [
        ("L1", "show_a", at(0, 8), 600_000),
        ("L1", "show_a", at(1, 8), 1_200_000),
        ("L1", "album_b", at(1, 20), 60_000),
        ("L1", "album_b", at(8, 21), 120_000),
        ("L2", "album_b", at(3, 10), 240_000),
        ("L2", "playlist_c", at(6, 18), 1_800_000),
        ("L3", "show_a", at(10, 7), 1_200_000),
        ("L3", "playlist_c", at(15, 7), 1_800_000),
        ("L3", "show_a", at(38, 7), 1_200_000),
        ("L2", "album_b", at(100, 10), 240_000),
    ]
    settings = project_settings(root)
    write_world(settings.world_dir, listeners, items, events, days=WORLD_DAYS)
    build_features(settings.world_dir, settings.features_dir)
    return settings


@pytest.fixture(scope="module")
def tables(hand_world: Settings) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_parquet(hand_world.features_dir / f"{name}.parquet")
        for name in (
            "listener_profile",
            "item_stats",
            "listener_item",
            "listener_familiar",
            "segment_popular",
            "market_editorial",
            "item_neighbours",
        )
    }


def row(frame: pd.DataFrame, when: pd.Timestamp, **keys) -> pd.Series:
    mask = frame["event_timestamp"] == when
    for column, value in keys.items():
        mask &= frame[column] == value
    assert mask.sum() == 1, f"expected one row for {keys} at {when}, found {mask.sum()}"
    return frame[mask].iloc[0]


def test_listener_profile_counts_only_the_past(tables):
    # Snapshot 2 sees days 0 and 1: show_a twice, album_b once.
    l1 = row(tables["listener_profile"], snapshot(2), listener_id="L1")
    assert (l1.plays_7d_show, l1.plays_7d_album, l1.plays_7d_playlist) == (2, 1, 0)
    assert l1.plays_28d_show == 2
    assert l1.days_since_last_play == 1  # last play on day 1, snapshot at the end of day 1
    assert l1.active_days_28d == 2
    assert l1.distinct_items_28d == 2
    assert l1.minutes_28d == pytest.approx((600_000 + 1_200_000 + 60_000) / 60_000)
    assert l1.share_morning_28d == pytest.approx(2 / 3)
    assert l1.share_evening_28d == pytest.approx(1 / 3)
    assert list(l1.top_genres_28d) == ["news", "rock"]
    np.testing.assert_allclose(l1.top_genre_shares_28d, [2 / 3, 1 / 3])
    assert l1.account_age_days == 102


def test_windows_forget_old_plays(tables):
    # Snapshot 10 (days 0..9): the 7-day window holds days 3..9, so only album_b on day 8.
    l1 = row(tables["listener_profile"], snapshot(10), listener_id="L1")
    assert (l1.plays_7d_show, l1.plays_7d_album) == (0, 1)
    assert (l1.plays_28d_show, l1.plays_28d_album) == (2, 2)
    assert l1.days_since_last_play == 2
    # Snapshot 30 (days 0..29): the 28-day window holds days 2..29, so day 8 only.
    late = row(tables["listener_profile"], snapshot(30), listener_id="L1")
    assert (late.plays_28d_show, late.plays_28d_album) == (0, 1)


def test_new_listener_appears_after_signup(tables):
    profile = tables["listener_profile"]
    first = profile.loc[profile.listener_id == "L2", "event_timestamp"].min()
    assert first == snapshot(4)  # signed up during day 3
    l2 = row(profile, snapshot(4), listener_id="L2")
    assert l2.account_age_days == 1
    assert l2.plays_7d_album == 1 and l2.platform == "web"


def test_item_stats(tables):
    show = row(tables["item_stats"], snapshot(2), item_id="show_a")
    assert (show.item_plays_7d, show.item_listeners_7d) == (2, 1)
    assert show.item_completion_28d == pytest.approx((0.5 + 1.0) / 2)
    assert show.item_age_days == 52
    album = row(tables["item_stats"], snapshot(9), item_id="album_b")
    assert (album.item_plays_28d, album.item_listeners_28d) == (3, 2)
    # playlist_c exists from the first snapshot after its release (day 5).
    stats = tables["item_stats"]
    assert stats.loc[stats.item_id == "playlist_c", "event_timestamp"].min() == snapshot(6)


@pytest.fixture(scope="module")
def hand_store(hand_world: Settings) -> FeatureStore:
    """The Feast declarations applied to the hand world (offline reads only)."""
    return apply_definitions(hand_world)


def pair_features(store: FeatureStore, when: pd.Timestamp, listener: str, item: str) -> pd.Series:
    """Shortcuts' model features of one listener x item pair read point in time at ``when``."""
    entity = pd.DataFrame({"listener_id": [listener], "item_id": [item], "event_timestamp": [when]})
    service = store.get_feature_service("shortcuts_v1")
    return store.get_historical_features(entity_df=entity, features=service).to_df().iloc[0]


def test_a_pair_has_rows_only_where_its_values_change(tables):
    """show_a (L1, days 0 and 1) changes when a play enters (snapshots 1, 2) or leaves the
    3-day (4, 5), 7-day (8, 9) and 28-day window (29, 30: the closing row), and only then."""
    pairs = tables["listener_item"]
    stamps = pairs.loc[(pairs.listener_id == "L1") & (pairs.item_id == "show_a"), "event_timestamp"]
    assert list(stamps) == [snapshot(s) for s in (1, 2, 4, 5, 8, 9, 29, 30)]
    closing = row(pairs, snapshot(30), listener_id="L1", item_id="show_a")
    assert (closing.pair_plays_28d, closing.pair_plays_7d) == (0, 0)
    assert pd.isna(closing.pair_first_play_day_28d)


def test_listener_item_familiarity_and_closing_row(hand_store):
    pair = pair_features(hand_store, snapshot(2), "L1", "show_a")
    assert (pair.pair_plays_7d, pair.pair_plays_28d) == (2, 2)
    assert pair.pair_days_since_last_play == 1
    assert pair.pair_share_28d == pytest.approx(2 / 3)
    assert pair.pair_minutes_28d == pytest.approx(30.0)
    # Snapshot 3 has no row of its own: the join carries snapshot 2's counts forward and
    # the on-demand view counts the days from the read time.
    carried = pair_features(hand_store, snapshot(3), "L1", "show_a")
    assert (carried.pair_plays_28d, carried.pair_days_since_last_play) == (2, 2)
    # show_a was last played on day 1: its closing row at snapshot 30 has zero 28-day plays,
    # and it reads the same 29 days since the last play from then on.
    for when in (snapshot(30), snapshot(200)):
        closing = pair_features(hand_store, when, "L1", "show_a")
        assert (closing.pair_plays_28d, closing.pair_plays_per_day_28d) == (0, 0.0)
        assert closing.pair_days_since_last_play == 29


def test_a_closing_row_expires_with_its_ttl(hand_store):
    """The closing row of show_a (snapshot 30) is carried for listener_item's 365-day TTL,
    then the pair reads as never played (null)."""
    ttl = pd.Timedelta(hand_store.get_feature_view("listener_item").ttl)
    last_day = pair_features(hand_store, snapshot(30) + ttl, "L1", "show_a")
    assert last_day.pair_days_since_last_play == 29
    expired = pair_features(hand_store, snapshot(30) + ttl + SECOND, "L1", "show_a")
    assert np.isnan(expired.pair_days_since_last_play) and pd.isna(expired.pair_plays_28d)


def test_pair_completion_and_the_dry_spell_since_the_last_play(hand_store):
    """album_b (4 min) was played 1 and 2 minutes by L1 on days 1 and 8; show_a (20 min)
    10 and 20 minutes on days 0 and 1, then L1 played album_b on day 8."""
    album = pair_features(hand_store, snapshot(9), "L1", "album_b")
    assert album.pair_completion_28d == pytest.approx((0.25 + 0.5) / 2)
    assert album.pair_completion_logit_28d == pytest.approx((np.log(1 / 3) + 0.0) / 2)
    assert album.pair_skip_share_28d == 0.0
    assert album.pair_plays_3d == 1  # days 6..8
    assert album.pair_plays_elsewhere_since_last == 0
    show = pair_features(hand_store, snapshot(9), "L1", "show_a")
    assert show.pair_completion_28d == pytest.approx(0.75)
    assert show.pair_plays_elsewhere_since_last == 1  # album_b on day 8 (day 1's shares its day)
    assert show.pair_dry_spell_logp_28d == pytest.approx(np.log(1 - 2 / 4))


def test_no_feature_looks_back_further_than_28_days(hand_store, tables):
    """ "First play" is the first in the last 28 days and a last play older than 28 days is
    null: a feature means the same however long the log behind it is (L1 played album_b
    on days 1 and 8)."""
    early = pair_features(hand_store, snapshot(9), "L1", "album_b")
    assert early.pair_days_since_first_play_28d == 8
    assert early.pair_plays_per_day_28d == pytest.approx(2 / 8)
    late = pair_features(hand_store, snapshot(30), "L1", "album_b")
    assert late.pair_days_since_first_play_28d == 22  # day 1 left the window: day 8 is first
    assert late.pair_plays_per_day_28d == pytest.approx(1 / 22)
    closing = pair_features(hand_store, snapshot(37), "L1", "album_b")
    assert closing.pair_plays_28d == 0 and np.isnan(closing.pair_days_since_first_play_28d)
    profile = tables["listener_profile"]
    assert row(profile, snapshot(36), listener_id="L1").days_since_last_play == 28
    assert np.isnan(row(profile, snapshot(37), listener_id="L1").days_since_last_play)


def test_change_rows_read_back_as_the_daily_definition_on_every_day(hand_store, hand_world):
    """Every listener x item pair (played or not) read point in time at every snapshot and
    one second before it, over 400 days: around each change, after a closing row, after a
    replay (L2's album_b on day 100) and past the TTL, the values equal the features'
    definition worked out from the raw log; so does each listener's familiar list."""
    paths = WorldPaths(hand_world.world_dir)
    events = pd.read_parquet(paths.events)
    items = pd.read_parquet(paths.items)
    times = [snapshot(s) + offset for s in range(1, WORLD_DAYS + 1) for offset in (ZERO, -SECOND)]
    entities = pd.DataFrame(
        [
            (listener, item, when)
            for listener in ("L1", "L2", "L3")
            for item in items["item_id"]
            for when in times
        ],
        columns=["listener_id", "item_id", "event_timestamp"],
    )
    reader = OfflineReader(hand_store)
    got = reader.read(hand_store.get_feature_service("shortcuts_v1"), entities)
    want = expected_pair_features(events, items, entities)
    assert want["pair_plays_28d"].notna().sum() > 100 and want["pair_plays_28d"].isna().any()
    assert_pair_features_match(got, want)
    # And each listener's familiar list, from their signup on.
    plays = daily_plays(events)
    for listener, signup in (("L1", snapshot(1)), ("L2", snapshot(4)), ("L3", snapshot(1))):
        when = pd.Series([t for t in times if t >= signup])
        lists = reader.read(
            ["listener_familiar:familiar_items", "listener_familiar:familiar_plays_28d"],
            pd.DataFrame({"listener_id": listener, "event_timestamp": when}),
        )
        mine = plays[plays["listener_id"] == listener]
        for at, items, counts in zip(
            when, lists["familiar_items"], lists["familiar_plays_28d"], strict=True
        ):
            assert (list(items), list(counts)) == familiar_list(mine, at), (listener, at)


def test_candidate_inputs(tables):
    familiar = row(tables["listener_familiar"], snapshot(9), listener_id="L1")
    # Two plays in 28 days each; the tie goes to the more recently played album_b (day 8).
    assert list(familiar.familiar_items) == ["album_b", "show_a"]
    popular = row(tables["segment_popular"], snapshot(7), segment_id="SE|all")
    assert list(popular.popular_album) == ["album_b"]  # L1 (day 1) and L2 (day 3): 2 listeners
    assert list(popular.popular_album_listeners_7d) == [2]
    assert list(popular.popular_playlist) == ["playlist_c"]
    editorial = tables["market_editorial"]
    assert list(row(editorial, snapshot(5), market_id="SE").editorial_playlist) == []
    assert list(row(editorial, snapshot(6), market_id="SE").editorial_playlist) == ["playlist_c"]


def test_co_listening_neighbours(tables):
    # Every pair of items shares at most one listener, below MIN_CO_LISTENERS: neighbour
    # lists stay empty, yet every released item still has a row.
    neighbours = tables["item_neighbours"]
    last = neighbours[neighbours.event_timestamp == neighbours.event_timestamp.max()]
    assert set(last.item_id) == {"show_a", "album_b", "playlist_c"}
    assert all(len(value) == 0 for value in last.neighbours_album)
