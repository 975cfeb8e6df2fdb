# homerec's Feast declarations: the single source of every feature, offline and online.
# The tables are written by `homerec features build` (see training/features.py for how
# each value is computed); they live in $HOMEREC_DATA_DIR/features (default ../data).
import os
from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float64, Int64, String

from training.features import DAYPARTS, LONG_WINDOW_DAYS, SHORT_WINDOW_DAYS
from training.schema import CONTENT_TYPES

DATA_DIR = Path(os.environ.get("HOMEREC_DATA_DIR", Path(__file__).resolve().parent.parent / "data"))


def snapshot_source(table: str) -> FileSource:
    """The daily snapshot table ``table`` written by the feature pipeline."""
    return FileSource(
        name=table,
        path=str(DATA_DIR.resolve() / "features" / f"{table}.parquet"),
        timestamp_field="event_timestamp",
    )


# A listener of the service (account).
listener = Entity(name="listener", join_keys=["listener_id"], value_type=ValueType.STRING)

# A catalog item that can be a card: a show, playlist, album or artist.
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)

# A popularity segment: "<market>|<age bucket>" or "<market>|all".
segment = Entity(name="segment", join_keys=["segment_id"], value_type=ValueType.STRING)

# A market (country) whose editors pick items for the Home page.
market = Entity(name="market", join_keys=["market_id"], value_type=ValueType.STRING)

# A listener's activity, recency, habits and tastes as of each daily snapshot.
listener_profile = FeatureView(
    name="listener_profile",
    entities=[listener],
    ttl=timedelta(days=2),
    schema=[
        Field(name="market", dtype=String),
        Field(name="age_bucket", dtype=String),
        Field(name="platform", dtype=String),
        Field(name="account_age_days", dtype=Float64),
        *[
            Field(name=f"plays_{window}d_{content_type}", dtype=Int64)
            for window in (SHORT_WINDOW_DAYS, LONG_WINDOW_DAYS)
            for content_type in CONTENT_TYPES
        ],
        Field(name="days_since_last_play", dtype=Float64),
        Field(name="minutes_28d", dtype=Float64),
        Field(name="active_days_28d", dtype=Int64),
        Field(name="distinct_items_28d", dtype=Int64),
        *[Field(name=f"share_{part}_28d", dtype=Float64) for part in DAYPARTS],
        Field(name="top_genres_28d", dtype=Array(String)),
        Field(name="top_genre_shares_28d", dtype=Array(Float64)),
        Field(name="taste_vector", dtype=Array(Float64)),
    ],
    source=snapshot_source("listener_profile"),
)

# An item's public attributes, reach, completion and trend as of each daily snapshot.
item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=timedelta(days=2),
    schema=[
        Field(name="content_type", dtype=String),
        Field(name="genre", dtype=String),
        Field(name="item_market", dtype=String),
        Field(name="is_editorial", dtype=Int64),
        Field(name="item_age_days", dtype=Float64),
        Field(name="item_plays_7d", dtype=Int64),
        Field(name="item_plays_28d", dtype=Int64),
        Field(name="item_listeners_7d", dtype=Int64),
        Field(name="item_listeners_28d", dtype=Int64),
        Field(name="item_minutes_28d", dtype=Float64),
        Field(name="item_completion_28d", dtype=Float64),
        Field(name="item_trend_7d", dtype=Float64),
        *[Field(name=f"item_share_{part}_28d", dtype=Float64) for part in DAYPARTS],
    ],
    source=snapshot_source("item_stats"),
)

# How familiar a listener is with an item: plays and recency (what Shortcuts ranks on).
# Like every feature it looks back 28 days at most ("first play": the first in 28 days), so
# a feature means the same in training and serving however long the log behind it is.
listener_item = FeatureView(
    name="listener_item",
    entities=[listener, item],
    ttl=timedelta(days=365),
    schema=[
        Field(name="pair_plays_7d", dtype=Int64),
        Field(name="pair_plays_28d", dtype=Int64),
        Field(name="pair_minutes_28d", dtype=Float64),
        Field(name="pair_days_since_last_play", dtype=Float64),
        Field(name="pair_days_since_first_play_28d", dtype=Float64),
        Field(name="pair_plays_per_day_28d", dtype=Float64),
        Field(name="pair_share_28d", dtype=Float64),
        Field(name="pair_plays_3d", dtype=Int64),
        # How much of the item the listener plays (0..1), its mean logit, and skips (< 15%).
        Field(name="pair_completion_28d", dtype=Float64),
        Field(name="pair_completion_logit_28d", dtype=Float64),
        Field(name="pair_skip_share_28d", dtype=Float64),
        # The listener's plays of other items on the days after this one's last play, and
        # the log-probability of that dry spell were the item still played at its share.
        Field(name="pair_plays_elsewhere_since_last", dtype=Int64),
        Field(name="pair_dry_spell_logp_28d", dtype=Float64),
    ],
    source=snapshot_source("listener_item"),
)

# Candidate input: a listener's familiar items, most played in 28 days first.
listener_familiar = FeatureView(
    name="listener_familiar",
    entities=[listener],
    ttl=timedelta(days=2),
    schema=[
        Field(name="familiar_items", dtype=Array(String)),
        Field(name="familiar_content_types", dtype=Array(String)),
        Field(name="familiar_plays_28d", dtype=Array(Int64)),
    ],
    source=snapshot_source("listener_familiar"),
)

