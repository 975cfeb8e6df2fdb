"""listener_item's features and listener_familiar's lists worked out from the raw log, row
by row, as the daily tables defined them (a pair had a row at every snapshot while played
in the last 28 days and one closing row after, carried forward by the 365-day TTL; a
listener had a familiar list every day). Tests compare what Feast returns from the
change-only tables (and the on-demand view) with these values."""

import numpy as np
import pandas as pd

DAY = pd.Timedelta(days=1)
WINDOW = 28
CLOSED_SINCE_LAST = WINDOW + 1
TTL = pd.Timedelta(days=365)
SKIP_COMPLETION = 0.15

PAIR_FEATURES = [
    "pair_plays_3d",
    "pair_plays_7d",
    "pair_plays_28d",
    "pair_minutes_28d",
    "pair_days_since_last_play",
    "pair_days_since_first_play_28d",
    "pair_plays_per_day_28d",
    "pair_share_28d",
    "pair_completion_28d",
    "pair_completion_logit_28d",
    "pair_skip_share_28d",
    "pair_plays_elsewhere_since_last",
    "pair_dry_spell_logp_28d",
]


def pair_values(listener_plays: pd.DataFrame, item: str, when: pd.Timestamp) -> dict[str, float]:
    """The features of (the listener of ``listener_plays``, ``item``) read at ``when``.

    ``listener_plays``: that listener's events with ``day`` (UTC day number), ``item_id``,
    ``ms_played`` and ``completion`` (share of the item played, 0..1).
    """
    today = (when.floor("D") - pd.Timestamp(0, tz="UTC")) // DAY
    seen = listener_plays[listener_plays["day"] < today]
    pair = seen[seen["item_id"] == item]
    if pair.empty:
        return dict.fromkeys(PAIR_FEATURES, np.nan)
    last = int(pair["day"].max())
    if today - last >= CLOSED_SINCE_LAST:
        closed_at = pd.Timestamp(0, tz="UTC") + (last + CLOSED_SINCE_LAST) * DAY
        if when - closed_at > TTL:
            return dict.fromkeys(PAIR_FEATURES, np.nan)
        elsewhere = float(((seen["day"] > last) & (seen["day"] <= last + WINDOW)).sum())
        values = dict.fromkeys(PAIR_FEATURES, 0.0)
        values.update(
            pair_days_since_last_play=float(CLOSED_SINCE_LAST),
            pair_days_since_first_play_28d=np.nan,
            pair_completion_28d=np.nan,
            pair_completion_logit_28d=np.nan,
            pair_skip_share_28d=np.nan,
            pair_plays_elsewhere_since_last=elsewhere,
        )
        return values
    recent = pair[pair["day"] >= today - WINDOW]
    plays = float(len(recent))
    since_first = float(today - recent["day"].min())
    share = plays / float((seen["day"] >= today - WINDOW).sum())
    elsewhere = float((seen["day"] > last).sum())
    done = recent["completion"].to_numpy()
    bounded = np.clip(done, 0.01, 0.99)
    return {
        "pair_plays_3d": float((recent["day"] >= today - 3).sum()),
        "pair_plays_7d": float((recent["day"] >= today - 7).sum()),
        "pair_plays_28d": plays,
        "pair_minutes_28d": recent["ms_played"].sum() / 60_000.0,
        "pair_days_since_last_play": float(today - last),
        "pair_days_since_first_play_28d": since_first,
        "pair_plays_per_day_28d": plays / since_first,
        "pair_share_28d": share,
        "pair_completion_28d": done.mean(),
        "pair_completion_logit_28d": np.log(bounded / (1.0 - bounded)).mean(),
        "pair_skip_share_28d": (done < SKIP_COMPLETION).mean(),
        "pair_plays_elsewhere_since_last": elsewhere,
        "pair_dry_spell_logp_28d": elsewhere * np.log1p(-min(share, 0.95)),
    }


def familiar_list(listener_plays: pd.DataFrame, when: pd.Timestamp) -> tuple[list, list]:
    """(items, 28-day plays) the listener played in the 28 days before ``when``'s day: most
    plays first, then the most recently played, then by item id."""
    today = (when.floor("D") - pd.Timestamp(0, tz="UTC")) // DAY
    recent = listener_plays[
        (listener_plays["day"] < today) & (listener_plays["day"] >= today - WINDOW)
    ]
    stats = recent.groupby("item_id").agg(plays=("day", "size"), last=("day", "max"))
    stats = stats.reset_index().sort_values(
        ["plays", "last", "item_id"], ascending=[False, False, True]
    )
    return stats["item_id"].tolist(), stats["plays"].tolist()


def daily_plays(events: pd.DataFrame) -> pd.DataFrame:
    """``events`` with their UTC day number (``day``)."""
    return events.assign(day=(events["timestamp"].dt.floor("D") - pd.Timestamp(0, tz="UTC")) // DAY)


def expected_pair_features(
    events: pd.DataFrame, items: pd.DataFrame, entities: pd.DataFrame
) -> pd.DataFrame:
    """:func:`pair_values` for every entity row (listener_id, item_id, event_timestamp).

    ``events``: listener_id, item_id, timestamp, ms_played; ``items``: item_id, duration_ms.
    """
    duration = items.set_index("item_id")["duration_ms"].astype(float)
    plays = daily_plays(events).assign(
        completion=np.minimum(
            events["ms_played"] / np.maximum(events["item_id"].map(duration), 1.0), 1.0
        ),
    )
    by_listener = dict(iter(plays.groupby("listener_id")))
    empty = plays.iloc[:0]
    keys = entities[["listener_id", "item_id", "event_timestamp"]].itertuples(index=False)
    rows = [
        pair_values(by_listener.get(listener, empty), item, when) for listener, item, when in keys
    ]
    return pd.DataFrame(rows, columns=PAIR_FEATURES, index=entities.index)


def assert_pair_features_match(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Every feature equal row for row (NaN equals NaN; floats to 1e-12 relative)."""
    for name in PAIR_FEATURES:
        np.testing.assert_allclose(
            got[name].astype(float).to_numpy(),
            want[name].to_numpy(),
            rtol=1e-12,
            atol=0,
            err_msg=f"{name} differs from its definition",
        )
