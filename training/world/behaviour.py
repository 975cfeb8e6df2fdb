"""The synthetic world's hidden model: listeners, a catalog and the choice model behind a play.

The generator simulates listeners day by day. Every play is drawn from a hidden choice
model, and that model is written to ``truth/`` so that :func:`oracle_scores` can
compute the expected engagement of any (listener, item) pair: the best any ranking
could do. Nothing in ``truth/`` ever becomes a feature; downstream code reads only
the public tables of the world contract (:mod:`training.core.layout`).

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
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from training.core.constants import CONTENT_TYPES

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


def _expected_completion(logit: np.ndarray | float, b: Behaviour) -> np.ndarray:
    """E[sigmoid(logit + noise)] by the probit approximation."""
    return 1.0 / (1.0 + np.exp(-logit / np.sqrt(1.0 + np.pi * b.completion_noise**2 / 8.0)))
