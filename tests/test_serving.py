"""The Home ranker API on the trained world: pages in shelf order with ranked, deduplicated
cards; cold-start pages for new and unknown listeners; /v1/rank; 422/404 for bad input;
degraded shelves (missing model, failing feature store) that never fail the page; and
parity of the served Shortcuts ranking with the library path (candidates + OnlineReader +
load_ranker)."""

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving import online_features
from serving.app import create_app
from serving.sample_traffic import sample_listeners, serve_sample
from tests.conftest import SHORT_WINDOWS, TrainedWorld, candidate_dir, project_settings
from tests.serving_checks import assert_fast_reads_equal_feast
from training.candidates import (
    LISTENER_FEATURES,
    generate_candidates,
    propose,
    read_candidate_inputs,
)
from training.core.layout import WorldPaths
from training.core.shelves import load_shelves, shelf_by_name
from training.features.served_log import read_feature_log
from training.features.store import (
    OnlineReader,
    apply_definitions,
    materialize,
    open_store,
    world_window,
)
from training.models.rankers import load_ranker

SHELVES = load_shelves()
SHELF_NAMES = [shelf.name for shelf in SHELVES]
NEW_LISTENER_DAYS = 30  # try_something_else's audience (shelves.yaml)


@pytest.fixture(scope="module")
def client(trained_world: TrainedWorld) -> Iterator[TestClient]:
    with TestClient(create_app(trained_world.settings)) as client:
        yield client


@pytest.fixture(scope="module")
def profiles(trained_world: TrainedWorld) -> pd.DataFrame:
    """Every world listener's online profile: listener_id, account_age_days, n_familiar."""
    settings = trained_world.settings
    listeners = pd.read_parquet(WorldPaths(settings.world_dir).listeners, columns=["listener_id"])
    online = OnlineReader(open_store(settings)).read(LISTENER_FEATURES, listeners)
    return pd.DataFrame(
        {
            "listener_id": listeners["listener_id"].astype(str),
            "account_age_days": online["account_age_days"].astype(float),
            "n_familiar": online["familiar_items"].map(lambda v: 0 if v is None else len(v)),
        }
    )


@pytest.fixture(scope="module")
def established(profiles: pd.DataFrame) -> str:
    """The older-than-new listener with the most familiar items."""
    old = profiles[profiles["account_age_days"] > NEW_LISTENER_DAYS]
    return str(old.sort_values("n_familiar", ascending=False)["listener_id"].iloc[0])


@pytest.fixture(scope="module")
def new_listener(profiles: pd.DataFrame) -> str:
    new = profiles[profiles["account_age_days"] <= NEW_LISTENER_DAYS]
    assert len(new), "the trained world has no listener in try_something_else's audience"
    return str(new["listener_id"].iloc[0])


