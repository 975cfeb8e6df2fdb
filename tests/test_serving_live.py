"""The Home ranker under a real uvicorn on loopback, on a real redis-server online store:
pages for established, new and unknown listeners; redis killed mid-test gives degraded
answers and the service recovers when it returns; admin reload (auth, and under
concurrent requests with no failed request); served features logged and read back equal
to the Feast values; the fast reader equal to ``get_online_features`` on Redis."""

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import RedisServer, TrainedWorld, candidate_dir, project_settings, running_redis
from tests.serving_checks import LiveServer, assert_fast_reads_equal_feast, listener_kinds
from training.core.settings import Settings
from training.features.served_log import read_feature_log
from training.features.store import OnlineReader, apply_definitions, materialize, open_store
from training.models.rankers import load_ranker
from training.models.registry import ModelRegistry

pytestmark = pytest.mark.redis

TOKEN = "test-admin-token"


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this module only: the tests kill and restart it."""
    with running_redis(tmp_path_factory, "own-redis") as server:
        yield server


@pytest.fixture(scope="module")
def redis_settings(
    trained_world: TrainedWorld, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """A copy of the trained world, applied and materialized into the real redis-server."""
    data_dir = tmp_path_factory.mktemp("live") / "data"
    shutil.copytree(  # without feast/: a registry of its own (see apply_definitions)
        trained_world.settings.data_dir,
        data_dir,
        ignore=shutil.ignore_patterns("feast", "served_features"),
    )
    settings = project_settings(
        data_dir,
        online_store="redis",
        redis_connection=own_redis.connection_string,
        serve_admin_token=TOKEN,
        serve_refresh_seconds=0,
        feature_log_sample_rate=1.0,
        feature_log_batch_rows=50,
    )
    apply_definitions(settings)
    materialize(settings, incremental=False)
    return settings


@pytest.fixture(scope="module")
def live(redis_settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(redis_settings) as server:
        yield server


def _page(live: LiveServer, listener_id: str) -> dict:
    response = httpx.get(f"{live.url}/v1/home/{listener_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_fast_reads_equal_get_online_features_on_redis(redis_settings: Settings) -> None:
    assert_fast_reads_equal_feast(redis_settings)


def test_pages_for_established_new_and_unknown_listeners(
    live: LiveServer, redis_settings: Settings
) -> None:
    kinds = listener_kinds(redis_settings)
    established = _page(live, kinds.established)
    assert established["cold_start"] is False
    assert all(not shelf["degraded"] for shelf in established["shelves"])
    assert established["shelves"][0]["shelf"] == "shortcuts" and established["shelves"][0]["cards"]
    new = _page(live, kinds.new)
    assert "try_something_else" in [shelf["shelf"] for shelf in new["shelves"]]
    unknown = _page(live, "L9999999")
    assert unknown["cold_start"] is True
    assert any(shelf["cards"] for shelf in unknown["shelves"])


def test_redis_killed_degrades_then_recovers(
    live: LiveServer, redis_settings: Settings, own_redis: RedisServer
) -> None:
    listener = listener_kinds(redis_settings).established
    before = _page(live, listener)
    assert not any(shelf["degraded"] for shelf in before["shelves"])
    own_redis.client().save()  # the restarted server loads this snapshot
    own_redis.kill()
    try:
        started = time.perf_counter()
        down = _page(live, listener)
        assert time.perf_counter() - started < 10, "a dead store must not hang a request"
        assert all(shelf["degraded"] for shelf in down["shelves"])
        assert any(shelf["cards"] for shelf in down["shelves"]), "snapshot cards remain"
        rank = httpx.post(
            f"{live.url}/v1/rank",
            json={"listener_id": listener, "shelf": "shortcuts", "item_ids": ["show_000001"]},
            timeout=30,
        )
        assert rank.status_code == 200 and rank.json()["degraded"] is True
    finally:
        own_redis.start()
    after = _page(live, listener)
    assert not any(shelf["degraded"] for shelf in after["shelves"])
    assert after["shelves"] == before["shelves"]
    metrics = httpx.get(f"{live.url}/metrics", timeout=10).text
    assert 'homerec_fallbacks_total{reason="feature_store",shelf="shortcuts"}' in metrics


def test_reload_needs_the_bearer_token(live: LiveServer) -> None:
    url = f"{live.url}/admin/reload"
    assert httpx.post(url, timeout=30).status_code == 401
    wrong = httpx.post(url, headers={"Authorization": f"Bearer {TOKEN}x"}, timeout=30)
    assert wrong.status_code == 401
    basic = httpx.post(url, headers={"Authorization": f"Basic {TOKEN}"}, timeout=30)
    assert basic.status_code == 401
    ok = httpx.post(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["status"] == "ready"


def test_reload_is_disabled_without_a_token(trained_world: TrainedWorld) -> None:
    settings = trained_world.settings.model_copy(update={"feature_log_sample_rate": 0.0})
    with LiveServer(settings) as server:
        response = httpx.post(
            f"{server.url}/admin/reload", headers={"Authorization": "Bearer anything"}, timeout=30
        )
        assert response.status_code == 404
        assert "disabled" in response.json()["detail"]


def test_reload_under_concurrent_requests_fails_no_request(
    live: LiveServer, redis_settings: Settings
) -> None:
    kinds = listener_kinds(redis_settings)
    listeners = [kinds.established, kinds.new, "L9999999"]
    stop = threading.Event()

    def hammer(worker: int) -> list[int]:
        codes = []
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                listener = listeners[(worker + len(codes)) % len(listeners)]
                codes.append(client.get(f"{live.url}/v1/home/{listener}").status_code)
        return codes

    with ThreadPoolExecutor(max_workers=4) as pool:
        workers = [pool.submit(hammer, worker) for worker in range(4)]
        reloads = []
        for _ in range(3):
            reloads.append(
                httpx.post(
                    f"{live.url}/admin/reload",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=120,
                ).status_code
            )
        stop.set()
        codes = [code for worker in workers for code in worker.result()]
    assert reloads == [200, 200, 200]
    assert len(codes) >= 4 and set(codes) == {200}


def test_served_features_are_logged_and_read_back(redis_settings: Settings) -> None:
    """Every model-scored shelf of a request is logged (sample rate 1) with the request
    id the response carried; after shutdown flushes the log, its feature values equal
    what Feast's get_online_features returns for the same listener and items."""
    log_dir = redis_settings.served_features_dir
    shutil.rmtree(log_dir, ignore_errors=True)
    listener = listener_kinds(redis_settings).established
    with LiveServer(redis_settings) as server:
        response = httpx.get(f"{server.url}/v1/home/{listener}", timeout=30)
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
    logged = read_feature_log(log_dir, "shortcuts")
    rows = logged[logged["request_id"] == request_id].reset_index(drop=True)
    assert len(rows) > 0 and set(rows["listener_id"]) == {listener}
    assert rows["model_version"].iloc[0] == "v1" and len(rows["model"].iloc[0]) == 12
    store = open_store(redis_settings)
    feast_values = OnlineReader(store).read(
        store.get_feature_service("shortcuts_v1"), rows[["listener_id", "item_id"]]
    )
    features = [c for c in rows.columns if c in feast_values.columns]
    assert len(features) > 10
    for name in features:
        logged_values = pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float)
        expected = pd.to_numeric(feast_values[name], errors="coerce").to_numpy(dtype=float)
        if np.isnan(expected).all() and not np.isnan(logged_values).all():
            # a categorical feature: compare as text
            assert rows[name].astype(str).tolist() == feast_values[name].astype(str).tolist()
        else:
            np.testing.assert_allclose(logged_values, expected, equal_nan=True, err_msg=name)


