"""The synthetic listening world: listeners, a catalog and a listening log with hidden structure.

The generator simulates listeners day by day. Every play is drawn from a hidden choice
model, and that model is written to ``truth/`` so that :func:`oracle_scores` can
compute the expected engagement of any (listener, item) pair: the best any ranking
could do. Nothing in ``truth/`` ever becomes a feature; downstream code reads only
the public tables of the world contract (:mod:`training.schema`).

The hidden model of one play (all coefficients live in :class:`Behaviour`):

1. A listener is active on a day with probability ``p_active`` (heavy-tailed across
   listeners) and then plays ``1 + Poisson(plays_lambda)`` times. Each play gets an
   hour from the listener's hour profile (morning commute, day, evening).
2. The play is a *repeat* of a familiar item with probability
   ``repeat * min(1, familiar_size / familiar_fill)``. The familiar item is drawn by
   a softmax over the listener's familiar set of ``affinity + honeymoon + hour
   match``: a hidden per-(listener, item) affinity, a boost that decays with the days
   since the item became familiar, and the item's time-of-day profile at that hour.
3. Otherwise it *explores* through one of four channels: taste (a softmax over the
   candidate pool of the listener's taste cluster and market: co-listening), popular
   in the listener's market, popular playlists for market and age bucket
   (onboarding, dominant in a new listener's first days) and editorial picks.
4. How much of the item is played depends on the match (skips are short), and an
   explored item that was not skipped joins the familiar set with a fresh affinity.
   Familiar items are dropped by boredom (more often when the affinity is low) or
   pushed out when the set is full.

``truth/`` files (parquet only):

- ``listeners.parquet``: taste cluster and vector, type preferences, activity,
  repeat propensity, boredom rate, hour profile, signup day (days from start).
- ``items.parquet``: latent vector, quality, day from which it can be played, hour
  profile, age-bucket affinities (playlists).
- ``pools.parquet``: the taste-channel candidate pool of each (cluster, market).
- ``familiar.parquet``: every familiar-set membership: listener, item, hidden
  affinity and the days ``[active_from, active_until)`` it was in the set (day 0 is
  the start of the window; negative: before it; ``active_until`` = 2**31 - 1: still
  familiar at the end).

``listener_idx`` and ``item_idx`` are row numbers of ``truth/listeners.parquet`` and
``truth/items.parquet``. Days are indices from the window start; an item joins a
familiar set the day after its first liked play and leaves the day after boredom.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from training.schema import (
    CONTENT_TYPES,
    TABLE_COLUMNS,
    WorldPaths,
    coerce_table,
    read_world_meta,
    replacing_dir,
    write_world_meta,
)

logger = logging.getLogger(__name__)


MARKETS: tuple[str, ...] = ("US", "BR", "IN", "DE", "JP", "SE")
MARKET_SHARES: tuple[float, ...] = (0.34, 0.19, 0.17, 0.12, 0.10, 0.08)
AGE_BUCKETS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45+")
AGE_SHARES: tuple[float, ...] = (0.26, 0.33, 0.22, 0.19)
PLATFORMS: tuple[str, ...] = ("ios", "android", "web", "desktop")
PLATFORM_SHARES: tuple[float, ...] = (0.38, 0.40, 0.08, 0.14)
MUSIC_GENRES: tuple[str, ...] = ("pop", "rock", "hiphop", "electronic", "latin", "classical")
SHOW_GENRES: tuple[str, ...] = ("news", "comedy", "true_crime", "sports")
GENRES: tuple[str, ...] = MUSIC_GENRES + SHOW_GENRES
TYPE_SHARES: tuple[float, ...] = (0.30, 0.20, 0.30, 0.20)  # aligned with CONTENT_TYPES
SHOW, PLAYLIST = CONTENT_TYPES.index("show"), CONTENT_TYPES.index("playlist")

DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9
STILL_FAMILIAR = np.iinfo(np.int32).max
"""``active_until`` of a familiar membership that lasted past the end of the window."""

TRUTH_FILES = ("listeners", "items", "pools", "familiar")
POPULARITY_CHANNELS = ("popular", "onboarding", "editorial")
PLAY_SOURCES = ("repeat", "taste", *POPULARITY_CHANNELS)
"""Where a play comes from: a repeat of a familiar item, or one of the explore channels."""


@dataclass(frozen=True)
class Behaviour:
    """Coefficients of the hidden choice model.

    They are saved in ``world.json`` so the oracle of a world always uses the model the
    world was generated with, even if these defaults change later.
    """

    latent_dim: int = 12
    taste_clusters: int = 10
    taste_noise: float = 0.45  # listener taste = cluster centre + this much noise
    item_noise: float = 0.6  # item vector = genre centre + this much noise
    match_scale: float = 2.5  # taste match = match_scale * <taste, item vector>
    quality_sd: float = 1.0  # log popularity of items (lognormal popularity)
    market_bonus: float = 2.0  # logit bonus for items of the listener's own market
    global_market: str = "US"
    global_bonus: float = 0.7  # items of the global market travel to other markets
    type_pref_sd: float = 0.7
    age_affinity_sd: float = 0.8  # playlists: affinity per age bucket
    novelty_boost: float = 1.5  # logit boost of a just-released item ...
    novelty_days: float = 10.0  # ... decaying with this time constant
    active_a: float = 1.3  # Beta(active_a, active_b): share of days a listener is active
    active_b: float = 1.1
    plays_lambda: float = 1.4  # mean extra plays on an active day (lognormal across listeners)
    plays_sigma: float = 0.8
    repeat_a: float = 6.0  # Beta(repeat_a, repeat_b): propensity to replay familiar items
    repeat_b: float = 5.0
    familiar_fill: float = 6.0  # below this familiar-set size, repeats are rarer
    familiar_slots: int = 32  # capacity of the familiar set
    initial_familiar: float = 12.0  # mean familiar-set size of established listeners
    pool_per_type: int = 64  # taste-channel candidates per content type
    honeymoon_boost: float = 1.5  # replay boost of a newly familiar item ...
    honeymoon_days: float = 7.0  # ... decaying with this time constant
    affinity_match: float = 0.8  # hidden affinity = affinity_match * match + noise
    affinity_noise: float = 0.8
    show_affinity: float = 0.4  # podcasts are replayed more (new episodes)
    boredom_rate: float = 0.03  # per active day, for a familiar item of affinity 0
    boredom_sd: float = 0.5
    boredom_affinity: float = 0.7  # boredom hazard *= exp(-boredom_affinity * affinity)
    pop_share: float = 0.14  # explore channel shares (taste gets the rest)
    onboarding_share: float = 0.06
    onboarding_new_share: float = 0.54  # extra onboarding share on signup day ...
    editorial_share: float = 0.08
    editorial_new_share: float = 0.10
    onboarding_days: float = 10.0  # ... decaying with this time constant
    completion_match: float = 1.2  # completion logit of an explored item
    completion_quality: float = 0.3
    completion_bias: float = -1.5
    completion_affinity: float = 0.8  # completion logit of a repeat
    completion_repeat_bias: float = 0.2
    completion_noise: float = 1.2
    skip_below: float = 0.15  # completion under this is a skip (a few seconds)
    join_above: float = 0.3  # an explored item joins the familiar set above this completion


@dataclass(frozen=True)
class WorldConfig:
    """What to generate. Catalog size scales with ``listeners`` between min and max items."""

    listeners: int
    days: int
    seed: int
    start: date = date(2026, 1, 1)
    items_per_listener: float = 0.5
    min_items: int = 400
    max_items: int = 80_000
    new_listener_share: float = 0.15  # listeners who sign up during the window
    new_item_share: float = 0.06  # items released during the window
    chunk_size: int = 50_000  # listeners simulated and written together (part of the seed)
    behaviour: Behaviour = field(default_factory=Behaviour)

    @property
    def n_items(self) -> int:
        size = round(self.listeners * self.items_per_listener)
        return int(min(max(size, self.min_items), self.max_items))

    @property
    def start_ns(self) -> int:
        return int(pd.Timestamp(self.start, tz="UTC").value)


def _day_ns(config: WorldConfig, days: np.ndarray) -> np.ndarray:
    """Epoch nanoseconds of times given in days from the start, on whole seconds."""
    return config.start_ns + np.round(np.asarray(days) * 86_400).astype(np.int64) * 10**9


def config_from_meta(meta: dict[str, Any]) -> WorldConfig:
    """Rebuild the :class:`WorldConfig` stored in a ``world.json``."""
    raw = dict(meta["config"])
    raw["start"] = date.fromisoformat(str(raw["start"]))
    raw["behaviour"] = Behaviour(**raw.get("behaviour", {}))
    return WorldConfig(**raw)


# --------------------------------------------------------------------------- hidden state


@dataclass
class _Listeners:
    """Public attributes and hidden state of all listeners (row = listener index)."""

    ids: np.ndarray
    market: np.ndarray
    age: np.ndarray
    platform: np.ndarray
    signup_day: np.ndarray  # days from start (float); negative = before the window
    cluster: np.ndarray
    taste: np.ndarray  # (n, latent_dim)
    type_pref: np.ndarray  # (n, len(CONTENT_TYPES))
    p_active: np.ndarray
    plays_lambda: np.ndarray
    repeat: np.ndarray
    boredom: np.ndarray
    hour_weights: np.ndarray  # (n, 3): morning, day, evening
    hour_shift: np.ndarray

    @cached_property
    def first_day(self) -> np.ndarray:
        """Index of the first day the listener can play (the signup day)."""
        return np.floor(self.signup_day).astype(np.int64)

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(
            {
                "listener_id": self.ids,
                "market": np.asarray(MARKETS)[self.market],
                "age_bucket": np.asarray(AGE_BUCKETS)[self.age],
                "platform": np.asarray(PLATFORMS)[self.platform],
                "signup_day": self.signup_day,
                "cluster": self.cluster,
                "p_active": self.p_active,
                "plays_lambda": self.plays_lambda,
                "repeat_propensity": self.repeat,
                "boredom_rate": self.boredom,
                "hour_w_morning": self.hour_weights[:, 0],
                "hour_w_day": self.hour_weights[:, 1],
                "hour_w_evening": self.hour_weights[:, 2],
                "hour_shift": self.hour_shift,
            }
        )
        prefs = pd.DataFrame(self.type_pref, columns=[f"pref_{t}" for t in CONTENT_TYPES])
        taste = pd.DataFrame(self.taste, columns=[f"taste_{k}" for k in range(self.taste.shape[1])])
        return pd.concat([frame, prefs, taste], axis=1)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> _Listeners:
        taste_cols = [c for c in frame.columns if c.startswith("taste_")]
        return cls(
            ids=frame["listener_id"].to_numpy(dtype=object),
            market=_codes(frame["market"], MARKETS),
            age=_codes(frame["age_bucket"], AGE_BUCKETS),
            platform=_codes(frame["platform"], PLATFORMS),
            signup_day=frame["signup_day"].to_numpy(np.float64),
            cluster=frame["cluster"].to_numpy(np.int64),
            taste=frame[taste_cols].to_numpy(np.float32),
            type_pref=frame[[f"pref_{t}" for t in CONTENT_TYPES]].to_numpy(np.float32),
            p_active=frame["p_active"].to_numpy(np.float32),
            plays_lambda=frame["plays_lambda"].to_numpy(np.float32),
            repeat=frame["repeat_propensity"].to_numpy(np.float32),
            boredom=frame["boredom_rate"].to_numpy(np.float32),
            hour_weights=frame[["hour_w_morning", "hour_w_day", "hour_w_evening"]].to_numpy(
                np.float32
            ),
            hour_shift=frame["hour_shift"].to_numpy(np.float32),
        )


@dataclass
class _Items:
    """Public attributes and hidden state of the catalog (row = item index)."""

    ids: np.ndarray
    ctype: np.ndarray  # index into CONTENT_TYPES
    genre: np.ndarray  # index into GENRES
    market: np.ndarray  # index into MARKETS
    released_day: np.ndarray  # days from start (float)
    editorial: np.ndarray
    duration_ms: np.ndarray
    quality: np.ndarray
    vec: np.ndarray  # (n, latent_dim)
    hour_peak: np.ndarray
    hour_kappa: np.ndarray
    age_aff: np.ndarray  # (n, len(AGE_BUCKETS))

    @cached_property
    def avail_day(self) -> np.ndarray:
        """First day index on which the item can be played (the day after its release)."""
        return (np.floor(self.released_day) + 1).astype(np.int64)

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(
            {
                "item_id": self.ids,
                "content_type": np.asarray(CONTENT_TYPES)[self.ctype],
                "genre": np.asarray(GENRES)[self.genre],
                "market": np.asarray(MARKETS)[self.market],
                "released_day": self.released_day,
                "is_editorial": self.editorial,
                "duration_ms": self.duration_ms,
                "quality": self.quality,
                "hour_peak": self.hour_peak,
                "hour_kappa": self.hour_kappa,
            }
        )
        ages = pd.DataFrame(self.age_aff, columns=[f"age_aff_{a}" for a in AGE_BUCKETS])
        vec = pd.DataFrame(self.vec, columns=[f"vec_{k}" for k in range(self.vec.shape[1])])
        return pd.concat([frame, ages, vec], axis=1)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> _Items:
        vec_cols = [c for c in frame.columns if c.startswith("vec_")]
        return cls(
            ids=frame["item_id"].to_numpy(dtype=object),
            ctype=_codes(frame["content_type"], CONTENT_TYPES),
            genre=_codes(frame["genre"], GENRES),
            market=_codes(frame["market"], MARKETS),
            released_day=frame["released_day"].to_numpy(np.float64),
            editorial=frame["is_editorial"].to_numpy(bool),
            duration_ms=frame["duration_ms"].to_numpy(np.int64),
            quality=frame["quality"].to_numpy(np.float32),
            vec=frame[vec_cols].to_numpy(np.float32),
            hour_peak=frame["hour_peak"].to_numpy(np.float32),
            hour_kappa=frame["hour_kappa"].to_numpy(np.float32),
            age_aff=frame[[f"age_aff_{a}" for a in AGE_BUCKETS]].to_numpy(np.float32),
        )


def _codes(values: pd.Series, categories: tuple[str, ...]) -> np.ndarray:
    codes = pd.Categorical(values.astype(str), categories=list(categories)).codes
    if (codes < 0).any():
        raise ValueError(f"unknown value in {values.name}: expected one of {categories}")
    return codes.astype(np.int64)


def _latent_structure(config: WorldConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genre centres, taste-cluster centres and per-market cluster shares."""
    b = config.behaviour
    rng = np.random.default_rng([config.seed, 0])
    genres = rng.normal(size=(len(GENRES), b.latent_dim))
    genres /= np.linalg.norm(genres, axis=1, keepdims=True)
    mix = rng.dirichlet(np.full(len(GENRES), 0.35), size=b.taste_clusters)
    centres = mix @ genres
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster_shares = rng.dirichlet(np.full(b.taste_clusters, 2.0), size=len(MARKETS))
    return genres.astype(np.float32), centres.astype(np.float32), cluster_shares


