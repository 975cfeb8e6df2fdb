"""Feast on real stores: point-in-time correctness offline, and online values equal to offline."""

import ast
import importlib.util
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO_ROOT, SMALL_WORLD, project_settings
from tests.feature_definitions import (
    assert_pair_features_match,
    daily_plays,
    expected_pair_features,
    familiar_list,
)
from training.core.settings import Settings
from training.features.store import (
    ForeignRegistryError,
    OfflineReader,
    apply_definitions,
    materialize,
    open_store,
    world_window,
)
from training.features.tables import build_features
from training.world.generator import generate_world

PROFILE_FIELDS = ["plays_7d_show", "plays_28d_album", "days_since_last_play", "minutes_28d"]
PAIR_FIELDS = ["pair_plays_28d", "pair_first_play_day_28d", "pair_last_play_day"]


def offline_table(settings: Settings, name: str) -> pd.DataFrame:
    return pd.read_parquet(settings.features_dir / f"{name}.parquet")


def expected_as_of(table: pd.DataFrame, entities: pd.DataFrame, keys: list[str], ttl: pd.Timedelta):
    """The latest row per entity stamped at or before each entity timestamp, within ttl."""
    left = entities.reset_index().sort_values("event_timestamp")
    left["event_timestamp"] = left["event_timestamp"].astype("datetime64[ns, UTC]")
    right = table.sort_values("event_timestamp")
    right["event_timestamp"] = right["event_timestamp"].astype("datetime64[ns, UTC]")
    merged = pd.merge_asof(
        left, right, on="event_timestamp", by=keys, direction="backward", tolerance=ttl
    )
    return merged.set_index("index").sort_index()


def test_point_in_time_join_never_leaks_a_later_row(small_world_store: Settings):
    """A value stamped after an entity row's timestamp never reaches that row."""
    store = open_store(small_world_store)
    pairs = offline_table(small_world_store, "listener_item")
    rng = np.random.default_rng(0)
    sample = pairs.sample(400, random_state=1)
    # Entity times up to 3 days after a stamped row, some exactly on a snapshot, some one
    # second before the next one: the row stamped at the next snapshot must not be used.
    offsets = pd.to_timedelta(rng.choice([0, 3_600, 86_399, 86_400, 2 * 86_400 - 1], 400), "s")
    entities = pd.DataFrame(
        {
            "listener_id": sample.listener_id.to_numpy(),
            "item_id": sample.item_id.to_numpy(),
            "event_timestamp": sample.event_timestamp.reset_index(drop=True) + offsets,
        }
    )
    features = [f"listener_item:{name}" for name in PAIR_FIELDS] + [
        f"listener_profile:{name}" for name in PROFILE_FIELDS
    ]
    got = store.get_historical_features(entity_df=entities, features=features).to_df()
    got = got.merge(entities.reset_index(), on=["listener_id", "item_id", "event_timestamp"])
    got = got.set_index("index").sort_index()

    pair_view = store.get_feature_view("listener_item")
    want_pairs = expected_as_of(
        pairs, entities, ["listener_id", "item_id"], pd.Timedelta(pair_view.ttl)
    )
    profile = offline_table(small_world_store, "listener_profile")
    want_profile = expected_as_of(
        profile,
        entities,
        ["listener_id"],
        pd.Timedelta(store.get_feature_view("listener_profile").ttl),
    )
    for name in PAIR_FIELDS:
        np.testing.assert_allclose(got[name].astype(float), want_pairs[name].astype(float))
    for name in PROFILE_FIELDS:
        np.testing.assert_allclose(got[name].astype(float), want_profile[name].astype(float))
    # The leakage case itself: entity rows one second before the next snapshot, for pairs
    # whose next snapshot carries a different count, still see the earlier count.
    following = pairs.assign(event_timestamp=pairs.event_timestamp - pd.Timedelta(days=1))
    following = following.rename(columns={"pair_plays_28d": "next_plays_28d"})
    at_edge = entities.assign(
        stamped=sample.event_timestamp.to_numpy(), earlier=sample.pair_plays_28d.to_numpy()
    )[offsets.to_numpy() == pd.Timedelta(seconds=86_399)]
    at_edge = at_edge.reset_index().merge(
        following[["listener_id", "item_id", "event_timestamp", "next_plays_28d"]],
        left_on=["listener_id", "item_id", "stamped"],
        right_on=["listener_id", "item_id", "event_timestamp"],
        suffixes=("", "_next"),
    )
    changed = at_edge[at_edge.next_plays_28d != at_edge.earlier].set_index("index")
    assert len(changed) > 5, "the sample should hold pairs whose count changes the next day"
    assert (got.loc[changed.index, "pair_plays_28d"] == changed.earlier).all()


