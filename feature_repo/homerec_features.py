# homerec's Feast declarations: the single source of every feature, offline and online.
# The tables are written by `homerec features build` (training/features/tables.py computes
# each value); they live in $HOMEREC_DATA_DIR/features (default ../data). This file imports
# nothing of homerec but training.core.constants.
import os
from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    RequestSource,
    ValueType,
)
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float64, Int64, String, UnixTimestamp

from training.core.constants import CONTENT_TYPES, DAYPARTS, LONG_WINDOW_DAYS, SHORT_WINDOW_DAYS

DATA_DIR = Path(os.environ.get("HOMEREC_DATA_DIR", Path(__file__).resolve().parent.parent / "data"))


def snapshot_source(table: str) -> FileSource:
    """The daily snapshot table ``table`` written by the feature pipeline."""
    return FileSource(
        name=table,
        path=str(DATA_DIR.resolve() / "features" / f"{table}.parquet"),
        timestamp_field="event_timestamp",
    )


listener = Entity(
    name="listener",
    join_keys=["listener_id"],
    value_type=ValueType.STRING,
    description="A listener of the service (account).",
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A catalog item that can be a card: a show, playlist, album or artist.",
)

segment = Entity(
    name="segment",
    join_keys=["segment_id"],
    value_type=ValueType.STRING,
    description='A popularity segment: "<market>|<age bucket>" or "<market>|all".',
)

market = Entity(
    name="market",
    join_keys=["market_id"],
    value_type=ValueType.STRING,
    description="A market (country) whose editors pick items for the Home page.",
)

PLAYS_TO_DATE = Field(
    name="plays_to_date",
    dtype=Int64,
    description=(
        "The listener's plays before the snapshot, all time: a counter whose differences "
        "listener_item_relative uses, not a model feature (it grows with the log)."
    ),
)

listener_profile = FeatureView(
    name="listener_profile",
    description="A listener's activity, recency, habits and tastes as of each daily snapshot.",
    entities=[listener],
    ttl=timedelta(days=2),
    schema=[
        Field(
            name="market", dtype=String, description="The listener's market: country code, e.g. SE."
        ),
        Field(
            name="age_bucket", dtype=String, description="The listener's age bucket, e.g. 18-24."
        ),
        Field(
            name="platform",
            dtype=String,
            description="The listener's platform, e.g. ios, android, web, desktop.",
        ),
        Field(
            name="account_age_days",
            dtype=Float64,
            description="Days since signup: snapshot day minus signup day (at least 1).",
        ),
        *[
            Field(
                name=f"plays_{window}d_{content_type}",
                dtype=Int64,
                description=f"The listener's plays of {content_type}s in the last {window} days.",
            )
            for window in (SHORT_WINDOW_DAYS, LONG_WINDOW_DAYS)
            for content_type in CONTENT_TYPES
        ],
        Field(
            name="days_since_last_play",
            dtype=Float64,
            description="Days since the listener's last play (1-28); null if none in 28 days.",
        ),
        Field(
            name="minutes_28d",
            dtype=Float64,
            description="Minutes the listener played in the last 28 days (ms_played / 60000).",
        ),
        Field(
            name="active_days_28d",
            dtype=Int64,
            description="Days with at least one play by the listener in the last 28 days.",
        ),
        Field(
            name="distinct_items_28d",
            dtype=Int64,
            description="Distinct items the listener played in the last 28 days.",
        ),
        *[
            Field(
                name=f"share_{part}_28d",
                dtype=Float64,
                description=(
                    f"Share of the listener's 28-day plays at local hours {lo}-{hi}; null if none."
                ),
            )
            for part, (lo, hi) in DAYPARTS.items()
        ],
        Field(
            name="top_genres_28d",
            dtype=Array(String),
            description="Up to 5 genres the listener played most in 28 days, most played first.",
        ),
        Field(
            name="top_genre_shares_28d",
            dtype=Array(Float64),
            description="The listener's 28-day play share of each of top_genres_28d (same order).",
        ),
        PLAYS_TO_DATE,
        Field(
            name="taste_vector",
            dtype=Array(Float64),
            description=(
                "Unit-norm log1p(28-day plays per item) @ item taste vectors (16-d); "
                "empty if no plays."
            ),
        ),
    ],
    source=snapshot_source("listener_profile"),
)

