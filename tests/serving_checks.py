"""What the serving tests share: the app under a real uvicorn, the fast reader's parity
with ``get_online_features``, and listeners of each kind in a trained world."""

import threading
import time
from dataclasses import dataclass

import httpx
import pandas as pd
import uvicorn

from serving.app import create_app
from serving.online_features import EntitySnapshot, FastOnlineReader
from tests.conftest import free_port
from training.candidates import LISTENER_FEATURES
from training.core.layout import WorldPaths
from training.core.settings import Settings
from training.core.shelves import load_shelves
from training.features.store import OnlineReader, open_store

NEW_LISTENER_DAYS = 30  # try_something_else's audience (shelves.yaml)


class LiveServer:
    """``create_app(settings)`` under uvicorn in a thread, on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the app on {self.url} did not become ready")

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@dataclass(frozen=True)
class ListenerKinds:
    established: str  # older than NEW_LISTENER_DAYS, with the most familiar items
    new: str  # in try_something_else's audience


def listener_kinds(settings: Settings) -> ListenerKinds:
    listeners = pd.read_parquet(WorldPaths(settings.world_dir).listeners, columns=["listener_id"])
    online = OnlineReader(open_store(settings)).read(LISTENER_FEATURES, listeners)
    profiles = pd.DataFrame(
        {
            "listener_id": listeners["listener_id"].astype(str),
            "age": online["account_age_days"].astype(float),
            "familiar": online["familiar_items"].map(lambda v: 0 if v is None else len(v)),
        }
    )
    old = profiles[profiles["age"] > NEW_LISTENER_DAYS].sort_values("familiar", ascending=False)
    new = profiles[profiles["age"] <= NEW_LISTENER_DAYS]
    assert len(old) and len(new), "the trained world lacks established or new listeners"
    return ListenerKinds(str(old["listener_id"].iloc[0]), str(new["listener_id"].iloc[0]))


def assert_fast_reads_equal_feast(settings: Settings) -> None:
    """For every shelf's FeatureService and the stage-1 listener features, over rows that
    mix familiar pairs, never-played pairs, an unknown item and an unknown listener: the
    fast reader (snapshot + batched ``online_read`` + on-demand transform) returns the
    values ``get_online_features`` returns, column for column."""
    store = open_store(settings)
    kinds = listener_kinds(settings)
    feast = OnlineReader(store)
    fast = FastOnlineReader(store, EntitySnapshot.load(store))
    listeners = pd.DataFrame({"listener_id": [kinds.established, kinds.new, "L9999999"]})
    familiar = feast.read(["listener_familiar:familiar_items"], listeners.iloc[:1])
    familiar_items = list(familiar["familiar_items"].iloc[0])
    catalog = pd.read_parquet(WorldPaths(settings.world_dir).items, columns=["item_id"])
    others = [item for item in catalog["item_id"].astype(str) if item not in familiar_items]
    items = familiar_items + others[:40] + ["item_not_in_catalog"]
    rows = pd.DataFrame(
        {
            "listener_id": [kinds.established] * len(items) + [kinds.new] * 5 + ["L9999999"] * 5,
            "item_id": items + others[:5] + others[:5],
        }
    )
    pd.testing.assert_frame_equal(
        fast.read(LISTENER_FEATURES, listeners), feast.read(LISTENER_FEATURES, listeners)
    )
    services = [
        store.get_feature_service(shelf.feature_service)
        for shelf in load_shelves(settings.shelves_file)
    ]
    for _ in range(2):  # the second round reads through the reader's cached plans
        for service in services:
            pd.testing.assert_frame_equal(fast.read(service, rows), feast.read(service, rows))
    # A Home page's reader: the listener and every pair read once (prefetched in one
    # round trip), on-demand features computed once per pair, then served from the page.
    page = fast.page()
    entities = {key: rows[key].tolist() for key in rows.columns}
    page.prefetch(services, entities)
    for service in services:
        for part in (rows, rows.iloc[::3]):  # all rows, and some of them again
            columns = page.columns(service, {key: part[key].tolist() for key in part.columns})
            pd.testing.assert_frame_equal(  # numbers as float64, whatever Feast's dtype
                pd.DataFrame(columns, index=part.index),
                feast.read(service, part),
                check_dtype=False,
            )