def _home(client: TestClient, listener_id: str, **params) -> dict:
    response = client.get(f"/v1/home/{listener_id}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _assert_well_formed(page: dict, k: int | None = None) -> None:
    """Shelves in declaration order, at most k cards each, no item on two shelves, scores
    descending, sources declared by the shelf, reasons given, content types of the shelf;
    no shelf without cards (a shelf with none is left off the page)."""
    names = [shelf["shelf"] for shelf in page["shelves"]]
    assert names == [name for name in SHELF_NAMES if name in names]
    seen: list[str] = []
    for served in page["shelves"]:
        shelf = shelf_by_name(SHELVES, served["shelf"])
        cards = served["cards"]
        assert cards, f"shelf {served['shelf']} is on the page without cards"
        assert served["title"] == shelf.title
        assert len(cards) <= (k or shelf.k)
        scores = [card["score"] for card in cards]
        assert scores == sorted(scores, reverse=True)
        kinds = {source.kind for source in shelf.candidates}
        for card in cards:
            assert card["source"] in kinds
            assert card["reason"]
            assert card["content_type"] in shelf.content_types
        seen += [card["item_id"] for card in cards]
    assert len(seen) == len(set(seen)), "an item appears on two shelves"


# --------------------------------------------------------------------------- health


def test_health_is_ok(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_names_each_shelf_model(client: TestClient, trained_world: TrainedWorld) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    shelves = response.json()["shelves"]
    assert [s["shelf"] for s in shelves] == SHELF_NAMES
    for served in shelves:
        assert served["model"] == trained_world.trained[served["shelf"]].sha256[:12]
        assert served["degraded"] is False


def test_not_ready_without_a_feature_store(tmp_path: Path) -> None:
    with TestClient(create_app(project_settings(tmp_path / "data"))) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "registry" in ready.json()["error"]
        assert client.get("/v1/home/L1").status_code == 503
    assert not (tmp_path / "data").exists(), "serving must not create a data directory"


# --------------------------------------------------------------------------- pages


def test_home_page_of_an_established_listener(client: TestClient, established: str) -> None:
    page = _home(client, established)
    _assert_well_formed(page)
    names = [shelf["shelf"] for shelf in page["shelves"]]
    assert names == ["shortcuts", "shows_you_might_like"], "audience: not a new listener"
    assert page["cold_start"] is False
    for served in page["shelves"]:
        assert served["degraded"] is False and served["model"] != "heuristic"
        assert served["cards"], f"{served['shelf']} has no cards"


def test_k_bounds_cards_per_shelf(client: TestClient, established: str) -> None:
    page = _home(client, established, k=2)
    _assert_well_formed(page, k=2)
    assert all(len(shelf["cards"]) == 2 for shelf in page["shelves"])


def test_new_listener_sees_try_something_else(client: TestClient, new_listener: str) -> None:
    page = _home(client, new_listener)
    _assert_well_formed(page)
    shelves = {shelf["shelf"]: shelf for shelf in page["shelves"]}
    assert "try_something_else" in shelves
    assert shelves["try_something_else"]["cards"]


def test_unknown_listener_gets_a_cold_start_page(client: TestClient) -> None:
    page = _home(client, "never-seen:listener_42")
    _assert_well_formed(page)
    assert page["cold_start"] is True
    shelves = {shelf["shelf"]: shelf for shelf in page["shelves"]}
    assert "shortcuts" not in shelves, "an unknown listener has nothing familiar"
    assert shelves["try_something_else"]["cards"], "unknown listeners count as new"
    cards = [card for shelf in page["shelves"] for card in shelf["cards"]]
    assert cards and {card["source"] for card in cards} <= {"popular", "editorial"}
    assert not any(shelf["degraded"] for shelf in page["shelves"])


def test_cold_start_market_comes_from_the_request(client: TestClient) -> None:
    page = _home(client, "brand-new", market="DE", age_bucket="25-34")
    reasons = [card["reason"] for shelf in page["shelves"] for card in shelf["cards"]]
    assert reasons and all("DE" in reason for reason in reasons)


# --------------------------------------------------------------------------- /v1/rank


def test_rank_reorders_the_given_items(client: TestClient, established: str) -> None:
    shortcuts = _home(client, established, k=50)["shelves"][0]
    assert shortcuts["shelf"] == "shortcuts" and len(shortcuts["cards"]) >= 3
    served = {card["item_id"]: card for card in shortcuts["cards"]}
    items = [*reversed(list(served)), "not_in_catalog_1", next(iter(served))]
    response = client.post(
        "/v1/rank", json={"listener_id": established, "shelf": "shortcuts", "item_ids": items}
    )
    assert response.status_code == 200, response.text
    ranked = response.json()
    assert ranked["shelf"] == "shortcuts" and ranked["degraded"] is False
    cards = ranked["cards"]
    assert sorted(card["item_id"] for card in cards) == sorted(set(items))
    assert cards[-1]["item_id"] == "not_in_catalog_1", "an item unknown to the catalog is last"
    scores = [card["score"] for card in cards[:-1]]
    assert scores == sorted(scores, reverse=True)
    for card in cards:
        if card["item_id"] in served:  # proposed by stage 1: scored as on the Home page
            assert card["source"] == "familiar"
            assert card["score"] == pytest.approx(served[card["item_id"]]["score"], rel=1e-6)
        else:
            assert card["source"] == "request" and card["content_type"] is None
    top = client.post(
        "/v1/rank",
        json={"listener_id": established, "shelf": "shortcuts", "item_ids": items, "k": 2},
    ).json()
    assert [card["item_id"] for card in top["cards"]] == [card["item_id"] for card in cards[:2]]


RANK = {"listener_id": "L0000001", "shelf": "shortcuts", "item_ids": ["show_000001"]}


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("get", "/v1/home/bad id", None, "listener_id"),
        ("get", "/v1/home/" + "x" * 129, None, "listener_id"),
        ("get", "/v1/home/L1?k=0", None, "k"),
        ("get", "/v1/home/L1?k=51", None, "k"),
        ("get", "/v1/home/L1?k=many", None, "k"),
        ("get", "/v1/home/L1?market=SE|all", None, "market"),
        ("post", "/v1/rank", {**RANK, "listener_id": "semi;colon"}, "listener_id"),
        ("post", "/v1/rank", {**RANK, "item_ids": ["ok", "not ok"]}, "item_ids"),
        ("post", "/v1/rank", {**RANK, "item_ids": [f"i{n}" for n in range(501)]}, "item_ids"),
        ("post", "/v1/rank", {**RANK, "item_ids": []}, "item_ids"),
        ("post", "/v1/rank", {**RANK, "k": 0}, "k"),
        ("post", "/v1/rank", {**RANK, "k": 51}, "k"),
        ("post", "/v1/rank", {key: v for key, v in RANK.items() if key != "shelf"}, "shelf"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client, method, url, body, field) -> None:
    response = client.request(method, url, json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert field in payload["message"]
    assert any(field in error["loc"] for error in payload["detail"])


def test_unknown_shelf_is_a_404_naming_it(client: TestClient) -> None:
    response = client.post("/v1/rank", json={**RANK, "shelf": "no_such_shelf"})
    assert response.status_code == 404
    assert "no_such_shelf" in response.json()["detail"]


# --------------------------------------------------------------------------- degraded


def test_missing_model_serves_the_heuristic(
    trained_world: TrainedWorld, established: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(
        trained_world.settings.data_dir, data_dir, ignore=shutil.ignore_patterns("training_sets")
    )
    settings = project_settings(data_dir, **SHORT_WINDOWS)
    shutil.rmtree(settings.model_registry_dir / "shows_you_might_like")
    with TestClient(create_app(settings)) as client:
        ready = {s["shelf"]: s for s in client.get("/ready").json()["shelves"]}
        assert ready["shows_you_might_like"]["model"] == "heuristic"
        assert ready["shows_you_might_like"]["degraded"] is True
        assert "shows_you_might_like" in ready["shows_you_might_like"]["problem"]
        assert ready["shortcuts"]["degraded"] is False
        page = _home(client, established)
    _assert_well_formed(page)
    shelves = {shelf["shelf"]: shelf for shelf in page["shelves"]}
    assert shelves["shows_you_might_like"]["model"] == "heuristic"
    assert shelves["shows_you_might_like"]["degraded"] is True
    assert shelves["shows_you_might_like"]["cards"]
    assert shelves["shortcuts"]["degraded"] is False


def _failing_online_read(views: set[str] | None):
    """A ``FastOnlineReader._online_read`` whose store fails for ``views`` (None: all)."""
    original = online_features.FastOnlineReader._online_read

    def online_read(self, reads):
        if any(views is None or read.view.name in views for read in reads):
            raise ConnectionError("online store unavailable")
        return original(self, reads)

    return online_read


def test_feature_read_failure_degrades_shelves_not_the_page(
    client: TestClient, established: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Model-feature reads failing (listener x item pairs): every shelf keeps its stage-1
    candidates, ranked by its heuristic, degraded. The whole store failing: the page of an
    unknown listener from the in-memory snapshot (popular, editorial), all degraded."""
    reader = online_features.FastOnlineReader
    monkeypatch.setattr(reader, "_online_read", _failing_online_read({"listener_item"}))
    page = _home(client, established)
    assert page["shelves"]
    for served in page["shelves"]:
        assert served["degraded"] is True and served["model"] == "heuristic"
        scores = [card["score"] for card in served["cards"]]
        assert scores == sorted(scores, reverse=True)
    assert page["shelves"][0]["cards"], "shortcuts keeps its stage-1 candidates"
    rank = client.post("/v1/rank", json={**RANK, "listener_id": established})
    assert rank.status_code == 200 and rank.json()["degraded"] is True

    monkeypatch.setattr(reader, "_online_read", _failing_online_read(None))
    page = _home(client, established)
    assert page["cold_start"] is True
    # Unknown age: every shelf but shortcuts (no familiar items without the store).
    assert [s["shelf"] for s in page["shelves"]] == SHELF_NAMES[1:]
    assert all(s["degraded"] and s["cards"] for s in page["shelves"])
    rank = client.post("/v1/rank", json={**RANK, "listener_id": established})
    assert rank.status_code == 200 and rank.json()["degraded"] is True
    metrics = client.get("/metrics").text
    assert 'homerec_fallbacks_total{reason="feature_store",shelf="shortcuts"}' in metrics


# --------------------------------------------------------------------------- parity


def test_snapshot_is_stale_after_any_later_materialization(small_world_store, tmp_path) -> None:
    """An incremental load past the snapshot and a full reload over the same window (tables
    rebuilt) both make the entity snapshot stale, so serving reloads it."""
    settings = project_settings(tmp_path / "data")
    shutil.copytree(small_world_store.world_dir, settings.world_dir)
    shutil.copytree(small_world_store.features_dir, settings.features_dir)
    apply_definitions(settings)
    _, end = world_window(settings)
    materialize(settings, end=end - timedelta(days=1))
    store = open_store(settings)
    snapshot = online_features.EntitySnapshot.load(store)
    assert snapshot.is_current(store)
    materialize(settings)
    assert not snapshot.is_current(store)
    snapshot = online_features.EntitySnapshot.load(store)
    materialize(settings, incremental=False)
    assert not snapshot.is_current(store)


def test_fast_reads_equal_get_online_features_on_sqlite(trained_world: TrainedWorld) -> None:
    assert_fast_reads_equal_feast(trained_world.settings)


def test_a_page_proposes_the_candidates_a_batch_proposes(
    trained_world: TrainedWorld, profiles: pd.DataFrame
) -> None:
    """Serving's stage 1 (one request, read through a page's snapshot and online reads)
    and training's (a batch through ``get_online_features``) propose the same candidates,
    item for item and source for source, with the same reasons and signals: over a
    sample of listeners and the edge cases (new listeners, listeners without familiar
    items, so without familiar and neighbour sources, and an unknown listener, for whom
    every source is empty)."""
    settings = trained_world.settings
    store = open_store(settings)
    fast = online_features.FastOnlineReader(store, online_features.EntitySnapshot.load(store))
    sample = profiles["listener_id"].sample(40, random_state=5).tolist()
    new = profiles.loc[profiles["account_age_days"] <= NEW_LISTENER_DAYS, "listener_id"]
    empty = profiles.loc[profiles["n_familiar"] == 0, "listener_id"]
    assert len(empty), "the trained world has no listener without familiar items"
    ids = list(dict.fromkeys([*sample, *new.head(5), *empty.head(5), "never-seen-listener"]))
    requests = pd.DataFrame({"group": np.arange(len(ids)), "listener_id": ids})
    batch = read_candidate_inputs(OnlineReader(store), requests, SHELVES)
    for group, listener_id in enumerate(ids):
        alone = read_candidate_inputs(
            fast.page(), {"group": [group], "listener_id": [listener_id]}, SHELVES
        )
        for shelf in SHELVES:
            expected = generate_candidates(shelf, batch)
            expected = expected[expected["group"] == group].reset_index(drop=True)
            pd.testing.assert_frame_equal(
                propose(shelf, alone).frame(), expected, obj=f"{shelf.name} {listener_id}"
            )


def test_served_shortcuts_equal_the_library_ranking(
    client: TestClient, trained_world: TrainedWorld, established: str
) -> None:
    """Stage 1 + OnlineReader features + load_ranker(...).predict, as a library user would
    call them, give the order and scores the API serves (and the in-memory fitted model's)."""
    settings = trained_world.settings
    shelf = shelf_by_name(SHELVES, "shortcuts")
    store = open_store(settings)
    reader = OnlineReader(store)
    requests = pd.DataFrame({"group": [0], "listener_id": [established]})
    rows = generate_candidates(shelf, read_candidate_inputs(reader, requests, [shelf]))
    rows = rows.assign(listener_id=established)
    features = reader.read(
        store.get_feature_service(shelf.feature_service), rows[["listener_id", "item_id"]]
    )
    X = pd.concat([rows, features], axis=1)
    ranker, _ = load_ranker(candidate_dir(settings, shelf.name))
    scores = ranker.predict(X)
    np.testing.assert_array_equal(scores, trained_world.fitted[shelf.name].predict(X))
    order = np.argsort(-scores, kind="stable")

    served = _home(client, established, k=50)["shelves"][0]
    assert served["shelf"] == shelf.name and len(served["cards"]) == len(rows) > 1
    assert [card["item_id"] for card in served["cards"]] == list(rows["item_id"].iloc[order])
    np.testing.assert_allclose([card["score"] for card in served["cards"]], scores[order])


def test_sample_traffic_logs_every_page_it_serves(trained_world: TrainedWorld, tmp_path) -> None:
    """``make demo``'s sample traffic: a seeded sample of listeners, every page answered and
    every request's features logged (the rows ``homerec drift`` compares with training)."""
    log = tmp_path / "served"
    settings = trained_world.settings.model_copy(update={"feature_log_dir": log})
    sampled = sample_listeners(settings, 12)
    assert sampled == sample_listeners(settings, 12) and len(set(sampled)) == 12
    summary = serve_sample(settings, 12)
    assert summary.pages == 12 and not summary.degraded_shelves
    logged = read_feature_log(log)
    assert logged["request_id"].nunique() == 12
    assert set(logged["listener_id"]) == set(sampled)
    assert set(logged["shelf"]) == set(SHELF_NAMES)
