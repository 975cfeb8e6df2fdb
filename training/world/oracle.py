"""The oracle: the expected engagement of any (listener, item) pair under the hidden model
written to ``truth/`` (the limit any ranking could reach, a diagnostic, never a feature)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from training.core.layout import (
    WorldPaths,
    read_world_meta,
)
from training.world.behaviour import (
    DAY_NS,
    MARKETS,
    PLAY_SOURCES,
    PLAYLIST,
    POPULARITY_CHANNELS,
    WorldConfig,
    _boredom_hazard,
    _build_channels,
    _Channel,
    _channel_day,
    _channel_groups,
    _channel_mix,
    _codes,
    _expected_completion,
    _honeymoon,
    _hour_affinity,
    _hour_distribution,
    _Items,
    _Listeners,
    _match,
    _novelty,
    _pool_id,
    _pool_static_logits,
    _repeat_probability,
    _side_terms,
    config_from_meta,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- oracle


@dataclass
class _Truth:
    config: WorldConfig
    listeners: _Listeners
    items: _Items
    pools: np.ndarray
    familiar_path: Path


def _load_truth(world_dir: Path) -> _Truth:
    paths = WorldPaths(Path(world_dir))
    config = config_from_meta(read_world_meta(paths))
    pools = pd.read_parquet(paths.truth / "pools.parquet")
    pool_id = _codes(pools["market"], MARKETS) + pools["cluster"].to_numpy() * len(MARKETS)
    order = np.lexsort((pools["rank"].to_numpy(), pool_id))
    n_pools = config.behaviour.taste_clusters * len(MARKETS)
    return _Truth(
        config=config,
        listeners=_Listeners.from_frame(pd.read_parquet(paths.truth / "listeners.parquet")),
        items=_Items.from_frame(pd.read_parquet(paths.truth / "items.parquet")),
        pools=pools["item_idx"].to_numpy(np.int64)[order].reshape(n_pools, -1),
        familiar_path=paths.truth / "familiar.parquet",
    )


def _read_familiar(path: Path, listener_idx: np.ndarray) -> pd.DataFrame:
    """Familiar memberships of the given listeners (row groups outside their range are skipped)."""
    wanted = np.unique(listener_idx)
    filters = [
        ("listener_idx", ">=", int(wanted[0])),
        ("listener_idx", "<=", int(wanted[-1])),
        ("listener_idx", "in", wanted.tolist()),
    ]
    return pq.read_table(path, filters=filters).to_pandas()


def oracle_scores(
    world_dir: Path,
    pairs: pd.DataFrame,
    *,
    horizon_days: int = 7,
    measure: Literal["plays", "minutes"] = "plays",
    sources: Collection[str] = PLAY_SOURCES,
    affinity: pd.DataFrame | None = None,
) -> np.ndarray:
    """The generator's expected engagement of each (listener, item) pair after its timestamp.

    ``pairs`` has columns ``listener_id``, ``item_id``, ``timestamp`` (UTC). For each row
    the score is the expected number of plays (``measure="plays"``) or minutes played
    (``"minutes"``) of the item by the listener on the ``horizon_days`` days starting at
    the first midnight at or after ``timestamp``, computed from the hidden choice model:
    activity, repeat propensity, the familiar set at that midnight with its hidden
    affinities (its boredom over the horizon in expectation; items that will join later
    are not known), hour profiles, taste, quality, novelty and the channel mix. Rows with
    an unknown listener or item score 0. Reads only ``world.json`` and ``truth/``.

    Two diagnostics ask where the oracle's edge comes from. ``sources`` counts only the
    plays of those :data:`PLAY_SOURCES` (the scores of all sources add up to the full
    score). ``affinity`` (columns ``listener_id``, ``item_id``, ``timestamp``,
    ``affinity``) replaces the hidden affinity of those familiar memberships by estimates;
    memberships it does not cover get the mean estimate.
    """
    if measure not in ("plays", "minutes"):
        raise ValueError(f"unknown measure {measure!r}: expected 'plays' or 'minutes'")
    unknown = sorted(set(sources) - set(PLAY_SOURCES))
    if unknown:
        raise ValueError(f"unknown play sources {unknown}: expected some of {list(PLAY_SOURCES)}")
    scores = np.zeros(len(pairs), dtype=np.float64)
    if not len(pairs):
        return scores
    truth = _load_truth(Path(world_dir))
    li, ij, d0 = _pair_codes(truth, pairs)
    known = (li >= 0) & (ij >= 0) & (d0 > np.iinfo(np.int64).min)
    if not known.any():
        return scores
    rows = np.flatnonzero(known)
    estimates = None if affinity is None else _affinity_estimates(truth, affinity)
    keys, pair_key = np.unique(np.stack([li[rows], d0[rows]], axis=1), axis=0, return_inverse=True)
    pair_key = pair_key.ravel()
    familiar = _read_familiar(truth.familiar_path, keys[:, 0])
    order = np.argsort(pair_key, kind="stable")
    block = 20_000
    bounds = np.searchsorted(pair_key[order], np.arange(0, len(keys) + block, block))
    for b_index, lo in enumerate(range(0, len(keys), block)):
        sel = order[bounds[b_index] : bounds[b_index + 1]]
        oracle = _OracleBlock.build(
            truth,
            familiar,
            keys[lo : lo + block, 0],
            keys[lo : lo + block, 1],
            pair_key[sel] - lo,
            ij[rows[sel]],
        )
        if estimates is not None:
            oracle.replace_affinity(*estimates)
        scores[rows[sel]] = oracle.expected(horizon_days, measure, set(sources))
    return scores


def familiar_affinity(world_dir: Path, pairs: pd.DataFrame) -> np.ndarray:
    """The hidden affinity of each pair's familiar membership at the first midnight at or
    after its ``timestamp`` (NaN where the item is not familiar to the listener then).

    For diagnostics only (how well observable features estimate it); never a feature.
    """
    affinity = np.full(len(pairs), np.nan)
    if not len(pairs):
        return affinity
    truth = _load_truth(Path(world_dir))
    li, ij, d0 = _pair_codes(truth, pairs)
    rows = np.flatnonzero((li >= 0) & (ij >= 0))
    if not len(rows):
        return affinity
    member = pd.DataFrame({"row": rows, "listener_idx": li[rows], "item_idx": ij[rows]})
    member["d0"] = d0[rows]
    familiar = _read_familiar(truth.familiar_path, li[rows])
    member = _memberships_at_d0(member, familiar, on=["listener_idx", "item_idx"])
    affinity[member["row"].to_numpy()] = member["affinity"].to_numpy(np.float64)
    return affinity


def _memberships_at_d0(rows: pd.DataFrame, familiar: pd.DataFrame, on: list[str]) -> pd.DataFrame:
    """``rows`` (with a ``d0`` day) joined on ``on`` to the familiar memberships active on
    that day."""
    member = rows.merge(familiar, on=on)
    return member[(member.active_from <= member.d0) & (member.d0 < member.active_until)]


def _pair_codes(truth: _Truth, pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Listener and item rows (-1: unknown) and first midnight (day index) of each pair
    (int64 minimum where the timestamp is missing)."""
    li = pd.Index(truth.listeners.ids).get_indexer(pairs["listener_id"].astype(object))
    ij = pd.Index(truth.items.ids).get_indexer(pairs["item_id"].astype(object))
    stamps = pd.DatetimeIndex(pd.to_datetime(pairs["timestamp"], utc=True)).as_unit("ns")
    start = truth.config.start_ns
    ns = np.where(stamps.isna(), start, stamps.asi8)
    d0 = -((start - ns) // DAY_NS)  # ceil division: first midnight
    return li, ij, np.where(stamps.isna(), np.iinfo(np.int64).min, d0)


def _affinity_estimates(truth: _Truth, affinity: pd.DataFrame) -> tuple[pd.Series, float]:
    """Estimates keyed by (listener row, item row, first midnight), and their mean."""
    li, ij, d0 = _pair_codes(truth, affinity)
    values = affinity["affinity"].to_numpy(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("affinity estimates must be finite")
    index = pd.MultiIndex.from_arrays([li, ij, d0])
    estimates = pd.Series(values, index=index).groupby(level=[0, 1, 2]).mean()
    return estimates, float(values.mean()) if len(values) else 0.0


@dataclass
class _OracleBlock:
    """The pairs of one block of (listener, first day) keys with what their scores need.

    ``k*`` arrays are per key, ``f_*`` per familiar membership active at the key's first
    day, everything else per pair (``pair_key`` points at its key).
    """

    truth: _Truth
    key_l: np.ndarray
    key_d0: np.ndarray
    pair_key: np.ndarray
    pair_item: np.ndarray
    pair_hour: np.ndarray  # (n_pairs, 24): p(hour) * exp(hour match of the item)
    exp_hour: np.ndarray  # (n_items, 24)
    f_key: np.ndarray
    f_item: np.ndarray
    f_affinity: np.ndarray
    f_from: np.ndarray
    f_hazard: np.ndarray  # expected boredom per day
    fam_row: np.ndarray  # the pair's membership row, -1 if not familiar
    p_repeat: np.ndarray  # per key
    pool_id: np.ndarray  # per key
    pool_static: np.ndarray  # (n_keys, M)
    in_pool: np.ndarray
    pair_match: np.ndarray
    pair_static: np.ndarray
    channels: dict[str, _Channel]
    channel_log_weight: dict[str, np.ndarray]  # -inf: not in the listener's channel

    @classmethod
    def build(
        cls,
        truth: _Truth,
        familiar: pd.DataFrame,
        key_l: np.ndarray,
        key_d0: np.ndarray,
        pair_key: np.ndarray,
        pair_item: np.ndarray,
    ) -> _OracleBlock:
        b = truth.config.behaviour
        lst, its = truth.listeners, truth.items
        n_keys, n_items = len(key_l), len(its.ids)
        pair_l = key_l[pair_key]
        exp_hour = np.exp(_hour_affinity(its).astype(np.float64))
        pair_hour = _hour_distribution(lst.hour_weights[key_l], lst.hour_shift[key_l])[pair_key]
        keys = pd.DataFrame({"key": np.arange(n_keys), "listener_idx": key_l, "d0": key_d0})
        member = _memberships_at_d0(keys, familiar, on=["listener_idx"])
        f_key = member["key"].to_numpy()
        f_item = member["item_idx"].to_numpy(np.int64)
        f_affinity = member["affinity"].to_numpy(np.float64)
        pid = _pool_id(lst, key_l)
        pool_codes = (np.arange(truth.pools.shape[0])[:, None] * n_items + truth.pools).ravel()
        pair_match = _match(lst.taste[pair_l], its.vec[pair_item], b)
        same_market = its.market[pair_item] == lst.market[pair_l]
        quality = its.quality[pair_item].astype(np.float64)
        playlist = its.ctype[pair_item] == PLAYLIST
        return cls(
            truth=truth,
            key_l=key_l,
            key_d0=key_d0,
            pair_key=pair_key,
            pair_item=pair_item,
            pair_hour=pair_hour * exp_hour[pair_item],
            exp_hour=exp_hour,
            f_key=f_key,
            f_item=f_item,
            f_affinity=f_affinity,
            f_from=member["active_from"].to_numpy(np.int64),
            f_hazard=_daily_boredom(truth, key_l[f_key], f_affinity),
            fam_row=_lookup(f_key * n_items + f_item, pair_key * n_items + pair_item),
            p_repeat=_repeat_probability(lst, key_l, np.bincount(f_key, minlength=n_keys), b),
            pool_id=pid,
            pool_static=_pool_static_logits(lst, its, truth.pools, key_l, b).astype(np.float64),
            in_pool=_lookup(pool_codes, pid[pair_key] * n_items + pair_item) >= 0,
            pair_match=pair_match,
            pair_static=pair_match + _side_terms(lst, its, pair_l, pair_item, b),
            channels=_build_channels(its),
            channel_log_weight={
                "popular": np.where(same_market, quality, -np.inf),
                "onboarding": np.where(
                    same_market & playlist,
                    quality + its.age_aff[pair_item, lst.age[pair_l]],
                    -np.inf,
                ),
                "editorial": np.where(same_market & its.editorial[pair_item], quality, -np.inf),
            },
        )

    def replace_affinity(self, estimates: pd.Series, default: float) -> None:
        """Use ``estimates`` (keyed by listener row, item row, first day) as the affinity of
        the block's memberships, ``default`` where there is none."""
        index = pd.MultiIndex.from_arrays(
            [self.key_l[self.f_key], self.f_item, self.key_d0[self.f_key]]
        )
        self.f_affinity = estimates.reindex(index).fillna(default).to_numpy(np.float64)
        self.f_hazard = _daily_boredom(self.truth, self.key_l[self.f_key], self.f_affinity)

    def familiar_share(self, day: np.ndarray, k: int) -> np.ndarray:
        """P(a repeat play picks the pair's item) on ``day``, ``k`` days after the snapshot."""
        b = self.truth.config.behaviour
        weight = np.exp(
            self.f_affinity + _honeymoon(self.f_from, day[self.f_key], b) - k * self.f_hazard
        )
        totals = np.zeros((len(self.key_l), 24))
        np.add.at(totals, self.f_key, weight[:, None] * self.exp_hour[self.f_item])
        share = np.zeros(len(self.pair_key))
        has = self.fam_row >= 0
        share[has] = weight[self.fam_row[has]] * _safe_ratio(
            self.pair_hour[has], totals[self.pair_key[has]]
        )
        return share

    def taste_share(self, day: np.ndarray) -> np.ndarray:
        """P(a taste-channel play picks the pair's item): its share of the pool softmax."""
        b, its, pools = self.truth.config.behaviour, self.truth.items, self.truth.pools
        weight = np.exp(self.pool_static + _novelty(its, pools[self.pool_id], day[:, None], b))
        totals = np.zeros((len(self.key_l), 24))
        for p in np.unique(self.pool_id):
            rows = np.flatnonzero(self.pool_id == p)
            totals[rows] = weight[rows] @ self.exp_hour[pools[p]]
        pair_day = day[self.pair_key]
        pair_weight = np.exp(self.pair_static + _novelty(its, self.pair_item, pair_day, b))
        share = pair_weight * _safe_ratio(self.pair_hour, totals[self.pair_key])
        return np.where(self.in_pool, share, 0.0)

    def popularity_shares(self, day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per pair, P(pick | channel) of the popularity channels, and per key which exist."""
        b, its = self.truth.config.behaviour, self.truth.items
        groups = _channel_groups(self.truth.listeners, self.key_l)
        unique_days, day_code = np.unique(day, return_inverse=True)
        novelty = {d: _novelty(its, np.arange(len(its.ids)), d, b) for d in unique_days}
        pair_novelty = _novelty(its, self.pair_item, day[self.pair_key], b)
        shares = np.zeros((len(self.pair_key), len(POPULARITY_CHANNELS)))
        available = np.zeros((len(self.key_l), len(POPULARITY_CHANNELS)), dtype=bool)
        for c, name in enumerate(POPULARITY_CHANNELS):
            channel = self.channels[name]
            totals = np.stack([_channel_day(channel, novelty[d])[1] for d in unique_days])
            key_total = totals[day_code, groups[name]]
            available[:, c] = key_total > 0
            weight = np.exp(self.channel_log_weight[name] + pair_novelty)
            total = key_total[self.pair_key]
            shares[:, c] = np.divide(weight, total, out=np.zeros_like(weight), where=total > 0)
        return shares, available

    def gains(self, measure: str) -> tuple[np.ndarray, np.ndarray]:
        """What one play is worth for a repeat and an exploring play: 1, or expected minutes."""
        if measure != "minutes":
            ones = np.ones(len(self.pair_key))
            return ones, ones
        b, its = self.truth.config.behaviour, self.truth.items
        minutes = its.duration_ms[self.pair_item] / 60_000.0
        affinity = self.f_affinity[np.maximum(self.fam_row, 0)] if len(self.f_affinity) else 0.0
        repeat = b.completion_affinity * affinity + b.completion_repeat_bias
        explore = (
            b.completion_match * self.pair_match
            + b.completion_quality * its.quality[self.pair_item]
            + b.completion_bias
        )
        return minutes * _expected_completion(repeat, b), minutes * _expected_completion(explore, b)

    def expected(self, horizon_days: int, measure: str, sources: set[str]) -> np.ndarray:
        """Expected plays (or minutes) from ``sources`` of each pair summed over the horizon."""
        lst = self.truth.listeners
        b = self.truth.config.behaviour
        repeat_gain, explore_gain = self.gains(measure)
        rate = lst.p_active[self.key_l] * (1.0 + lst.plays_lambda[self.key_l])
        p_repeat = self.p_repeat[self.pair_key]
        total = np.zeros(len(self.pair_key))
        for k in range(horizon_days):
            day = self.key_d0 + k
            plays = (rate * (lst.first_day[self.key_l] <= day))[self.pair_key]
            shares, available = self.popularity_shares(day)
            tenure = day + 0.5 - lst.signup_day[self.key_l]
            mix = _channel_mix(tenure, available, b)[self.pair_key]
            mix = mix * np.array([name in sources for name in ("taste", *POPULARITY_CHANNELS)])
            explore = mix[:, 0] * self.taste_share(day) + (mix[:, 1:] * shares).sum(axis=1)
            repeat = self.familiar_share(day, k) * ("repeat" in sources)
            total += plays * (
                p_repeat * repeat * repeat_gain + (1.0 - p_repeat) * explore * explore_gain
            )
        return total


def _daily_boredom(truth: _Truth, listener_idx: np.ndarray, affinity: np.ndarray) -> np.ndarray:
    """Expected boredom per day of memberships: the hazard on an active day x P(active)."""
    listeners = truth.listeners
    hazard = _boredom_hazard(listeners, listener_idx, affinity, truth.config.behaviour)
    return hazard * listeners.p_active[listener_idx]


def _safe_ratio(weights: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Row sums of ``weights / totals`` over hours, with 0 where a total is 0."""
    ratio = np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0)
    return ratio.sum(axis=1)


def _lookup(codes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Position in ``codes`` (unique ints) of each query, or -1 where absent."""
    if not len(codes):
        return np.full(len(queries), -1, dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    pos = np.minimum(np.searchsorted(codes[order], queries), len(codes) - 1)
    return np.where(codes[order][pos] == queries, order[pos], -1)
