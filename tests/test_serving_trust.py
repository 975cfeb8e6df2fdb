"""Trust at the serving edge, on a real uvicorn on loopback: only a servable registry
model is served (its blessing visible everywhere), a corrupt alias file keeps the models
being served, bad input is a 4xx in the one error shape (schemathesis and a hypothesis
fuzz of raw bodies find no 5xx), listener data needs the dashboard token, and responses
carry security headers and no filesystem paths."""

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from serving.app import create_app
from serving.errors import without_paths
from serving.middleware import MAX_JSON_DEPTH, BadBody, check_json_body
from serving.ranking import load_shelf_model
from tests.conftest import TrainedWorld, candidate_dir, project_settings
from tests.serving_checks import LiveServer, listener_kinds
from training.core.settings import Settings
from training.core.shelves import load_shelves, shelf_by_name
from training.features.store import open_store
from training.models.rankers import load_ranker
from training.models.registry import ModelRegistry

SHELF = "shortcuts"
RANK = "/v1/rank"


def _own_registry(trained_world: TrainedWorld, tmp_path: Path, **overrides) -> Settings:
    """The trained world with a registry of this test's own (empty) and a fast refresh."""
    return trained_world.settings.model_copy(
        update={
            "registry_dir": tmp_path / "registry",
            "serve_refresh_seconds": 0.2,
            "feature_log_sample_rate": 0.0,
        }
        | overrides
    )


def _register_shortcuts(trained_world: TrainedWorld, settings: Settings) -> ModelRegistry:
    registry = ModelRegistry(settings.model_registry_dir)
    ranker, metadata = load_ranker(candidate_dir(trained_world.settings, SHELF))
    registry.register(SHELF, ranker, metadata)
    return registry


def _ready(server: LiveServer) -> dict:
    return httpx.get(f"{server.url}/ready", timeout=10).json()


def _shelves(ready: dict) -> dict[str, dict]:
    return {shelf["shelf"]: shelf for shelf in ready["shelves"]}