def test_pair_features_read_from_change_rows_equal_their_daily_definition(
    small_world_store: Settings,
):
    """listener_item keeps a row only where a pair's values change; read point in time
    (through the Shortcuts FeatureService, its on-demand view included), familiar pairs,
    never-played pairs and times off the snapshot grid get the values the daily tables
    had, worked out from the raw log."""
    store = open_store(small_world_store)
    events = pd.read_parquet(small_world_store.world_dir / "events.parquet")
    items = pd.read_parquet(small_world_store.world_dir / "items.parquet")
    pairs = offline_table(small_world_store, "listener_item").sample(1200, random_state=4)
    rng = np.random.default_rng(4)
    _, end = world_window(small_world_store)
    offsets = pd.to_timedelta(rng.choice([0, 3_600, 86_399, 3 * 86_400, 20 * 86_400], 1200), "s")
    entities = pd.DataFrame(
        {
            "listener_id": pairs.listener_id.to_numpy(),
            "item_id": pairs.item_id.to_numpy(),
            "event_timestamp": pairs.event_timestamp.reset_index(drop=True) + offsets,
        }
    )
    strangers = entities.iloc[:200].assign(item_id=rng.permutation(items.item_id)[:200])
    entities = pd.concat([entities, strangers], ignore_index=True)
    entities = entities[entities.event_timestamp <= end].drop_duplicates(ignore_index=True)
    service = store.get_feature_service("shortcuts_v1")
    got = OfflineReader(store).read(service, entities)
    want = expected_pair_features(events, items, entities)
    assert want.pair_plays_28d.eq(0).sum() > 20, "the sample should hold closed pairs"
    assert_pair_features_match(got, want)


def test_familiar_lists_read_from_change_rows_equal_the_daily_lists(small_world_store: Settings):
    """listener_familiar keeps a row at signup and where a listener's list changes; read
    point in time on any day (and between snapshots), a listener's familiar items and
    their 28-day plays are the daily list worked out from the raw log."""
    store = open_store(small_world_store)
    events = daily_plays(pd.read_parquet(small_world_store.world_dir / "events.parquet"))
    profile = offline_table(small_world_store, "listener_profile").sample(1500, random_state=5)
    rng = np.random.default_rng(5)
    offsets = pd.to_timedelta(rng.choice([0, 3_600, 86_399], len(profile)), "s")
    _, end = world_window(small_world_store)
    entities = pd.DataFrame(
        {
            "listener_id": profile.listener_id.to_numpy(),
            "event_timestamp": profile.event_timestamp.reset_index(drop=True) + offsets,
        }
    )
    entities = entities[entities.event_timestamp <= end].reset_index(drop=True)
    got = OfflineReader(store).read(
        ["listener_familiar:familiar_items", "listener_familiar:familiar_plays_28d"], entities
    )
    by_listener = dict(iter(events.groupby("listener_id")))
    for row, (listener, when) in enumerate(entities.itertuples(index=False)):
        items, plays = familiar_list(by_listener.get(listener, events.iloc[:0]), when)
        assert list(got.familiar_items.iloc[row]) == items, (listener, when)
        assert list(got.familiar_plays_28d.iloc[row]) == plays, (listener, when)


def assert_same_values(got: pd.Series, want: pd.Series) -> None:
    """Equal values in order (NaN equals NaN), whatever the index or integer width."""
    pd.testing.assert_series_equal(
        got.reset_index(drop=True),
        want.reset_index(drop=True),
        check_dtype=False,
        check_names=False,
        check_exact=True,
    )