def _make_listeners(config: WorldConfig, centres: np.ndarray, shares: np.ndarray) -> _Listeners:
    b = config.behaviour
    n = config.listeners
    rng = np.random.default_rng([config.seed, 1])
    market = rng.choice(len(MARKETS), size=n, p=MARKET_SHARES)
    # cluster drawn per market: taste is partly local, so "popular in market" carries signal
    cum = np.cumsum(shares, axis=1)
    cluster = (cum[market] < rng.random(n)[:, None]).sum(axis=1).clip(max=b.taste_clusters - 1)
    is_new = rng.random(n) < config.new_listener_share
    prior = -(rng.exponential(700.0, size=n) + rng.random(n)).clip(max=3650.0) - 1e-3
    signup_day = np.where(is_new, rng.random(n) * config.days, prior)
    noise = rng.normal(size=(n, b.latent_dim)) * b.taste_noise / math.sqrt(b.latent_dim)
    taste = centres[cluster] + noise
    type_base = np.array([-0.2, 0.2, 0.0, 0.0])
    type_sd = np.array([1.4, 1.0, 1.0, 1.0]) * b.type_pref_sd
    return _Listeners(
        ids=_ids("L", np.arange(1, n + 1), width=max(7, len(str(n)))),
        market=market,
        age=rng.choice(len(AGE_BUCKETS), size=n, p=AGE_SHARES),
        platform=rng.choice(len(PLATFORMS), size=n, p=PLATFORM_SHARES),
        signup_day=np.round(signup_day * 86_400) / 86_400,
        cluster=cluster,
        taste=taste.astype(np.float32),
        type_pref=(type_base + rng.normal(size=(n, len(CONTENT_TYPES))) * type_sd).astype(
            np.float32
        ),
        p_active=rng.beta(b.active_a, b.active_b, size=n).astype(np.float32),
        plays_lambda=(
            b.plays_lambda
            * rng.lognormal(-0.5 * b.plays_sigma**2, b.plays_sigma, size=n).clip(max=12.0)
        ).astype(np.float32),
        repeat=rng.beta(b.repeat_a, b.repeat_b, size=n).astype(np.float32),
        boredom=(b.boredom_rate * rng.lognormal(0.0, b.boredom_sd, size=n)).astype(np.float32),
        hour_weights=rng.dirichlet([2.0, 1.5, 2.5], size=n).astype(np.float32),
        hour_shift=rng.normal(0.0, 1.0, size=n).astype(np.float32),
    )