item_stats = FeatureView(
    name="item_stats",
    description=(
        "An item's public attributes, reach, completion and trend as of each daily snapshot."
    ),
    entities=[item],
    ttl=timedelta(days=2),
    schema=[
        Field(
            name="content_type",
            dtype=String,
            description="The item's card type: show (podcast), playlist, album or artist.",
        ),
        Field(name="genre", dtype=String, description="The item's genre."),
        Field(
            name="item_market",
            dtype=String,
            description="The item's home market (country code; its language).",
        ),
        Field(
            name="is_editorial",
            dtype=Int64,
            description="1 if editors picked the item for the Home page, else 0.",
        ),
        Field(
            name="item_age_days",
            dtype=Float64,
            description="Days since release: snapshot day minus release day (at least 1).",
        ),
        Field(
            name="item_plays_7d",
            dtype=Int64,
            description="Plays of the item by all listeners in the last 7 days.",
        ),
        Field(
            name="item_plays_28d",
            dtype=Int64,
            description="Plays of the item by all listeners in the last 28 days.",
        ),
        Field(
            name="item_listeners_7d",
            dtype=Int64,
            description="Unique listeners who played the item in the last 7 days.",
        ),
        Field(
            name="item_listeners_28d",
            dtype=Int64,
            description="Unique listeners who played the item in the last 28 days.",
        ),
        Field(
            name="item_minutes_28d",
            dtype=Float64,
            description="Minutes of the item played by all listeners in the last 28 days.",
        ),
        Field(
            name="item_completion_28d",
            dtype=Float64,
            description="Mean share of the item played per play (0..1), 28 days; null if none.",
        ),
        Field(
            name="item_trend_7d",
            dtype=Float64,
            description="Plays in 7 days / (plays in 28 days / 4 + 1): this week vs a mean week.",
        ),
        *[
            Field(
                name=f"item_share_{part}_28d",
                dtype=Float64,
                description=(
                    f"Share of the item's 28-day plays at local hours {lo}-{hi}; null if none."
                ),
            )
            for part, (lo, hi) in DAYPARTS.items()
        ],
    ],
    source=snapshot_source("item_stats"),
)

PAIR_HISTORY_FIELDS = [
    Field(
        name="pair_last_play_day",
        dtype=Int64,
        description="UTC day number (days since 1970-01-01) of the listener's last play of it.",
    ),
    Field(
        name="pair_first_play_day_28d",
        dtype=Int64,
        description="UTC day number of the first play in 28 days; null on the closing row.",
    ),
    Field(
        name="pair_listener_plays_through_last_play",
        dtype=Int64,
        description="The listener's plays_to_date at the end of the day of this item's last play.",
    ),
    Field(
        name="pair_listener_plays_at_close",
        dtype=Int64,
        description="The listener's plays_to_date at the closing row; null before it.",
    ),
]
"""Inputs of listener_item_relative, not model features: day numbers and play counters
mean nothing alone (their size depends on the calendar and the log's length)."""

listener_item = FeatureView(
    name="listener_item",
    description=(
        "How familiar a listener is with an item: plays in windows up to 28 days and the days "
        "of its first and last play (what Shortcuts ranks on). A pair has a row when one of "
        "these values changes: on a day it is played and on a day a play leaves a window; the "
        "point-in-time join carries a row forward until the next. The last row of a pair is "
        "its closing row (28-day counts 0). Values relative to the request time are computed "
        "by listener_item_relative."
    ),
    entities=[listener, item],
    ttl=timedelta(days=365),
    schema=[
        Field(
            name="pair_plays_7d",
            dtype=Int64,
            description="The listener's plays of the item in the last 7 days.",
        ),
        Field(
            name="pair_plays_28d",
            dtype=Int64,
            description="The listener's plays of the item in the last 28 days.",
        ),
        Field(
            name="pair_minutes_28d",
            dtype=Float64,
            description="Minutes the listener played the item in the last 28 days.",
        ),
        Field(
            name="pair_plays_3d",
            dtype=Int64,
            description="The listener's plays of the item in the last 3 days (current rotation).",
        ),
        Field(
            name="pair_completion_28d",
            dtype=Float64,
            description="Mean share of the item played per play (0..1), 28 days; null if none.",
        ),
        Field(
            name="pair_completion_logit_28d",
            dtype=Float64,
            description="Mean logit of completion clipped to [0.01, 0.99], 28 days; null if none.",
        ),
        Field(
            name="pair_skip_share_28d",
            dtype=Float64,
            description="Share of the 28-day plays that are skips (< 15% played); null if none.",
        ),
        *PAIR_HISTORY_FIELDS,
    ],
    source=snapshot_source("listener_item"),
)