def assert_online_equals_offline(settings: Settings) -> None:
    """Online values read back equal the offline rows stamped at the world's end."""
    store = open_store(settings)
    _, end = world_window(settings)
    profile = offline_table(settings, "listener_profile")
    latest = profile[profile.event_timestamp == end].sample(50, random_state=0)
    online = store.get_online_features(
        features=[
            f"listener_profile:{name}" for name in [*PROFILE_FIELDS, "market", "top_genres_28d"]
        ]
        + ["listener_familiar:familiar_items", "listener_familiar:familiar_plays_28d"],
        entity_rows=[{"listener_id": lid} for lid in latest.listener_id],
    ).to_df()
    for name in [*PROFILE_FIELDS, "market"]:
        assert_same_values(online[name], latest[name])
    assert [list(v) for v in online.top_genres_28d] == [list(v) for v in latest.top_genres_28d]
    familiar = offline_table(settings, "listener_familiar").sort_values("event_timestamp")
    want = familiar.groupby("listener_id").tail(1).set_index("listener_id").loc[latest.listener_id]
    assert [list(v) for v in online.familiar_items] == [list(v) for v in want.familiar_items]
    assert [list(v) for v in online.familiar_plays_28d] == [
        list(v) for v in want.familiar_plays_28d
    ]

    pairs = offline_table(settings, "listener_item")
    last_rows = pairs.sort_values("event_timestamp").groupby(["listener_id", "item_id"]).tail(1)
    sample = last_rows.sample(100, random_state=0)
    online_pairs = store.get_online_features(
        features=[f"listener_item:{name}" for name in PAIR_FIELDS],
        entity_rows=sample[["listener_id", "item_id"]].to_dict("records"),
    ).to_df()
    for name in PAIR_FIELDS:
        np.testing.assert_array_equal(online_pairs[name].to_numpy(), sample[name].to_numpy())

    items = offline_table(settings, "item_stats")
    items = items[items.event_timestamp == end].sample(50, random_state=0)
    online_items = store.get_online_features(
        features=["item_stats:item_listeners_7d", "item_stats:genre", "item_stats:item_trend_7d"],
        entity_rows=[{"item_id": iid} for iid in items.item_id],
    ).to_df()
    for name in ["item_listeners_7d", "genre", "item_trend_7d"]:
        assert_same_values(online_items[name], items[name])


def test_sqlite_online_store_serves_the_offline_values(small_world_store: Settings):
    assert_online_equals_offline(small_world_store)


@pytest.mark.redis
def test_redis_online_store_serves_the_offline_values(small_world_store, redis_server, tmp_path):
    """Materialize into a real redis-server and read back values equal to the offline tables."""
    settings = project_settings(
        tmp_path / "data", online_store="redis", redis_connection=redis_server.connection_string
    )
    shutil.copytree(small_world_store.world_dir, settings.world_dir)
    shutil.copytree(small_world_store.features_dir, settings.features_dir)
    apply_definitions(settings)
    materialize(settings)
    assert_online_equals_offline(settings)


def test_rebuilt_tables_are_reloaded_whole(small_world_store: Settings, tmp_path):
    """After a new world replaces the tables over the same window, an incremental
    materialize has nothing new to load (the online store keeps the old world), while
    the full reload the pipeline does serves the new values."""
    settings = project_settings(tmp_path / "data")
    shutil.copytree(small_world_store.world_dir, settings.world_dir)
    shutil.copytree(small_world_store.features_dir, settings.features_dir)
    apply_definitions(settings)
    materialize(settings)
    generate_world(replace(SMALL_WORLD, seed=SMALL_WORLD.seed + 1), settings.world_dir)
    build_features(settings.world_dir, settings.features_dir)
    apply_definitions(settings)
    materialize(settings)
    with pytest.raises(AssertionError):
        assert_online_equals_offline(settings)
    materialize(settings, incremental=False)
    assert_online_equals_offline(settings)


def test_a_registry_copied_from_another_data_dir_is_not_applied(
    small_world_store: Settings, tmp_path
):
    """Feast's apply drops the online tables of infrastructure it no longer plans: applying
    a registry copied with its data directory would empty the original's store. homerec
    refuses, naming the other store, and the original keeps serving."""
    settings = project_settings(tmp_path / "data")
    shutil.copytree(small_world_store.data_dir, settings.data_dir)
    with pytest.raises(ForeignRegistryError, match="belongs to another data directory"):
        apply_definitions(settings)
    assert_online_equals_offline(small_world_store)


ARROW_TYPES = {
    "String": pa.string(),
    "Int64": pa.int64(),
    "Float64": pa.float64(),
    "Array(String)": pa.list_(pa.string()),
    "Array(Int64)": pa.list_(pa.int64()),
    "Array(Float64)": pa.list_(pa.float64()),
}
"""The parquet column type ``features build`` must write for each declared Feast type."""


