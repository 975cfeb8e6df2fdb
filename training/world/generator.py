"""Generate a synthetic world: simulate listeners day by day under the hidden choice model of
:mod:`training.world.behaviour` and write the public tables and ``truth/``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from training.core.atomic_io import replacing_dir
from training.core.constants import CONTENT_TYPES
from training.core.layout import (
    TABLE_COLUMNS,
    WorldPaths,
    coerce_table,
    write_world_meta,
)
from training.world.behaviour import (
    AGE_BUCKETS,
    DAY_NS,
    GENRES,
    HOUR_NS,
    MARKETS,
    PLATFORMS,
    POPULARITY_CHANNELS,
    SHOW,
    STILL_FAMILIAR,
    TRUTH_FILES,
    Behaviour,
    WorldConfig,
    _boredom_hazard,
    _build_channels,
    _Channel,
    _channel_day,
    _channel_groups,
    _channel_mix,
    _day_ns,
    _gumbel,
    _honeymoon,
    _hour_affinity,
    _hour_distribution,
    _Items,
    _latent_structure,
    _Listeners,
    _make_items,
    _make_listeners,
    _make_pools,
    _match,
    _novelty,
    _pool_id,
    _pool_static_logits,
    _repeat_probability,
    _sample_channel,
)

logger = logging.getLogger(__name__)


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
            logger.debug("world chunk %d/%d: %d events", chunk + 1, n_chunks, len(events))
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