# Candidate input: co-listening neighbours of an item, per content type, most similar first.
item_neighbours = FeatureView(
    name="item_neighbours",
    entities=[item],
    ttl=timedelta(days=8),
    schema=[
        field
        for content_type in CONTENT_TYPES
        for field in (
            Field(name=f"neighbours_{content_type}", dtype=Array(String)),
            Field(name=f"neighbour_scores_{content_type}", dtype=Array(Float64)),
        )
    ]
    + [Field(name="item_taste_vector", dtype=Array(Float64))],
    source=snapshot_source("item_neighbours"),
)

# Candidate input: items most listened to in a segment (7 days; by new listeners: 28 days).
segment_popular = FeatureView(
    name="segment_popular",
    entities=[segment],
    ttl=timedelta(days=2),
    schema=[
        field
        for content_type in CONTENT_TYPES
        for field in (
            Field(name=f"popular_{content_type}", dtype=Array(String)),
            Field(name=f"popular_{content_type}_listeners_7d", dtype=Array(Int64)),
            Field(name=f"popular_new_{content_type}", dtype=Array(String)),
            Field(name=f"popular_new_{content_type}_listeners_28d", dtype=Array(Int64)),
        )
    ],
    source=snapshot_source("segment_popular"),
)

# Candidate input: editorial picks of a market, newest first, per content type.
market_editorial = FeatureView(
    name="market_editorial",
    entities=[market],
    ttl=timedelta(days=2),
    schema=[
        Field(name=f"editorial_{content_type}", dtype=Array(String))
        for content_type in CONTENT_TYPES
    ],
    source=snapshot_source("market_editorial"),
)


# How well an item fits a listener: taste vectors, genre share, market and dayparts.
@on_demand_feature_view(
    sources=[
        listener_profile[
            ["market", "top_genres_28d", "top_genre_shares_28d", "taste_vector"]
            + [f"share_{part}_28d" for part in DAYPARTS]
        ],
        item_stats[["genre", "item_market"] + [f"item_share_{part}_28d" for part in DAYPARTS]],
        item_neighbours[["item_taste_vector"]],
    ],
    schema=[
        Field(name="genre_affinity_28d", dtype=Float64),
        Field(name="same_market", dtype=Int64),
        Field(name="daypart_match_28d", dtype=Float64),
        Field(name="taste_match", dtype=Float64),
    ],
    mode="pandas",
)
def listener_item_match(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast runs this function from its source text: it may use only its own imports.
    import numpy as np
    import pandas as pd

    genres = inputs["top_genres_28d"].map(lambda v: [] if v is None else list(v))
    shares = inputs["top_genre_shares_28d"].map(lambda v: [] if v is None else list(v))
    lengths = genres.map(len).to_numpy()
    row = np.repeat(np.arange(len(inputs)), lengths)
    flat_genres = np.array([g for gs in genres for g in gs], dtype=object)
    flat_shares = np.array([x for xs in shares for x in xs], dtype=np.float64)
    matches = flat_genres == inputs["genre"].to_numpy(dtype=object)[row]
    affinity = np.bincount(row[matches], weights=flat_shares[matches], minlength=len(inputs))
    daypart_match = np.zeros(len(inputs))
    for part in ("night", "morning", "afternoon", "evening"):
        listener_share = pd.to_numeric(inputs[f"share_{part}_28d"]).fillna(0.0).to_numpy()
        item_share = pd.to_numeric(inputs[f"item_share_{part}_28d"]).fillna(0.0).to_numpy()
        daypart_match += listener_share * item_share
    taste_match = np.full(len(inputs), np.nan)
    listener_dims = inputs["taste_vector"].map(lambda v: 0 if v is None else len(v)).to_numpy()
    item_dims = inputs["item_taste_vector"].map(lambda v: 0 if v is None else len(v)).to_numpy()
    both = (listener_dims > 0) & (listener_dims == item_dims)
    if both.any():
        listener_vectors = np.stack(inputs["taste_vector"].to_numpy()[both]).astype(float)
        item_vectors = np.stack(inputs["item_taste_vector"].to_numpy()[both]).astype(float)
        taste_match[both] = (listener_vectors * item_vectors).sum(axis=1)
    return pd.DataFrame(
        {
            "genre_affinity_28d": affinity,
            "same_market": (inputs["market"] == inputs["item_market"]).astype("int64").to_numpy(),
            "daypart_match_28d": daypart_match,
            "taste_match": taste_match,
        }
    )


# The features of Shortcuts model v1: listener, item and their familiarity.
shortcuts_v1 = FeatureService(
    name="shortcuts_v1",
    features=[listener_profile, item_stats, listener_item, listener_item_match],
)

# The features of Shows you might like model v1: listener, show and any familiarity.
shows_you_might_like_v1 = FeatureService(
    name="shows_you_might_like_v1",
    features=[listener_profile, item_stats, listener_item, listener_item_match],
)

# The features of Try something else model v1 (cold start): listener and playlist.
try_something_else_v1 = FeatureService(
    name="try_something_else_v1", features=[listener_profile, item_stats, listener_item_match]
)