listener_familiar = FeatureView(
    name="listener_familiar",
    description=(
        "Candidate input: a listener's familiar items, most played in 28 days first. A row at "
        "signup and where the list changes; the point-in-time join carries it forward."
    ),
    entities=[listener],
    ttl=timedelta(days=365),
    schema=[
        Field(
            name="familiar_items",
            dtype=Array(String),
            description=(
                "Every item the listener played in 28 days: most plays first, then most recent."
            ),
        ),
        Field(
            name="familiar_content_types",
            dtype=Array(String),
            description="The content type of each item in familiar_items (same order).",
        ),
        Field(
            name="familiar_plays_28d",
            dtype=Array(Int64),
            description="The listener's 28-day plays of each item in familiar_items (same order).",
        ),
    ],
    source=snapshot_source("listener_familiar"),
)

item_neighbours = FeatureView(
    name="item_neighbours",
    description=(
        "Candidate input: co-listening neighbours of an item, per content type, most similar "
        "first (rebuilt every 7 days)."
    ),
    entities=[item],
    ttl=timedelta(days=8),
    schema=[
        field
        for content_type in CONTENT_TYPES
        for field in (
            Field(
                name=f"neighbours_{content_type}",
                dtype=Array(String),
                description=(
                    f"Up to 20 {content_type}s sharing 2+ of the item's 28-day listeners, most "
                    "similar (cosine) first."
                ),
            ),
            Field(
                name=f"neighbour_scores_{content_type}",
                dtype=Array(Float64),
                description=(
                    "Cosine similarity of 28-day listener sets to each of "
                    f"neighbours_{content_type} (same order)."
                ),
            ),
        )
    ]
    + [
        Field(
            name="item_taste_vector",
            dtype=Array(Float64),
            description="The item's 16-d taste vector: SVD of log1p 28-day listener x item plays.",
        )
    ],
    source=snapshot_source("item_neighbours"),
)

segment_popular = FeatureView(
    name="segment_popular",
    description=(
        "Candidate input: items most listened to in a segment (7 days; by new listeners: 28 days)."
    ),
    entities=[segment],
    ttl=timedelta(days=2),
    schema=[
        field
        for content_type in CONTENT_TYPES
        for field in (
            Field(
                name=f"popular_{content_type}",
                dtype=Array(String),
                description=(
                    f"Up to 50 {content_type}s with most unique listeners of the segment in the "
                    "last 7 days."
                ),
            ),
            Field(
                name=f"popular_{content_type}_listeners_7d",
                dtype=Array(Int64),
                description=(
                    f"Unique segment listeners in 7 days of each item in popular_{content_type}."
                ),
            ),
            Field(
                name=f"popular_new_{content_type}",
                dtype=Array(String),
                description=(
                    f"Up to 50 {content_type}s with most unique new (account <= 30 days) segment "
                    "listeners in 28 days."
                ),
            ),
            Field(
                name=f"popular_new_{content_type}_listeners_28d",
                dtype=Array(Int64),
                description=(
                    "Unique new segment listeners in 28 days of each item in "
                    f"popular_new_{content_type}."
                ),
            ),
        )
    ],
    source=snapshot_source("segment_popular"),
)

market_editorial = FeatureView(
    name="market_editorial",
    description="Candidate input: editorial picks of a market, newest first, per content type.",
    entities=[market],
    ttl=timedelta(days=2),
    schema=[
        Field(
            name=f"editorial_{content_type}",
            dtype=Array(String),
            description=(
                f"Up to 50 editorial {content_type}s of the market released before the snapshot, "
                "newest first."
            ),
        )
        for content_type in CONTENT_TYPES
    ],
    source=snapshot_source("market_editorial"),
)