def test_bodies_over_the_limit_are_413(live: LiveServer) -> None:
    big = b'{"listener_id": "L1", "shelf": "shortcuts", "item_ids": ["' + b"x" * 70_000 + b'"]}'
    response = httpx.post(
        f"{live.url}/v1/rank", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "body" in response.json()["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes received are counted
        yield b'{"listener_id": "L1", "shelf": "shortcuts", "item_ids": ["'
        for _ in range(20):
            yield b"x" * 5000
        yield b'"]}'

    streamed = httpx.post(
        f"{live.url}/v1/rank", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_metrics_name_routes_shelves_and_models(live: LiveServer, redis_settings) -> None:
    _page(live, listener_kinds(redis_settings).established)
    text = httpx.get(f"{live.url}/metrics", timeout=10).text
    assert 'homerec_request_seconds_bucket{le="0.05",route="/v1/home/{listener_id}"}' in text
    assert 'homerec_shelf_seconds_count{shelf="shortcuts"}' in text
    assert 'homerec_model_info{blessed="true",model="' in text and 'version="v1"' in text
    assert "homerec_missing_feature_rows_total" in text


def test_docs_are_served(live: LiveServer) -> None:
    assert httpx.get(f"{live.url}/docs", timeout=10).status_code == 200
    paths = httpx.get(f"{live.url}/openapi.json", timeout=10).json()["paths"]
    assert {"/v1/home/{listener_id}", "/v1/rank", "/admin/reload", "/health", "/ready"} <= set(
        paths
    )


def test_rollback_reaches_a_running_server(trained_world: TrainedWorld, tmp_path) -> None:
    """Production v2 is served; after ``rollback`` the server, polling the registry,
    serves v1 without a restart; a later promote of v2 is picked up the same way."""
    settings = trained_world.settings.model_copy(
        update={
            "registry_dir": tmp_path / "registry",
            "serve_refresh_seconds": 0.2,
            "feature_log_sample_rate": 0.0,
        }
    )
    registry = ModelRegistry(settings.model_registry_dir)
    shelf = "shortcuts"
    ranker, metadata = load_ranker(candidate_dir(trained_world.settings, shelf))
    for version in (1, 2):  # no gate here: each push is a recorded override
        registry.register(shelf, ranker, metadata)
        registry.promote(shelf, version, reason=f"test push {version}", force=True)

    def served_version(server: LiveServer, wanted: str) -> str:
        deadline = time.monotonic() + 30
        while True:
            shelves = httpx.get(f"{server.url}/ready", timeout=10).json()["shelves"]
            version = {s["shelf"]: s["version"] for s in shelves}[shelf]
            if version == wanted or time.monotonic() > deadline:
                return version

    with LiveServer(settings) as server:
        assert served_version(server, "v2") == "v2"
        assert registry.rollback(shelf, reason="test rollback") == 1
        assert served_version(server, "v1") == "v1"
        page = _page(server, listener_kinds(settings).established)
        assert page["shelves"][0]["shelf"] == shelf and not page["shelves"][0]["degraded"]
        registry.promote(shelf, 2, reason="test push again", force=True)
        assert served_version(server, "v2") == "v2"