def test_declared_schemas_match_the_tables_features_build_writes(small_world_store: Settings):
    """Every feature view's declared fields are the columns of its table, with the parquet
    type of their Feast type, plus exactly its join keys and event_timestamp: a feature
    declared but not written, written but not declared, or of another type fails. Each
    view and each of its features is described (``description=``), as Feast's template does."""
    store = open_store(small_world_store)
    views = store.list_feature_views()
    assert len(views) == 7
    for view in views:
        schema = pq.read_schema(small_world_store.features_dir / f"{view.name}.parquet")
        declared = {field.name: ARROW_TYPES[str(field.dtype)] for field in view.schema}
        keys = {column.name for column in view.entity_columns}
        written = {name: schema.field(name).type for name in schema.names}
        assert set(written) == set(declared) | keys | {"event_timestamp"}, view.name
        for name, arrow_type in declared.items():
            assert written[name] == arrow_type, (view.name, name, written[name], arrow_type)
        assert pa.types.is_timestamp(written["event_timestamp"]), view.name
        undocumented = [field.name for field in view.features if not field.description]
        assert view.description and not undocumented, (view.name, undocumented)


def test_the_feature_repo_imports_only_feast_and_the_constants_module():
    """``feature_repo/`` is declarations only: Feast imports every file in it, so a homerec
    import there would load the feature pipeline into every ``feast apply``."""
    standard = {"datetime", "os", "pathlib"}
    data = {"numpy", "pandas", "pyarrow", "pyarrow.compute"}  # inside the on-demand view
    allowed = standard | data | {"training.core.constants"}
    for path in (REPO_ROOT / "feature_repo").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        others = {name for name in imported if name.split(".")[0] != "feast"} - allowed
        assert not others, f"{path.name} imports {sorted(others)}"


def _match_of_one_row(row: pd.Series) -> tuple[float, int, float, float]:
    """listener_item_match's definition, one row at a time, in plain Python."""
    genres = [] if row["top_genres_28d"] is None else list(row["top_genres_28d"])
    shares = [] if row["top_genre_shares_28d"] is None else list(row["top_genre_shares_28d"])
    pairs = zip(genres, shares, strict=True)
    affinity = sum(share for genre, share in pairs if genre == row["genre"])
    daypart = sum(
        np.nan_to_num(row[f"share_{part}_28d"]) * np.nan_to_num(row[f"item_share_{part}_28d"])
        for part in ("night", "morning", "afternoon", "evening")
    )
    listener, item = row["taste_vector"], row["item_taste_vector"]
    if listener is None or item is None or len(listener) == 0 or len(listener) != len(item):
        taste = np.nan
    else:
        taste = float((np.asarray(listener, float) * np.asarray(item, float)).sum())
    return affinity, int(row["market"] == row["item_market"]), daypart, taste


def test_listener_item_match_computes_its_definition_row_by_row():
    """The vectorized on-demand transformation equals a row-by-row reading of its
    definition, on rows with missing lists, empty lists, vectors of unequal length, an
    unknown genre and missing daypart shares."""
    spec = importlib.util.spec_from_file_location(
        "homerec_features", REPO_ROOT / "feature_repo" / "homerec_features.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    transform = module.listener_item_match.feature_transformation.udf
    rng = np.random.default_rng(3)
    genres = np.array(["pop", "rock", "news", "latin", "comedy"], dtype=object)
    n = 400

    def vectors(dims: int) -> list:
        return [
            None if r % 37 == 0 else np.array([]) if r % 41 == 0 else rng.random(dims)
            for r in range(n)
        ]

    inputs = pd.DataFrame(
        {
            "top_genres_28d": [
                None if r % 29 == 0 else rng.choice(genres, r % 4, replace=False) for r in range(n)
            ],
            "genre": [None if r % 31 == 0 else rng.choice(genres) for r in range(n)],
            "market": rng.choice(["US", "SE"], n),
            "item_market": rng.choice(["US", "SE"], n),
            "taste_vector": vectors(16),
            "item_taste_vector": [
                v if r % 43 else rng.random(3) for r, v in enumerate(vectors(16))
            ],
            **{
                f"{side}share_{part}_28d": np.where(rng.random(n) < 0.1, np.nan, rng.random(n))
                for side in ("", "item_")
                for part in ("night", "morning", "afternoon", "evening")
            },
        }
    )
    inputs["top_genre_shares_28d"] = [
        None if g is None else rng.random(len(g)) for g in inputs["top_genres_28d"]
    ]
    got = transform(inputs)
    want = pd.DataFrame(
        [_match_of_one_row(row) for _, row in inputs.iterrows()],
        columns=["genre_affinity_28d", "same_market", "daypart_match_28d", "taste_match"],
    )
    assert list(got.columns) == list(want.columns)
    assert got["same_market"].tolist() == want["same_market"].tolist()
    for column in ("genre_affinity_28d", "daypart_match_28d", "taste_match"):
        np.testing.assert_allclose(got[column], want[column], rtol=1e-12, equal_nan=True)
    assert want["taste_match"].isna().any() and want["taste_match"].notna().any()