def _ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    return np.array([f"{prefix}{k:0{width}d}" for k in numbers], dtype=object)


def _make_items(config: WorldConfig, genres: np.ndarray) -> _Items:
    b = config.behaviour
    n = config.n_items
    rng = np.random.default_rng([config.seed, 2])
    counts = np.floor(np.asarray(TYPE_SHARES) * n).astype(int)
    counts[0] += n - counts.sum()
    ctype = np.repeat(np.arange(len(CONTENT_TYPES)), counts)
    numbers = np.concatenate([np.arange(1, c + 1) for c in counts])
    ids = np.array(
        [f"{CONTENT_TYPES[t]}_{k:06d}" for t, k in zip(ctype, numbers, strict=True)], dtype=object
    )
    item_shares = np.asarray(MARKET_SHARES) + np.eye(len(MARKETS))[0] * 0.1
    market = rng.choice(len(MARKETS), size=n, p=item_shares / item_shares.sum())
    # every (type, market) pair gets a few items even in tiny catalogs
    for t in range(len(CONTENT_TYPES)):
        first = np.flatnonzero(ctype == t)[: 2 * len(MARKETS)]
        market[first] = np.arange(len(first)) % len(MARKETS)
    is_show = ctype == SHOW
    music_genre = rng.choice(len(MUSIC_GENRES), size=n, p=[0.3, 0.2, 0.2, 0.13, 0.1, 0.07])
    show_genre = len(MUSIC_GENRES) + rng.choice(len(SHOW_GENRES), size=n, p=[0.3, 0.3, 0.25, 0.15])
    genre = np.where(is_show, show_genre, music_genre)
    vec = genres[genre] + rng.normal(size=(n, b.latent_dim)) * b.item_noise / math.sqrt(
        b.latent_dim
    )
    is_new = rng.random(n) < config.new_item_share
    prior = -(rng.exponential(400.0, size=n) + rng.random(n)).clip(max=3650.0) - 1e-3
    released_day = np.round(np.where(is_new, rng.random(n) * config.days, prior) * 86_400) / 86_400
    recent = released_day > -30
    editorial = rng.random(n) < np.where(recent, 0.25, 0.03)
    minutes = np.select(
        [is_show, ctype == PLAYLIST, ctype == CONTENT_TYPES.index("album")],
        [rng.uniform(20, 60, n), rng.normal(60, 15, n), rng.normal(40, 8, n)],
        rng.normal(30, 8, n),
    ).clip(8, 120)
    morning_show = rng.random(n) < 0.7
    peak = (
        np.where(
            is_show,
            np.where(morning_show, rng.normal(7.5, 1.2, n), rng.normal(19.0, 3.0, n)),
            rng.normal(20.0, 3.0, n),
        )
        % 24
    )
    # shows are strongly tied to their hour; half of the music is, the rest barely
    strong_music = rng.random(n) < 0.5
    kappa = np.select(
        [is_show, strong_music],
        [rng.uniform(0.4, 1.4, n), rng.uniform(0.2, 1.0, n)],
        rng.uniform(0.0, 0.2, n),
    )
    age_aff = rng.normal(0.0, b.age_affinity_sd, size=(n, len(AGE_BUCKETS)))
    age_aff[ctype != PLAYLIST] = 0.0
    return _Items(
        ids=ids,
        ctype=ctype,
        genre=genre,
        market=market,
        released_day=released_day,
        editorial=editorial,
        duration_ms=np.round(minutes * 60_000).astype(np.int64),
        quality=rng.normal(0.0, b.quality_sd, n).astype(np.float32),
        vec=vec.astype(np.float32),
        hour_peak=peak.astype(np.float32),
        hour_kappa=kappa.astype(np.float32),
        age_aff=age_aff.astype(np.float32),
    )