def _until(check, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


# --------------------------------------------------------------------------- blessing


def test_an_override_is_shown_and_no_ungated_folder_is_ever_served(
    trained_world: TrainedWorld, tmp_path: Path
) -> None:
    """Shortcuts' gate-refused v1, forced in with a reason, is served as blessed=false in
    /ready, /metrics and the page. The other shelves have no production version in this
    registry: they serve their heuristic."""
    settings = _own_registry(trained_world, tmp_path)
    registry = _register_shortcuts(trained_world, settings)
    registry.record_decision(SHELF, 1, {"passed": False, "reasons": ["test: refused"]})
    registry.promote(SHELF, 1, reason="incident 12: hotfix", force=True)
    with LiveServer(settings) as server:
        ready = _ready(server)
        shelves = _shelves(ready)
        assert shelves[SHELF]["version"] == "v1" and shelves[SHELF]["blessed"] is False
        assert shelves[SHELF]["override"] == "incident 12: hotfix"
        for name in set(trained_world.trained) - {SHELF}:
            assert shelves[name]["model"] == "heuristic" and shelves[name]["degraded"]
            assert "no production model" in shelves[name]["problem"]
        assert ready["status"] == "degraded"
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert f'homerec_model_info{{blessed="false",model="{shelves[SHELF]["model"]}",' in metrics
        listener = listener_kinds(settings).established
        page = httpx.get(f"{server.url}/v1/home/{listener}", timeout=30).json()
        served = {shelf["shelf"]: shelf for shelf in page["shelves"]}
        assert served[SHELF]["blessed"] is False and served[SHELF]["version"] == "v1"


def test_serving_rechecks_the_gate_decision_when_it_loads(
    trained_world: TrainedWorld, tmp_path: Path
) -> None:
    """An aliases.json edited by hand to point production at an undecided version: the
    registry's rule is applied again on load, and the shelf serves its heuristic."""
    settings = _own_registry(trained_world, tmp_path)
    registry = _register_shortcuts(trained_world, settings)
    aliases = {"production": 1, "candidate": None, "history": []}
    (registry.root / SHELF / "aliases.json").write_text(json.dumps(aliases))
    shelf = shelf_by_name(load_shelves(settings.shelves_file), SHELF)
    model = load_shelf_model(settings, open_store(settings), shelf)
    assert model.model == "heuristic" and model.degraded
    assert "v1 refused: gate decision '-'" in model.problem


def test_a_corrupt_alias_file_keeps_the_served_model(
    trained_world: TrainedWorld, tmp_path: Path
) -> None:
    """Under a live server, garbage in aliases.json neither drops the blessed model nor
    switches to the model folder: /ready turns degraded and names the file."""
    settings = _own_registry(trained_world, tmp_path)
    registry = _register_shortcuts(trained_world, settings)
    registry.record_decision(SHELF, 1, {"passed": True})
    registry.promote(SHELF, 1, reason="gate passed")
    with LiveServer(settings) as server:
        before = _shelves(_ready(server))[SHELF]
        assert before["blessed"] is True and before["problem"] is None
        (settings.model_registry_dir / SHELF / "aliases.json").write_text("{torn")

        def noticed() -> dict | None:
            ready = _ready(server)
            return ready if _shelves(ready)[SHELF]["problem"] else None

        ready = _until(noticed)
        assert ready is not None, "the server never noticed the corrupt alias file"
        after = _shelves(ready)[SHELF]
        assert (after["model"], after["version"], after["blessed"]) == (
            before["model"],
            "v1",
            True,
        )
        assert "aliases.json" in after["problem"] and ready["status"] == "degraded"
        assert str(settings.model_registry_dir) not in json.dumps(ready)
        listener = listener_kinds(settings).established
        page = httpx.get(f"{server.url}/v1/home/{listener}", timeout=30).json()
        served = {shelf["shelf"]: shelf for shelf in page["shelves"]}
        assert served[SHELF]["model"] == before["model"] and not served[SHELF]["degraded"]


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def live(trained_world: TrainedWorld, tmp_path_factory) -> Iterator[LiveServer]:
    settings = trained_world.settings.model_copy(
        update={"serve_refresh_seconds": 0.0, "feature_log_sample_rate": 0.0}
    )
    with LiveServer(settings) as server:
        yield server


def _post(live: LiveServer, body: bytes, **headers: str) -> httpx.Response:
    headers = {"content-type": "application/json"} | headers
    return httpx.post(f"{live.url}{RANK}", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"k": NaN}', "NaN"),
        (b'{"listener_id": "L1", "shelf": "shortcuts", "item_ids": [Infinity]}', "Infinity"),
        (b'{"k": -Infinity}', "-Infinity"),
        (b'{"k": 1e400}', "1e400"),
        (b'{"listener_id": "L\xff\xfe"}', "UTF-8"),
        (b"[" * 5000 + b"]" * 5000, "nested deeper"),
        (b'{"a": ' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1), "nested"),
        (b'{"k": ', "not valid JSON"),
    ],
)
def test_malformed_json_is_a_400_naming_the_problem(live: LiveServer, body, named) -> None:
    response = _post(live, body)
    assert response.status_code == 400, response.text
    assert named in response.json()["message"]


def test_a_json_body_as_deep_as_allowed_is_validated_not_refused() -> None:
    deep = b'{"a": ' * (MAX_JSON_DEPTH - 1) + b"[1]" + b"}" * (MAX_JSON_DEPTH - 1)
    check_json_body(deep)
    with pytest.raises(BadBody, match="nested"):
        check_json_body(b"[" + deep + b"]")


def test_oversized_headers_are_a_431(live: LiveServer) -> None:
    big = httpx.get(f"{live.url}/health", headers={"x-big": "a" * 20_000}, timeout=10)
    assert big.status_code == 431 and "16384" in big.json()["message"]
    many = {f"x-h{i}": "1" for i in range(150)}
    response = httpx.get(f"{live.url}/health", headers=many, timeout=10)
    assert response.status_code == 431 and "headers" in response.json()["message"]