@on_demand_feature_view(
    sources=[
        listener_profile[
            ["market", "top_genres_28d", "top_genre_shares_28d", "taste_vector"]
            + [f"share_{part}_28d" for part in DAYPARTS]
        ],
        item_stats[["genre", "item_market"] + [f"item_share_{part}_28d" for part in DAYPARTS]],
        item_neighbours[["item_taste_vector"]],
    ],
    # No Field descriptions here: feast apply compares the declared fields with the ones it
    # infers by running the function, description included, and rejects them (Feast #3617).
    schema=[
        Field(name="genre_affinity_28d", dtype=Float64),
        Field(name="same_market", dtype=Int64),
        Field(name="daypart_match_28d", dtype=Float64),
        Field(name="taste_match", dtype=Float64),
    ],
    mode="pandas",
    description=(
        "How well an item fits a listener: taste vectors, genre share, market and dayparts. "
        "genre_affinity_28d: the listener's 28-day play share of the item's genre if in their "
        "top 5, else 0; same_market: 1 if the listener's market is the item's, else 0; "
        "daypart_match_28d: sum over dayparts of listener x item 28-day play share (null as 0); "
        "taste_match: taste_vector . item_taste_vector, null if either is empty."
    ),
)
def listener_item_match(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast runs this function from its source text: it may use only its own imports.
    # ``inputs`` is a DataFrame (Feast) or any mapping of columns (serving passes numpy
    # arrays): only column access and numpy are used on it.
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    def objects(column: str) -> np.ndarray:
        return np.asarray(inputs[column], dtype=object)

    def number(column: str) -> np.ndarray:
        values = inputs[column]
        if isinstance(values, pd.Series):
            return pd.to_numeric(values).to_numpy(dtype=np.float64, na_value=np.nan)
        return np.asarray(values, dtype=np.float64)

    def lists(column: str, kind: pa.DataType) -> pa.ListArray:
        return pa.array(objects(column), type=pa.list_(kind))

    def lengths(values: pa.ListArray) -> np.ndarray:
        return pc.fill_null(pc.list_value_length(values), 0).to_numpy()

    genres = lists("top_genres_28d", pa.string())
    n = len(genres)
    shares = lists("top_genre_shares_28d", pa.float64())
    row = np.repeat(np.arange(n), lengths(genres))
    flat_genres = pc.list_flatten(genres).to_numpy(zero_copy_only=False)
    flat_shares = pc.list_flatten(shares).to_numpy(zero_copy_only=False)
    matches = flat_genres == objects("genre")[row]
    affinity = np.bincount(row[matches], weights=flat_shares[matches], minlength=n)
    daypart_match = np.zeros(n)
    for part in ("night", "morning", "afternoon", "evening"):
        listener_share = np.nan_to_num(number(f"share_{part}_28d"))
        item_share = np.nan_to_num(number(f"item_share_{part}_28d"))
        daypart_match += listener_share * item_share
    listener = lists("taste_vector", pa.float64())
    item = lists("item_taste_vector", pa.float64())
    listener_dims, item_dims = lengths(listener), lengths(item)
    both = (listener_dims > 0) & (listener_dims == item_dims)
    taste_match = np.full(n, np.nan)
    for dims in np.unique(listener_dims[both]):  # one block of equal-length vectors each
        rows = both & (listener_dims == dims)
        chosen = pa.array(rows)
        shape = (int(rows.sum()), int(dims))
        listener_vectors = pc.list_flatten(listener.filter(chosen)).to_numpy().reshape(shape)
        item_vectors = pc.list_flatten(item.filter(chosen)).to_numpy().reshape(shape)
        taste_match[rows] = (listener_vectors * item_vectors).sum(axis=1)
    market, item_market = objects("market"), objects("item_market")
    known = np.array([m is not None and m == m for m in market], dtype=bool)  # not NaN
    return pd.DataFrame(
        {
            "genre_affinity_28d": affinity,
            "same_market": (known & (market == item_market)).astype("int64"),
            "daypart_match_28d": daypart_match,
            "taste_match": taste_match,
        }
    )


request_time = RequestSource(
    name="request_time",
    schema=[
        Field(
            name="event_timestamp",
            dtype=UnixTimestamp,
            description="When the features are read for: an entity row's time (training), "
            "the online store's materialization end (serving).",
        )
    ],
    description="The time of a read, for features relative to it.",
)


@on_demand_feature_view(
    sources=[
        listener_item[["pair_plays_28d"] + [field.name for field in PAIR_HISTORY_FIELDS]],
        listener_profile[
            ["plays_to_date"] + [f"plays_{LONG_WINDOW_DAYS}d_{kind}" for kind in CONTENT_TYPES]
        ],
        request_time,
    ],
    schema=[
        Field(name="pair_days_since_last_play", dtype=Float64),
        Field(name="pair_days_since_first_play_28d", dtype=Float64),
        Field(name="pair_plays_per_day_28d", dtype=Float64),
        Field(name="pair_share_28d", dtype=Float64),
        Field(name="pair_plays_elsewhere_since_last", dtype=Float64),
        Field(name="pair_dry_spell_logp_28d", dtype=Float64),
    ],
    mode="pandas",
    description=(
        "A listener x item pair relative to the time of the read, null for a pair never played "
        "(or closed over a year ago). pair_days_since_last_play: days since the last play, "
        "1-28, 29 once closed; pair_days_since_first_play_28d: days since the first play in 28 "
        "days, null once closed; pair_plays_per_day_28d: pair_plays_28d / that, 0 once closed; "
        "pair_share_28d: the item's share of the listener's 28-day plays (0 if none); "
        "pair_plays_elsewhere_since_last: the listener's plays of other items on the days after "
        "this item's last play (until it closed); pair_dry_spell_logp_28d: log P(dry spell) = "
        "plays elsewhere since last * log(1 - min(pair_share_28d, 0.95))."
    ),
)
def listener_item_relative(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast runs this function from its source text: it may use only its own imports.
    # ``inputs`` is a DataFrame (Feast) or any mapping of columns (serving passes numpy
    # arrays): only column access and numpy are used on it.
    import numpy as np
    import pandas as pd

    from training.core.constants import CONTENT_TYPES, LONG_WINDOW_DAYS

    def number(column: str) -> np.ndarray:
        values = inputs[column]
        if isinstance(values, pd.Series):
            return pd.to_numeric(values).to_numpy(dtype=np.float64, na_value=np.nan)
        return np.asarray(values, dtype=np.float64)

    def day_numbers(column: str) -> np.ndarray:
        """Days since the epoch (UTC) of each timestamp; numpy datetime64 values are UTC."""
        values = inputs[column]
        if isinstance(values, np.ndarray) and values.dtype.kind == "M":
            return values.astype("datetime64[D]").astype(np.int64).astype(np.float64)
        stamps = pd.DatetimeIndex(pd.to_datetime(values, utc=True))
        return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(days=1)).to_numpy(np.float64)

    today = day_numbers("event_timestamp")
    plays = number("pair_plays_28d")
    closed = plays == 0
    since_last = np.minimum(today - number("pair_last_play_day"), LONG_WINDOW_DAYS + 1)
    since_first = today - number("pair_first_play_day_28d")
    listener_plays = sum(number(f"plays_{LONG_WINDOW_DAYS}d_{kind}") for kind in CONTENT_TYPES)
    share = np.where(listener_plays > 0, plays / np.maximum(listener_plays, 1), 0.0)
    counter = np.where(closed, number("pair_listener_plays_at_close"), number("plays_to_date"))
    elsewhere = counter - number("pair_listener_plays_through_last_play")
    with np.errstate(invalid="ignore"):
        per_day = np.where(np.isnan(since_first), 0.0, plays / since_first)
    unknown = np.isnan(plays)
    columns = {
        "pair_days_since_last_play": since_last,
        "pair_days_since_first_play_28d": since_first,
        "pair_plays_per_day_28d": per_day,
        "pair_share_28d": share,
        "pair_plays_elsewhere_since_last": elsewhere,
        "pair_dry_spell_logp_28d": elsewhere * np.log1p(-np.minimum(share, 0.95)),
    }
    return pd.DataFrame({name: np.where(unknown, np.nan, v) for name, v in columns.items()})


def model_features(view: FeatureView, inputs: list[Field]):
    """``view`` without the fields that only feed on-demand views."""
    names = {field.name for field in inputs}
    return view[[field.name for field in view.features if field.name not in names]]


shortcuts_v1 = FeatureService(
    name="shortcuts_v1",
    features=[
        model_features(listener_profile, [PLAYS_TO_DATE]),
        item_stats,
        model_features(listener_item, PAIR_HISTORY_FIELDS),
        listener_item_relative,
        listener_item_match,
    ],
    description="The features of Shortcuts model v1: listener, item and their familiarity.",
)

shows_you_might_like_v1 = FeatureService(
    name="shows_you_might_like_v1",
    features=[
        model_features(listener_profile, [PLAYS_TO_DATE]),
        item_stats,
        model_features(listener_item, PAIR_HISTORY_FIELDS),
        listener_item_relative,
        listener_item_match,
    ],
    description=(
        "The features of Shows you might like model v1: listener, show and any familiarity."
    ),
)

try_something_else_v1 = FeatureService(
    name="try_something_else_v1",
    features=[
        model_features(listener_profile, [PLAYS_TO_DATE]),
        item_stats,
        listener_item_match,
    ],
    description="The features of Try something else model v1 (cold start): listener and playlist.",
)