# --------------------------------------------------------------------------- shared model


def _hour_distribution(weights: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Each listener's probability of playing at each local hour, shape (n, 24)."""
    hours = np.arange(24) + 0.5

    def bump(centre: np.ndarray, sd: float) -> np.ndarray:
        delta = (hours[None, :] - centre[:, None] + 12.0) % 24.0 - 12.0
        bumps = np.exp(-0.5 * (delta / sd) ** 2)
        return bumps / bumps.sum(axis=1, keepdims=True)

    shift = shift.astype(np.float64)
    profile = (
        weights[:, [0]] * bump(7.5 + shift, 1.3)
        + weights[:, [1]] * bump(13.5 + shift / 2, 2.5)
        + weights[:, [2]] * bump(20.5 + shift, 2.0)
    )
    profile = 0.97 * profile / profile.sum(axis=1, keepdims=True) + 0.03 / 24
    return profile / profile.sum(axis=1, keepdims=True)


def _hour_affinity(items: _Items) -> np.ndarray:
    """Each item's logit bonus when played at each hour, shape (n_items, 24)."""
    hours = np.arange(24) + 0.5
    angle = 2 * np.pi * (hours[None, :] - items.hour_peak[:, None]) / 24.0
    return (items.hour_kappa[:, None] * np.cos(angle)).astype(np.float32)


def _novelty(
    items: _Items, item_idx: np.ndarray, day: np.ndarray | int, b: Behaviour
) -> np.ndarray:
    """Novelty logit bonus of items on ``day``; ``-inf`` before the item can be played."""
    age = np.asarray(day) - items.avail_day[item_idx]
    boost = b.novelty_boost * np.exp(-np.maximum(age, 0) / b.novelty_days)
    return np.where(age >= 0, boost, -np.inf).astype(np.float32)


def _match(taste: np.ndarray, vec: np.ndarray, b: Behaviour) -> np.ndarray:
    """Taste match of rows of listener taste vectors with rows of item vectors."""
    return b.match_scale * np.einsum("...d,...d->...", taste, vec)


def _side_terms(
    listeners: _Listeners, items: _Items, li: np.ndarray, ij: np.ndarray, b: Behaviour
) -> np.ndarray:
    """The non-taste static part of the taste-channel logit (broadcasts ``li`` with ``ij``)."""
    return (
        items.quality[ij]
        + listeners.type_pref[li, items.ctype[ij]]
        + _market_term(listeners.market[li], items.market[ij], b)
        + items.age_aff[ij, listeners.age[li]]
    ).astype(np.float32)


def _market_term(market: np.ndarray, item_market: np.ndarray, b: Behaviour) -> np.ndarray:
    """Listeners mostly play their own market's items; the global market's travel too."""
    global_item = item_market == MARKETS.index(b.global_market)
    return np.where(
        market == item_market, b.market_bonus, np.where(global_item, b.global_bonus, 0.0)
    )


def _make_pools(config: WorldConfig, items: _Items, centres: np.ndarray) -> np.ndarray:
    """Taste-channel candidates of each (cluster, market): the items its listeners explore.

    Returns ``pools`` (n_clusters * n_markets, M) of item indices (pool id =
    ``cluster * len(MARKETS) + market``) ranked by the cluster centre's utility; listeners
    of one pool share candidates, which is the co-listening structure.
    """
    b = config.behaviour
    rows = []
    for cluster in range(b.taste_clusters):
        base = _match(centres[cluster][None, :], items.vec, b) + items.quality
        for market in range(len(MARKETS)):
            utility = base + _market_term(np.asarray(market), items.market, b)
            picks = []
            for t in range(len(CONTENT_TYPES)):
                of_type = np.flatnonzero(items.ctype == t)
                k = min(b.pool_per_type, len(of_type))
                picks.append(of_type[np.argsort(-utility[of_type], kind="stable")[:k]])
            rows.append(np.concatenate(picks))
    return np.stack(rows).astype(np.int64)


def _pool_id(listeners: _Listeners, li: np.ndarray) -> np.ndarray:
    return listeners.cluster[li] * len(MARKETS) + listeners.market[li]


def _pool_static_logits(
    listeners: _Listeners, items: _Items, pools: np.ndarray, li: np.ndarray, b: Behaviour
) -> np.ndarray:
    """Static taste-channel logits of listeners ``li`` over their pool, shape (len(li), M)."""
    out = np.empty((len(li), pools.shape[1]), dtype=np.float32)
    pid = _pool_id(listeners, li)
    for p in np.unique(pid):
        rows = np.flatnonzero(pid == p)
        pool = pools[p]
        match = b.match_scale * (listeners.taste[li[rows]] @ items.vec[pool].T)
        out[rows] = match + _side_terms(listeners, items, li[rows][:, None], pool[None, :], b)
    return out


def _channel_mix(tenure: np.ndarray, available: np.ndarray, b: Behaviour) -> np.ndarray:
    """Explore channel probabilities (taste, popular, onboarding, editorial), shape (n, 4).

    ``available`` (n, 3) says whether the listener's popular/onboarding/editorial
    channels have any playable item; an empty channel's share goes to taste.
    """
    fresh = np.exp(-np.maximum(tenure, 0.0) / b.onboarding_days)
    others = np.stack(
        [
            np.full_like(fresh, b.pop_share),
            b.onboarding_share + b.onboarding_new_share * fresh,
            b.editorial_share + b.editorial_new_share * fresh,
        ],
        axis=1,
    ) * available.astype(np.float64)
    return np.concatenate([1.0 - others.sum(axis=1, keepdims=True), others], axis=1)


@dataclass
class _Channel:
    """A popularity channel: items grouped (by market, or market and age), drawn by weight."""

    items: np.ndarray  # item index of each entry, sorted by group
    group: np.ndarray
    bounds: np.ndarray  # entries of group g are bounds[g]:bounds[g + 1]
    log_weight: np.ndarray  # static log-weight of each entry


def _build_channels(items: _Items) -> dict[str, _Channel]:
    n_ages = len(AGE_BUCKETS)
    everything = np.arange(len(items.ids))
    playlists = np.flatnonzero(items.ctype == PLAYLIST)
    editorial = np.flatnonzero(items.editorial)
    onb_items = np.repeat(playlists, n_ages)
    onb_age = np.tile(np.arange(n_ages), len(playlists))
    specs = {
        "popular": (everything, items.market, items.quality, len(MARKETS)),
        "onboarding": (
            onb_items,
            items.market[onb_items] * n_ages + onb_age,
            items.quality[onb_items] + items.age_aff[onb_items, onb_age],
            len(MARKETS) * n_ages,
        ),
        "editorial": (editorial, items.market[editorial], items.quality[editorial], len(MARKETS)),
    }
    channels = {}
    for name, (idx, group, logw, n_groups) in specs.items():
        order = np.argsort(group, kind="stable")
        grp = np.asarray(group)[order]
        channels[name] = _Channel(
            items=np.asarray(idx)[order],
            group=grp,
            bounds=np.searchsorted(grp, np.arange(n_groups + 1)),
            log_weight=np.asarray(logw, dtype=np.float64)[order],
        )
    return channels


def _channel_day(channel: _Channel, novelty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative weights (with a leading 0) and per-group totals of a channel on one day.

    ``novelty`` is the day's :func:`_novelty` of every item (``-inf``: not yet playable).
    """
    weight = np.exp(channel.log_weight + novelty[channel.items])
    cum = np.concatenate([[0.0], np.cumsum(weight)])
    totals = cum[channel.bounds[1:]] - cum[channel.bounds[:-1]]
    return cum, totals


def _channel_groups(listeners: _Listeners, li: np.ndarray) -> dict[str, np.ndarray]:
    market = listeners.market[li]
    return {
        "popular": market,
        "onboarding": market * len(AGE_BUCKETS) + listeners.age[li],
        "editorial": market,
    }


def _sample_channel(
    channel: _Channel, cum: np.ndarray, groups: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Draw one item per row from the row's group, proportionally to the day's weights."""
    lo, hi = channel.bounds[groups], channel.bounds[groups + 1]
    target = cum[lo] + u * (cum[hi] - cum[lo])
    pos = np.searchsorted(cum, target, side="right") - 1
    return channel.items[np.clip(pos, lo, np.maximum(hi - 1, lo))]


def _repeat_probability(listeners: _Listeners, li: np.ndarray, size: np.ndarray, b: Behaviour):
    return listeners.repeat[li] * np.minimum(1.0, size / b.familiar_fill)


def _honeymoon(active_from: np.ndarray, day: np.ndarray | int, b: Behaviour) -> np.ndarray:
    age = np.maximum(np.asarray(day) - active_from, 0)
    return (b.honeymoon_boost * np.exp(-age / b.honeymoon_days)).astype(np.float32)


def _boredom_hazard(listeners: _Listeners, li: np.ndarray, affinity: np.ndarray, b: Behaviour):
    return np.minimum(listeners.boredom[li] * np.exp(-b.boredom_affinity * affinity), 0.5)


def _gumbel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard Gumbel noise in float32 (argmax of logits + Gumbel = a softmax draw)."""
    with np.errstate(divide="ignore"):
        return -np.log(-np.log(rng.random(shape, dtype=np.float32)))


def _expected_completion(logit: np.ndarray, b: Behaviour) -> np.ndarray:
    """E[sigmoid(logit + noise)] by the probit approximation."""
    return 1.0 / (1.0 + np.exp(-logit / np.sqrt(1.0 + np.pi * b.completion_noise**2 / 8.0)))


# --------------------------------------------------------------------------- simulation


@dataclass
class _Familiar:
    """Familiar sets of one chunk of listeners as fixed-size slots (-1 = empty)."""

    item: np.ndarray  # (n, slots) int64
    affinity: np.ndarray  # (n, slots) float32
    active_from: np.ndarray  # (n, slots) int64: first day the item was familiar
    records: list[tuple[np.ndarray, ...]] = field(default_factory=list)

    def close(self, rows: np.ndarray, slots: np.ndarray, until: int) -> None:
        """Record the memberships in (rows, slots) as ended before ``until`` and empty them."""
        if len(rows):
            self.records.append(
                (
                    rows,
                    self.item[rows, slots],
                    self.affinity[rows, slots],
                    self.active_from[rows, slots],
                    np.full(len(rows), until, dtype=np.int64),
                )
            )
        self.item[rows, slots] = -1


@dataclass
class _Chunk:
    """What the simulation of one chunk of listeners produced."""

    listener: np.ndarray
    item: np.ndarray
    timestamp_ns: np.ndarray
    ms_played: np.ndarray
    hour: np.ndarray
    familiar: pd.DataFrame


def _affinity(match: np.ndarray, ctype: np.ndarray, rng: np.random.Generator, b: Behaviour):
    noise = rng.normal(0.0, b.affinity_noise, size=np.shape(match))
    return (b.affinity_match * match + b.show_affinity * (ctype == SHOW) + noise).astype(np.float32)


@dataclass
class _ChunkModel:
    """Everything that stays fixed while one chunk of listeners is simulated."""

    config: WorldConfig
    listeners: _Listeners
    items: _Items
    channels: dict[str, _Channel]
    hour_aff: np.ndarray  # (n_items, 24)
    hour_aff_flat: np.ndarray  # hour-major copy: [hour * n_items + item]
    li: np.ndarray  # global listener indices of the chunk
    pool_items: np.ndarray  # (n, M) taste-channel candidates of each listener
    pool_logits: np.ndarray  # (n, M) their static logits
    hour_cdf: np.ndarray  # (n, 24)
    signup_ns: np.ndarray
    groups: dict[str, np.ndarray]  # popularity-channel group of each listener

    @classmethod
    def build(
        cls,
        config: WorldConfig,
        listeners: _Listeners,
        items: _Items,
        pools: np.ndarray,
        channels: dict[str, _Channel],
        hour_aff: np.ndarray,
        li: np.ndarray,
    ) -> _ChunkModel:
        hours = _hour_distribution(listeners.hour_weights[li], listeners.hour_shift[li])
        hour_cdf = np.cumsum(hours, axis=1)
        hour_cdf[:, -1] = 1.0
        return cls(
            config=config,
            listeners=listeners,
            items=items,
            channels=channels,
            hour_aff=hour_aff,
            hour_aff_flat=np.ascontiguousarray(hour_aff.T).ravel(),
            li=li,
            pool_items=pools[_pool_id(listeners, li)],
            pool_logits=_pool_static_logits(listeners, items, pools, li, config.behaviour),
            hour_cdf=hour_cdf,
            signup_ns=_day_ns(config, listeners.signup_day[li]),
            groups=_channel_groups(listeners, li),
        )


def _simulate_chunk(model: _ChunkModel, chunk: int, progress: tqdm) -> _Chunk:
    """Simulate one chunk of listeners day by day, vectorized over listeners and plays."""
    config = model.config
    state = _initial_familiar(model, np.random.default_rng([config.seed, 3, chunk]))
    out: list[tuple[np.ndarray, ...]] = []
    for day in range(config.days):
        out.append(
            _simulate_day(model, state, day, np.random.default_rng([config.seed, 4, chunk, day]))
        )
        progress.update(1)
    rows, slots = np.nonzero(state.item >= 0)
    state.close(rows, slots, STILL_FAMILIAR)
    local, item, ts, ms, hour = (np.concatenate(col) for col in zip(*out, strict=True))
    order = np.argsort(ts, kind="stable")
    return _Chunk(
        listener=model.li[local[order]],
        item=item[order],
        timestamp_ns=ts[order],
        ms_played=ms[order],
        hour=hour[order],
        familiar=_familiar_frame(model.li, state.records),
    )


def _initial_familiar(model: _ChunkModel, rng: np.random.Generator) -> _Familiar:
    """Established listeners start with familiar items drawn from their taste pool."""
    b = model.config.behaviour
    listeners, items, li = model.listeners, model.items, model.li
    n, slots = len(li), b.familiar_slots
    state = _Familiar(
        item=np.full((n, slots), -1, dtype=np.int64),
        affinity=np.zeros((n, slots), dtype=np.float32),
        active_from=np.zeros((n, slots), dtype=np.int64),
    )
    half = min(slots // 2, model.pool_items.shape[1])
    keys = (
        model.pool_logits
        + _novelty(items, model.pool_items, 0, b)
        + _gumbel(rng, model.pool_logits.shape)
    )
    top = np.argpartition(-keys, half - 1, axis=1)[:, :half]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), 1), axis=1)
    chosen = np.take_along_axis(model.pool_items, top, axis=1)
    size = rng.poisson(b.initial_familiar, size=n).clip(2, half)
    keep = (np.arange(half)[None, :] < size[:, None]) & (listeners.signup_day[li] < 0)[:, None]
    keep &= np.isfinite(np.take_along_axis(keys, top, axis=1))
    match = _match(listeners.taste[li][:, None, :], items.vec[chosen], b)
    state.item[:, :half] = np.where(keep, chosen, -1)
    state.affinity[:, :half] = _affinity(match, items.ctype[chosen], rng, b)
    state.active_from[:, :half] = -rng.integers(1, 366, size=(n, half))
    return state


def _familiar_frame(li: np.ndarray, records: list[tuple[np.ndarray, ...]]) -> pd.DataFrame:
    if records:
        cols = [np.concatenate(col) for col in zip(*records, strict=True)]
    else:
        cols = [np.array([], dtype=np.int64)] * 5
    frame = pd.DataFrame(
        {
            "listener_idx": li[cols[0]].astype(np.int64),
            "item_idx": cols[1].astype(np.int64),
            "affinity": cols[2].astype(np.float32),
            "active_from": cols[3].astype(np.int32),
            "active_until": cols[4].clip(max=STILL_FAMILIAR).astype(np.int32),
        }
    )
    return frame.sort_values(["listener_idx", "active_from", "item_idx"], kind="stable")


def _simulate_day(
    model: _ChunkModel, state: _Familiar, day: int, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """One day of plays of one chunk; returns (row, item, timestamp, ms_played, hour).

    Every play of the day is drawn from the familiar sets at the start of the day;
    boredom and new familiar items take effect from the next day.
    """
    b = model.config.behaviour
    items = model.items
    row, hour, ts = _draw_plays(model, day, rng)
    size = (state.item >= 0).sum(axis=1)
    is_repeat = rng.random(len(row)) < _repeat_probability(
        model.listeners, model.li[row], size[row], b
    )
    item = np.full(len(row), -1, dtype=np.int64)
    logit = np.zeros(len(row), dtype=np.float64)  # completion logit before noise

    rep = np.flatnonzero(is_repeat)
    item[rep], rep_affinity = _choose_repeats(model, state, row[rep], hour[rep], day, rng)
    logit[rep] = b.completion_affinity * rep_affinity + b.completion_repeat_bias

    explore = np.flatnonzero(~is_repeat)
    item[explore] = _choose_explored(model, row[explore], hour[explore], day, rng)
    explore = explore[item[explore] >= 0]
    explore = explore[items.avail_day[item[explore]] <= day]  # never before release
    match = _match(model.listeners.taste[model.li[row[explore]]], items.vec[item[explore]], b)
    logit[explore] = (
        b.completion_match * match + b.completion_quality * items.quality[item[explore]]
    ) + b.completion_bias

    keep = np.zeros(len(row), dtype=bool)
    keep[rep] = item[rep] >= 0
    keep[explore] = True
    completion = 1.0 / (1.0 + np.exp(-(logit + rng.normal(0, b.completion_noise, len(row)))))
    ms = _ms_played(items.duration_ms[np.maximum(item, 0)], completion, rng, b)

    _bore(model, state, np.unique(row), day, rng)
    liked = completion[explore] >= b.join_above
    joins = explore[liked]
    affinity = _affinity(match[liked], items.ctype[item[joins]], rng, b)
    _join(state, row[joins], item[joins], affinity, day, b)
    return row[keep], item[keep], ts[keep], ms[keep], hour[keep].astype(np.int8)


def _draw_plays(
    model: _ChunkModel, day: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Who plays today, how often and when: (chunk row, hour, timestamp ns) per play."""
    listeners, li = model.listeners, model.li
    signed_up = listeners.first_day[li] <= day
    active = np.flatnonzero(signed_up & (rng.random(len(li)) < listeners.p_active[li]))
    row = np.repeat(active, 1 + rng.poisson(listeners.plays_lambda[li[active]]))
    hour = (model.hour_cdf[row] <= rng.random(len(row))[:, None]).sum(axis=1)
    ts = model.config.start_ns + day * DAY_NS + hour * HOUR_NS
    ts = ts + rng.integers(0, HOUR_NS, len(row))
    after_signup = ts >= model.signup_ns[row]
    return row[after_signup], hour[after_signup], ts[after_signup]


def _choose_repeats(
    model: _ChunkModel,
    state: _Familiar,
    row: np.ndarray,
    hour: np.ndarray,
    day: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Familiar item of each repeat play: softmax of affinity + honeymoon + hour match."""
    slot_items = state.item[row]
    scores = (
        state.affinity[row]
        + _honeymoon(state.active_from[row], day, model.config.behaviour)
        + model.hour_aff[slot_items, hour[:, None]]
    )
    scores = np.where(slot_items >= 0, scores, -np.inf) + _gumbel(rng, scores.shape)
    pick = scores.argmax(axis=1)
    return slot_items[np.arange(len(row)), pick], state.affinity[row, pick]


def _choose_explored(
    model: _ChunkModel, row: np.ndarray, hour: np.ndarray, day: int, rng: np.random.Generator
) -> np.ndarray:
    """Item of each exploring play: pick a channel, then an item within it (-1: none)."""
    b = model.config.behaviour
    items = model.items
    novelty = _novelty(items, np.arange(len(items.ids)), day, b)
    tables = {name: _channel_day(ch, novelty) for name, ch in model.channels.items()}
    available = np.stack(
        [tables[name][1][model.groups[name][row]] > 0 for name in POPULARITY_CHANNELS], axis=1
    )
    tenure = day + 0.5 - model.listeners.signup_day[model.li[row]]
    mix = np.cumsum(_channel_mix(tenure, available, b), axis=1)
    channel = (mix[:, :-1] <= rng.random(len(row))[:, None]).sum(axis=1)
    item = np.full(len(row), -1, dtype=np.int64)

    taste = np.flatnonzero(channel == 0)
    candidates = model.pool_items[row[taste]]
    scores = (
        model.pool_logits[row[taste]]
        + novelty[candidates]
        + model.hour_aff_flat[hour[taste][:, None] * len(items.ids) + candidates]
        + _gumbel(rng, candidates.shape)
    )
    pick = scores.argmax(axis=1)
    found = np.isfinite(scores[np.arange(len(taste)), pick])
    item[taste] = np.where(found, candidates[np.arange(len(taste)), pick], -1)

    for k, name in enumerate(POPULARITY_CHANNELS, start=1):
        chosen = np.flatnonzero(channel == k)
        groups = model.groups[name][row[chosen]]
        item[chosen] = _sample_channel(
            model.channels[name], tables[name][0], groups, rng.random(len(chosen))
        )
    return item


def _ms_played(
    duration: np.ndarray, completion: np.ndarray, rng: np.random.Generator, b: Behaviour
) -> np.ndarray:
    """Milliseconds played: a few seconds for a skip, else the completed share (<= 105%)."""
    full = np.minimum(
        completion * duration * rng.uniform(0.97, 1.05, len(duration)), 1.05 * duration
    )
    skip = rng.integers(3_000, 30_000, len(duration))
    return np.where(completion < b.skip_below, skip, full).astype(np.int64)


def _bore(
    model: _ChunkModel, state: _Familiar, rows: np.ndarray, day: int, rng: np.random.Generator
) -> None:
    """Today's active listeners drop familiar items they got bored of (low affinity: sooner)."""
    b = model.config.behaviour
    hazard = _boredom_hazard(model.listeners, model.li[rows][:, None], state.affinity[rows], b)
    bored = (state.item[rows] >= 0) & (rng.random(hazard.shape) < hazard)
    r, s = np.nonzero(bored)
    state.close(rows[r], s, day + 1)


def _join(
    state: _Familiar,
    rows: np.ndarray,
    item: np.ndarray,
    affinity: np.ndarray,
    day: int,
    b: Behaviour,
) -> None:
    """Add newly liked items to familiar sets: into empty slots first, else evict the weakest."""
    n_items_key = int(max(item.max(initial=0), state.item.max(initial=0))) + 1
    _, first = np.unique(rows * n_items_key + item, return_index=True)
    first = np.sort(first)
    rows, item, affinity = rows[first], item[first], affinity[first]
    fresh = ~(state.item[rows] == item[:, None]).any(axis=1)
    rows, item, affinity = rows[fresh], item[fresh], affinity[fresh]
    if not len(rows):
        return
    order = np.argsort(rows, kind="stable")
    rows, item, affinity = rows[order], item[order], affinity[order]
    listeners_, start, inverse = np.unique(rows, return_index=True, return_inverse=True)
    rank = np.arange(len(rows)) - start[inverse]
    slots = state.item.shape[1]
    value = state.affinity[listeners_] + _honeymoon(state.active_from[listeners_], day + 1, b)
    value = np.where(state.item[listeners_] >= 0, value, -np.inf)
    slot_order = np.argsort(value, axis=1, kind="stable")
    fits = rank < slots
    rows, item, affinity, inverse, rank = (a[fits] for a in (rows, item, affinity, inverse, rank))
    slot = slot_order[inverse, rank]
    evict = state.item[rows, slot] >= 0
    state.close(rows[evict], slot[evict], day + 1)
    state.item[rows, slot] = item
    state.affinity[rows, slot] = affinity
    state.active_from[rows, slot] = day + 1


# --------------------------------------------------------------------------- writing


def generate_world(config: WorldConfig, out_dir: Path) -> dict[str, Any]:
    """Generate a world into ``out_dir`` and return the metadata written to ``world.json``.

    Everything is written into a staging directory beside ``out_dir`` that replaces it
    only once complete: a crash leaves the previous world (or none) in place.
    """
    _validate(config)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    with replacing_dir(out_dir) as staged:
        meta = _generate_into(config, WorldPaths(staged))
    logger.info(
        "generated world at %s: %d listeners, %d items, %d events in %.1fs",
        out_dir,
        config.listeners,
        meta["counts"]["items"],
        meta["counts"]["events"],
        time.perf_counter() - started,
    )
    return meta


def _validate(config: WorldConfig) -> None:
    if config.listeners < 1 or config.days < 1 or config.chunk_size < 1:
        raise ValueError("listeners, days and chunk_size must be positive")
    if not 0.0 <= config.new_listener_share <= 1.0 or not 0.0 <= config.new_item_share <= 1.0:
        raise ValueError("new_listener_share and new_item_share must be in [0, 1]")


def _generate_into(config: WorldConfig, paths: WorldPaths) -> dict[str, Any]:
    genres, centres, shares = _latent_structure(config)
    listeners = _make_listeners(config, centres, shares)
    items = _make_items(config, genres)
    pools = _make_pools(config, items, centres)
    logger.info("world: %d listeners, %d items", config.listeners, len(items.ids))
    paths.truth.mkdir(parents=True, exist_ok=True)
    _write_frame(coerce_table(_public_listeners(listeners, config), "listeners"), paths.listeners)
    _write_frame(coerce_table(_public_items(items, config), "items"), paths.items)
    _write_frame(listeners.to_frame(), paths.truth / "listeners.parquet")
    _write_frame(items.to_frame(), paths.truth / "items.parquet")
    _write_frame(_pools_frame(pools, items), paths.truth / "pools.parquet")
    n_events, n_familiar = _write_simulation(config, listeners, items, pools, paths)
    meta = _world_meta(config, listeners, items, n_events, n_familiar)
    write_world_meta(paths, meta)
    return meta


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False)


def _public_listeners(listeners: _Listeners, config: WorldConfig) -> pd.DataFrame:
    signup_ns = _day_ns(config, listeners.signup_day)
    return pd.DataFrame(
        {
            "listener_id": listeners.ids,
            "market": np.asarray(MARKETS)[listeners.market],
            "age_bucket": np.asarray(AGE_BUCKETS)[listeners.age],
            "platform": np.asarray(PLATFORMS)[listeners.platform],
            "signup_at": pd.to_datetime(signup_ns, utc=True),
        }
    )


def _public_items(items: _Items, config: WorldConfig) -> pd.DataFrame:
    released_ns = _day_ns(config, items.released_day)
    return pd.DataFrame(
        {
            "item_id": items.ids,
            "content_type": np.asarray(CONTENT_TYPES)[items.ctype],
            "genre": np.asarray(GENRES)[items.genre],
            "market": np.asarray(MARKETS)[items.market],
            "released_at": pd.to_datetime(released_ns, utc=True),
            "is_editorial": items.editorial,
            "duration_ms": items.duration_ms,
        }
    )


def _pools_frame(pools: np.ndarray, items: _Items) -> pd.DataFrame:
    pool_id = np.repeat(np.arange(pools.shape[0]), pools.shape[1])
    return pd.DataFrame(
        {
            "cluster": pool_id // len(MARKETS),
            "market": np.asarray(MARKETS)[pool_id % len(MARKETS)],
            "rank": np.tile(np.arange(pools.shape[1]), pools.shape[0]),
            "item_idx": pools.ravel(),
            "item_id": items.ids[pools.ravel()],
        }
    )


def _events_frame(chunk: _Chunk, listeners: _Listeners, items: _Items) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "listener_id": listeners.ids[chunk.listener],
            "item_id": items.ids[chunk.item],
            "timestamp": pd.to_datetime(chunk.timestamp_ns, utc=True),
            "ms_played": chunk.ms_played,
            "content_type": np.asarray(CONTENT_TYPES, dtype=object)[items.ctype[chunk.item]],
            "hour": chunk.hour,
        }
    )
    return coerce_table(frame, "events")