def test_every_error_has_the_one_shape_and_every_response_security_headers(
    live: LiveServer,
) -> None:
    answers = [
        httpx.get(f"{live.url}/nowhere", timeout=10),  # 404 route
        httpx.delete(f"{live.url}/health", timeout=10),  # 405
        httpx.get(f"{live.url}/v1/home/bad%20id", timeout=10),  # 422
        httpx.post(f"{live.url}/admin/reload", timeout=10),  # 404: admin off
        httpx.post(f"{live.url}{RANK}", content=b"x", headers={"content-type": "text/plain"}),
    ]
    for response in answers:
        assert response.status_code >= 400 and response.status_code < 500, response.text
        body = response.json()
        assert set(body) == {"detail", "message"} and body["message"], response.text
    for response in [*answers, httpx.get(f"{live.url}/health", timeout=10)]:
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_public_messages_name_no_filesystem_path() -> None:
    text = "no usable model: /srv/data/registry/shortcuts/aliases.json: corrupt (see /tmp/x)"
    assert without_paths(text) == (
        "no usable model: …/shortcuts/aliases.json: corrupt (see /tmp/x)"
    )
    assert without_paths("http://127.0.0.1:8000/v1/home/a") == "http://127.0.0.1:8000/v1/home/a"


def test_not_ready_names_no_path(tmp_path: Path) -> None:
    app = create_app(project_settings(tmp_path / "data"))
    with TestClient(app) as client:
        response = client.get("/ready")
    assert response.status_code == 503
    assert str(tmp_path) not in response.text and "homerec features apply" in response.text


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
"""Any JSON-like value, NaN and infinities included (``json.dumps`` writes them bare)."""


def test_fuzzed_raw_bodies_never_get_a_5xx(live: LiveServer) -> None:
    """Random bytes, JSON-like documents (with NaN/Infinity) and rank requests with
    random field values: every answer is below 500 and every error has a message."""
    statuses: Counter[int] = Counter()
    field = st.sampled_from(["listener_id", "shelf", "item_ids", "k", "market", "age_bucket"])
    rank_like = st.dictionaries(field, JSONISH, min_size=1).map(
        lambda body: json.dumps({"listener_id": "L1", "shelf": SHELF, "item_ids": ["I1"]} | body)
    )
    bodies = st.binary(max_size=300) | JSONISH.map(json.dumps) | rank_like

    @hypothesis_settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies)
    def check(body: bytes | str) -> None:
        response = _post(live, body.encode() if isinstance(body, str) else body)
        statuses[response.status_code] += 1
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert response.json()["message"]

    check()
    assert sum(statuses.values()) >= 150 and any(code >= 400 for code in statuses)


def test_schemathesis_finds_no_5xx(live: LiveServer) -> None:
    """Every operation of the OpenAPI spec, positive and negative cases, bounded."""
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    counts: Counter[str] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis_settings(
                max_examples=25,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case) -> None:
                response = case.call(base_url=live.url, timeout=30)
                counts["cases"] += 1
                counts["5xx"] += response.status_code >= 500
                assert response.status_code < 500, (case.as_curl_command(), response.text)

            try:
                check()
            except Unsatisfiable:  # an operation without inputs has no negative case
                assert mode is GenerationMode.NEGATIVE
                counts["operations without negative cases"] += 1
    print(json.dumps({"operations": len(operations)} | dict(counts)))
    assert len(operations) >= 4 and counts["cases"] >= 100 and counts["5xx"] == 0


# --------------------------------------------------------------------------- dashboard access


def _dashboard(tmp_path: Path, **overrides) -> TestClient:
    """An app without its lifespan (no state loaded): access is checked before loading."""
    return TestClient(create_app(project_settings(tmp_path / "data", **overrides)))


def test_dashboard_needs_its_token_when_one_is_configured(tmp_path: Path) -> None:
    client = _dashboard(tmp_path, dashboard_token="s3cret")
    for path in ("/dashboard/api/listeners", "/dashboard/api/listener/L1", "/dashboard/api/drift"):
        assert client.get(path).status_code == 401
        wrong = client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    granted = client.get("/dashboard/api/drift", headers={"Authorization": "Bearer s3cret"})
    assert granted.status_code == 200 and granted.json()["available"] is False
    assert client.get("/dashboard").status_code == 200  # the page holds no data


def test_dashboard_is_off_in_production_without_a_token(tmp_path: Path) -> None:
    client = _dashboard(tmp_path, env="production")
    for path in ("/dashboard", "/dashboard/api/listeners", "/dashboard/api/drift"):
        response = client.get(path)
        assert response.status_code == 404
        assert "HOMEREC_DASHBOARD_TOKEN" in response.json()["message"]
    client = _dashboard(tmp_path, env="production", dashboard_token="s3cret")
    assert client.get("/dashboard").status_code == 200
    assert client.get("/dashboard/api/drift").status_code == 401
