"""The main job, step by step: world -> features -> Feast apply/materialize -> online sample."""

import logging
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from training.core.errors import UserError
from training.core.layout import WorldPaths
from training.core.settings import Settings
from training.features.store import apply_definitions, materialize, open_store
from training.features.tables import build_features

logger = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class StepTimer:
    """Wall time of each named step, in the order they ran, and the process's peak
    memory when each ended (it only grows: the step that raised it is the one to look at;
    child processes, such as the gate's fresh-process check, are not counted)."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, step, *args, **kwargs):
        logger.debug("step %s ...", name)
        started = time.perf_counter()
        result = step(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - started
        self.peak_rss_mb[name] = peak_rss_mb()
        logger.info("step %s done in %.1f s", name, self.seconds[name])
        return result


def prepare_features(settings: Settings, timer: StepTimer | None = None) -> dict[str, int]:
    """Build the snapshot tables from the world, apply feature_repo/ and materialize the
    whole world window (the tables were just rebuilt, so nothing earlier can be kept)."""
    timer = timer or StepTimer()
    rows = timer.run("features build", build_features, settings.world_dir, settings.features_dir)
    timer.run("feast apply", apply_definitions, settings)
    timer.run("feast materialize", materialize, settings, incremental=False)
    return rows


class UnknownListenerError(UserError, LookupError):
    """A listener id that is not in the world."""


def check_listener(world: WorldPaths, listener_id: str) -> None:
    """UnknownListenerError unless ``listener_id`` is a listener of the world."""
    listeners = pd.read_parquet(world.listeners, columns=["listener_id"])["listener_id"]
    if not listeners.eq(listener_id).any():
        raise UnknownListenerError(
            f"unknown listener {listener_id!r}: not one of the {len(listeners)} listeners in "
            f"{world.listeners} (e.g. {listeners.iloc[0]!r}; omit --listener for the most active)"
        )


def online_sample(
    settings: Settings, listener_id: str | None = None, items: int = 3
) -> dict[str, Any]:
    """Online features of one listener (default: the most active) and of a few of their
    familiar items, read back through ``get_online_features`` — proof the store serves."""
    store = open_store(settings)
    world = WorldPaths(settings.world_dir)
    if listener_id is None:
        events = pd.read_parquet(world.events, columns=["listener_id"])
        listener_id = str(events["listener_id"].value_counts().index[0])
    else:
        check_listener(world, listener_id)
    listener = store.get_online_features(
        features=[
            "listener_profile:market",
            "listener_profile:plays_28d_show",
            "listener_profile:plays_28d_playlist",
            "listener_profile:days_since_last_play",
            "listener_profile:top_genres_28d",
            "listener_familiar:familiar_items",
        ],
        entity_rows=[{"listener_id": listener_id}],
    ).to_dict()
    familiar = (listener["familiar_items"][0] or [])[:items]
    item_rows = store.get_online_features(
        features=["item_stats:content_type", "item_stats:genre", "item_stats:item_listeners_7d"],
        entity_rows=[{"item_id": item_id} for item_id in familiar],
    ).to_dict()
    return {"listener": listener, "items": item_rows}


def describe_sample(sample: Mapping[str, Any]) -> str:
    """:func:`online_sample` in two lines: the listener's features and their items'."""
    listener = {name: values[0] for name, values in sample["listener"].items()}
    items = sample["items"]
    cards = ", ".join(
        f"{item_id} ({kind}, {genre}, {reach} listeners in 7 days)"
        for item_id, kind, genre, reach in zip(
            items["item_id"],
            items["content_type"],
            items["genre"],
            items["item_listeners_7d"],
            strict=True,
        )
    )
    genres = ", ".join(listener["top_genres_28d"] or []) or "-"
    return (
        f"listener {listener['listener_id']} ({listener['market']}): "
        f"{listener['plays_28d_show']} show and {listener['plays_28d_playlist']} playlist plays "
        f"in 28 days, last play {listener['days_since_last_play']} days ago, top genres {genres}; "
        f"{len(listener['familiar_items'] or [])} familiar items\n"
        f"  first familiar items: {cards or '-'}"
    )