def _empty_schema(name: str) -> pa.Schema:
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in TABLE_COLUMNS[name].items()})
    return pa.Schema.from_pandas(coerce_table(empty, name), preserve_index=False)


def _chunks(config: WorldConfig) -> Iterator[tuple[int, np.ndarray]]:
    for chunk, lo in enumerate(range(0, config.listeners, config.chunk_size)):
        yield chunk, np.arange(lo, min(lo + config.chunk_size, config.listeners))


def _write_simulation(
    config: WorldConfig, listeners: _Listeners, items: _Items, pools: np.ndarray, paths: WorldPaths
) -> tuple[int, int]:
    """Simulate chunk by chunk; each chunk's events and memberships are written as they finish."""
    channels = _build_channels(items)
    hour_aff = _hour_affinity(items)
    n_chunks = math.ceil(config.listeners / config.chunk_size)
    events_schema = _empty_schema("events")
    familiar_schema = pa.Schema.from_pandas(_familiar_frame(np.arange(0), []), preserve_index=False)
    n_events = n_familiar = 0
    with (
        pq.ParquetWriter(paths.events, events_schema) as events_writer,
        pq.ParquetWriter(paths.truth / "familiar.parquet", familiar_schema) as familiar_writer,
        tqdm(total=n_chunks * config.days, desc="world", unit="day", disable=None) as progress,
    ):
        for chunk, li in _chunks(config):
            model = _ChunkModel.build(config, listeners, items, pools, channels, hour_aff, li)
            result = _simulate_chunk(model, chunk, progress)
            events = _events_frame(result, listeners, items)
            events_writer.write_table(
                pa.Table.from_pandas(events, schema=events_schema, preserve_index=False)
            )
            familiar_writer.write_table(
                pa.Table.from_pandas(result.familiar, schema=familiar_schema, preserve_index=False)
            )
            n_events += len(events)
            n_familiar += len(result.familiar)
            logger.info("world chunk %d/%d: %d events", chunk + 1, n_chunks, len(events))
    return n_events, n_familiar


def _world_meta(
    config: WorldConfig, listeners: _Listeners, items: _Items, n_events: int, n_familiar: int
) -> dict[str, Any]:
    start = pd.Timestamp(config.start, tz="UTC")
    settings = asdict(config)
    settings["start"] = config.start.isoformat()
    by_type = np.bincount(items.ctype, minlength=len(CONTENT_TYPES))
    return {
        "source": "synthetic",
        "generator": __name__,
        "seed": config.seed,
        "listeners": config.listeners,
        "days": config.days,
        "start": start.isoformat(),
        "end": (start + pd.Timedelta(days=config.days)).isoformat(),
        "counts": {
            "listeners": config.listeners,
            "new_listeners": int((listeners.signup_day >= 0).sum()),
            "items": len(items.ids),
            "items_by_type": {t: int(c) for t, c in zip(CONTENT_TYPES, by_type, strict=True)},
            "items_released_in_window": int((items.released_day >= 0).sum()),
            "events": n_events,
            "familiar_memberships": n_familiar,
        },
        "truth": [f"truth/{name}.parquet" for name in TRUTH_FILES],
        "config": settings,
    }


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
