"""Sample traffic: the Home pages of a seeded sample of listeners, served by the app in
process with every request's features logged.

``make demo`` ends with it so that ``homerec drift`` has served rows to compare with each
production model's training profile straight away; in production the log comes from
``homerec serve`` and its real traffic instead.
"""

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd
from fastapi.testclient import TestClient
from tqdm.auto import tqdm

from serving.app import create_app
from training.core.layout import WorldPaths
from training.core.settings import Settings


class SampleTrafficError(RuntimeError):
    """The app could not serve the sample (not ready, or a request failed)."""


@dataclass
class TrafficSummary:
    """What the sample traffic did: pages served and shelves answered by their heuristic."""

    pages: int
    degraded_shelves: Counter[str] = field(default_factory=Counter)


def sample_listeners(settings: Settings, requests: int, seed: int = 0) -> list[str]:
    """A seeded uniform sample of ``requests`` listeners of the world (all when fewer)."""
    listeners = pd.read_parquet(WorldPaths(settings.world_dir).listeners, columns=["listener_id"])
    count = min(requests, len(listeners))
    return listeners["listener_id"].astype(str).sample(count, random_state=seed).tolist()


def serve_sample(settings: Settings, requests: int, seed: int = 0) -> TrafficSummary:
    """Serve the Home page of ``requests`` sampled listeners, logging every request's
    features to the served-feature log (flushed when the app shuts down)."""
    logged = settings.model_copy(
        update={"feature_log_sample_rate": 1.0, "serve_refresh_seconds": 0.0}
    )
    summary = TrafficSummary(pages=0)
    with TestClient(create_app(logged)) as client:
        ready = client.get("/ready")
        if ready.status_code != 200:
            raise SampleTrafficError(f"the app is not ready: {ready.text}")
        for listener_id in tqdm(
            sample_listeners(settings, requests, seed), desc="sample traffic", unit="page"
        ):
            response = client.get(f"/v1/home/{listener_id}")
            if response.status_code != 200:
                raise SampleTrafficError(
                    f"/v1/home/{listener_id} answered {response.status_code}: {response.text}"
                )
            summary.pages += 1
            for shelf in response.json()["shelves"]:
                if shelf.get("degraded"):
                    summary.degraded_shelves[shelf["shelf"]] += 1
    return summary
