"""Model registry: integer versions, aliases with history, integrity, and ``homerec models``.

Rankers are tiny (5-6 rounds, one thread) on a synthetic problem made here: the
registry's behaviour does not depend on model quality.
"""

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from training.cli.errors import ReportingGroup
from training.cli.models import models_app
from training.core.settings import Settings
from training.models.rankers import (
    MODEL_FILE,
    ModelIntegrityError,
    ShelfRanker,
    load_ranker,
    save_ranker,
)
from training.models.registry import (
    ModelRegistry,
    RegistryError,
    RegistryIntegrityError,
    RegistryLookupError,
    RegistryRefusedError,
)

FEATURES = ["f1", "f2", "genre"]
SHELF = "shows"


def make_rows(n_groups: int = 30, group_size: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_groups * group_size
    X = pd.DataFrame(
        {"f1": rng.random(n), "f2": rng.random(n), "genre": rng.choice(["pop", "jazz"], n)}
    )
    relevance = np.digitize(X["f1"] + 0.5 * (X["genre"] == "pop"), [0.6, 1.0, 1.3])
    return X, relevance, np.repeat(np.arange(n_groups), group_size)


def tiny_ranker(n_estimators: int) -> ShelfRanker:
    params = {"n_estimators": n_estimators, "n_jobs": 1, "seed": 0, "log_every": 0}
    return ShelfRanker(FEATURES, **params).fit(*make_rows())


def metadata(ndcg: float = 0.5, shelf: str = SHELF) -> dict:
    """Metadata shaped like training.jobs.train.train_shelf's."""
    return {
        "shelf": shelf,
        "feature_service": f"{shelf}_v1",
        "feature_names": FEATURES,
        "split": {
            "train": ["2024-01-01T00:00:00", "2024-01-03T00:00:00"],
            "valid": ["2024-01-10T00:00:00"],
            "test": ["2024-01-17T00:00:00"],
        },
        "data_hash": "abc123",
        "trained_at": "2024-01-20T00:00:00+00:00",
        "rows": {"train": 300, "valid": 100, "test": 100},
        "metrics": {"valid_ndcg@10": ndcg, "valid_baseline_ndcg@10": 0.3},
    }


@pytest.fixture(scope="module")
def rankers() -> list[ShelfRanker]:
    return [tiny_ranker(5), tiny_ranker(6)]


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


@pytest.fixture
def two_versions(registry: ModelRegistry, rankers) -> ModelRegistry:
    registry.register(SHELF, rankers[0], metadata(0.5))
    registry.register(SHELF, rankers[1], metadata(0.6))
    return registry


@pytest.fixture
def blessed(two_versions: ModelRegistry) -> ModelRegistry:
    """Both versions with a passing gate decision recorded (the gate's input here)."""
    for version in (1, 2):
        two_versions.record_decision(SHELF, version, {"passed": True, "reasons": []})
    return two_versions


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- versions


def test_register_allocates_consecutive_versions_with_their_records(registry, rankers):
    first = registry.register(SHELF, rankers[0], metadata(0.5))
    second = registry.register(SHELF, rankers[1], metadata(0.6))
    assert (first.version, second.version) == (1, 2)
    assert registry.shelves() == [SHELF]
    assert [v.version for v in registry.versions(SHELF)] == [1, 2]
    directory = registry.root / SHELF / "versions" / "2"
    assert second.path == directory
    assert sorted(p.name for p in directory.iterdir()) == [
        "model.ubj",
        "ranker.json",
        "version.json",
    ]
    record = json.loads((directory / "version.json").read_text())
    assert record["version"] == 2 and record["shelf"] == SHELF
    assert record["sha256"] == second.sha256 != first.sha256
    got = registry.get(SHELF, 2)
    assert got.metrics["valid_ndcg@10"] == 0.6
    assert got.split["valid"] == ["2024-01-10T00:00:00"]
    assert got.feature_service == "shows_v1" and got.feature_names == FEATURES
    assert got.decision is None and got.aliases == () and got.gate == "-"
    assert not [p for p in (registry.root / SHELF / "versions").iterdir() if p.name.startswith(".")]


def test_register_refuses_metadata_of_another_shelf(registry, rankers):
    with pytest.raises(RegistryError, match="'podcasts'"):
        registry.register(SHELF, rankers[0], metadata(shelf="podcasts"))
    assert registry.version_numbers(SHELF) == []


def test_concurrent_registers_get_distinct_consecutive_versions(registry, tmp_path, rankers):
    """Guards version allocation by atomic rename: 8 threads, 8 distinct numbers 1..8."""
    save_ranker(rankers[0], tmp_path / "src", metadata())
    copies = [load_ranker(tmp_path / "src")[0] for _ in range(8)]
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(copies))

    def register(ranker: ShelfRanker) -> None:
        try:
            barrier.wait()
            results.append(registry.register(SHELF, ranker, metadata()).version)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=register, args=(ranker,)) for ranker in copies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == list(range(1, 9))
    assert registry.version_numbers(SHELF) == list(range(1, 9))
    for version in registry.versions(SHELF):
        assert json.loads((version.path / "version.json").read_text())["version"] == version.version
    assert not [p for p in (registry.root / SHELF / "versions").iterdir() if p.name.startswith(".")]


def test_a_version_number_taken_meanwhile_is_skipped(registry, rankers, monkeypatch):
    """Guards the retry path deterministically: a stale listing proposes 1, which exists."""
    registry.register(SHELF, rankers[0], metadata())
    real = registry.version_numbers
    calls: list[list[int]] = []

    def stale_once(shelf: str) -> list[int]:
        calls.append(real(shelf))
        return [] if len(calls) == 1 else calls[-1]

    monkeypatch.setattr(registry, "version_numbers", stale_once)
    assert registry.register(SHELF, rankers[1], metadata()).version == 2
    assert calls[:2] == [[1], [1]]  # the stale proposal (1) failed, the retry listed again
    assert registry.get(SHELF, 1).sha256 != registry.get(SHELF, 2).sha256


# --------------------------------------------------------------------------- aliases


def test_promote_and_rollback_restore_the_previous_production(blessed, rankers):
    registry = blessed
    assert registry.alias(SHELF, "production") is None
    assert registry.production_sha(SHELF) is None
    registry.set_alias(SHELF, "candidate", 1, reason="first model")
    assert registry.promote(SHELF, reason="gate passed") == 1
    assert registry.aliases(SHELF) == {"production": 1, "candidate": 1, "history": []}
    registry.set_alias(SHELF, "candidate", 2, reason="retrained")
    assert registry.get(SHELF, 2).aliases == ("candidate",)
    assert registry.promote(SHELF, reason="better") == 2
    assert registry.aliases(SHELF) == {"production": 2, "candidate": 2, "history": [1]}
    assert registry.production_sha(SHELF) == (2, registry.get(SHELF, 2).sha256)
    assert registry.load(SHELF)[2].version == 2

    assert registry.rollback(SHELF, reason="bad metrics online") == 1
    assert registry.aliases(SHELF) == {"production": 1, "candidate": 2, "history": []}
    assert registry.get(SHELF, 1).aliases == ("production",)
    with pytest.raises(RegistryLookupError, match="no previous production"):
        registry.rollback(SHELF, reason="again")
    assert registry.alias(SHELF, "production") == 1

    ranker, meta, record = registry.load(SHELF, "production")
    X = make_rows(seed=5)[0]
    np.testing.assert_array_equal(ranker.predict(X), rankers[0].predict(X))
    assert meta["metrics"]["valid_ndcg@10"] == 0.5 and record.version == 1


def test_every_alias_switch_is_an_event_line(blessed, caplog):
    registry = blessed
    caplog.set_level("INFO", logger="training.models.registry")
    registry.set_alias(SHELF, "candidate", 1, reason="r1")
    registry.promote(SHELF, reason="r2")
    registry.promote(SHELF, 2, reason="r3")
    registry.rollback(SHELF, reason="r4")
    registry.set_alias(SHELF, "candidate", 2, reason="r5")
    registry.set_alias(SHELF, "candidate", 2, reason="no-op, same version")
    registry.set_alias(SHELF, "production", 2, reason="r6")
    lines = (registry.root / SHELF / "events.log").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert events == registry.events(SHELF)
    moves = [(e["action"], e["alias"], e["from"], e["to"], e["reason"]) for e in events]
    assert moves == [
        ("set_alias", "candidate", None, 1, "r1"),
        ("promote", "production", None, 1, "r2"),
        ("promote", "production", 1, 2, "r3"),
        ("rollback", "production", 2, 1, "r4"),
        ("set_alias", "candidate", 1, 2, "r5"),
        ("promote", "production", 1, 2, "r6"),
    ]
    assert all(set(e) == {"timestamp", "action", "alias", "from", "to", "reason"} for e in events)
    assert "rollback production 2 -> 1 (r4)" in caplog.text


def test_alias_errors_are_clear(two_versions):
    registry = two_versions
    with pytest.raises(RegistryError, match="unknown alias 'staging'"):
        registry.set_alias(SHELF, "staging", 1)
    with pytest.raises(RegistryLookupError, match="no version 7"):
        registry.set_alias(SHELF, "production", 7)
    with pytest.raises(RegistryLookupError, match="no candidate"):
        registry.promote(SHELF)
    with pytest.raises(RegistryLookupError, match="no production version"):
        registry.load(SHELF)
    with pytest.raises(RegistryLookupError, match="'podcasts'.*shelves: shows"):
        registry.load("podcasts", 1)
    assert not (registry.root / SHELF / "aliases.json").exists()


# --------------------------------------------------------------------------- integrity


def test_tampered_model_is_never_loaded_nor_aliased(blessed):
    registry = blessed
    registry.promote(SHELF, 1, reason="ok")
    flip_a_byte(registry.get(SHELF, 2).path / MODEL_FILE)
    with pytest.raises(RegistryIntegrityError, match=r"model\.ubj.*sha256") as caught:
        registry.load(SHELF, 2)
    assert isinstance(caught.value, ModelIntegrityError)
    with pytest.raises(RegistryIntegrityError):
        registry.set_alias(SHELF, "production", 2, reason="should be refused")
    with pytest.raises(RegistryIntegrityError):
        registry.promote(SHELF, 2)
    assert registry.aliases(SHELF) == {"production": 1, "candidate": None, "history": []}
    assert [e["to"] for e in registry.events(SHELF)] == [1]
    assert registry.load(SHELF)[2].version == 1


def test_rollback_refuses_a_tampered_previous_production(blessed):
    registry = blessed
    registry.promote(SHELF, 1)
    registry.promote(SHELF, 2)
    flip_a_byte(registry.get(SHELF, 1).path / MODEL_FILE)
    with pytest.raises(RegistryIntegrityError):
        registry.rollback(SHELF)
    assert registry.aliases(SHELF) == {"production": 2, "candidate": None, "history": [1]}


def test_feature_contract_mismatch_is_never_loaded(two_versions):
    """A consistent model + ranker.json pair whose metadata feature names disagree with
    the model's contract, and a contract whose names disagree with the booster."""
    registry = two_versions
    contract_path = registry.get(SHELF, 1).path / "ranker.json"
    contract = json.loads(contract_path.read_text())
    contract["metadata"]["feature_names"] = ["f2", "f1", "genre"]
    contract_path.write_text(json.dumps(contract))
    with pytest.raises(RegistryIntegrityError, match="feature contract"):
        registry.load(SHELF, 1)
    contract_path = registry.get(SHELF, 2).path / "ranker.json"
    contract = json.loads(contract_path.read_text())
    contract["feature_names"].reverse()
    contract_path.write_text(json.dumps(contract))
    with pytest.raises(RegistryIntegrityError, match="feature_names"):
        registry.set_alias(SHELF, "candidate", 2)


def test_version_record_checksum_must_match_the_contract(two_versions):
    """Swapping in another valid model pair is caught by the checksum recorded at
    registration (version.json)."""
    registry = two_versions
    v1, v2 = registry.get(SHELF, 1).path, registry.get(SHELF, 2).path
    for name in ("model.ubj", "ranker.json"):
        (v1 / name).write_bytes((v2 / name).read_bytes())
    with pytest.raises(RegistryIntegrityError, match="registered"):
        registry.load(SHELF, 1)


def test_corrupt_registry_files_are_named(blessed):
    registry = blessed
    aliases = registry.root / SHELF / "aliases.json"
    aliases.write_text("{not json")
    with pytest.raises(RegistryError, match=r"aliases\.json: corrupt"):
        registry.alias(SHELF, "production")
    aliases.write_text(json.dumps({"production": "1", "candidate": None, "history": []}))
    with pytest.raises(RegistryError, match=r"aliases\.json: corrupt"):
        registry.promote(SHELF, 1)
    aliases.unlink()
    version_file = registry.root / SHELF / "versions" / "1" / "version.json"
    version_file.write_text(json.dumps({"version": 3, "shelf": SHELF}))
    with pytest.raises(RegistryError, match=r"1/version\.json: corrupt.*version 3 != 1"):
        registry.get(SHELF, 1)


# --------------------------------------------------------------------------- blessing


def test_only_a_blessed_version_becomes_production(two_versions):
    """Undecided (v1) and gate-refused (v2) versions are refused, by promote and by
    set_alias alike, and nothing moves; a pass then promotes."""
    registry = two_versions
    registry.set_alias(SHELF, "candidate", 2, reason="trained")
    registry.record_decision(SHELF, 2, {"passed": False, "reasons": ["below the heuristic"]})
    with pytest.raises(RegistryRefusedError, match="version 1 has gate decision '-'"):
        registry.promote(SHELF, 1)
    with pytest.raises(RegistryRefusedError, match="version 2 has gate decision 'fail'"):
        registry.promote(SHELF)
    with pytest.raises(RegistryRefusedError, match="--force --reason"):
        registry.set_alias(SHELF, "production", 2)
    assert registry.aliases(SHELF) == {"production": None, "candidate": 2, "history": []}
    assert [e["alias"] for e in registry.events(SHELF)] == ["candidate"]
    registry.record_decision(SHELF, 1, {"passed": True})
    assert registry.promote(SHELF, 1, reason="gate passed") == 1
    assert registry.get(SHELF, 1).blessed and registry.get(SHELF, 1).overrides == ()
    assert registry.aliases(SHELF)["candidate"] == 2  # the other alias never moves


def test_a_forced_promote_is_recorded_as_an_override(two_versions):
    registry = two_versions
    registry.record_decision(SHELF, 2, {"passed": False, "reasons": ["below the heuristic"]})
    with pytest.raises(RegistryRefusedError, match="needs a reason"):
        registry.promote(SHELF, 2, reason="  ", force=True)
    assert registry.promote(SHELF, 2, reason="hotfix, incident 7", force=True) == 2
    record = registry.get(SHELF, 2)
    assert not record.blessed and record.servable
    assert record.override["reason"] == "hotfix, incident 7" and record.override["gate"] == "fail"
    lines = (record.path / "overrides.log").read_text().splitlines()
    assert [json.loads(line)["reason"] for line in lines] == ["hotfix, incident 7"]
    event = registry.events(SHELF)[-1]
    assert event["to"] == 2 and event["override"] is True and event["gate"] == "fail"
    assert record.to_dict()["blessed"] is False and len(record.to_dict()["overrides"]) == 1


def test_rollback_refuses_a_previous_production_that_is_not_servable(blessed):
    """A history entry whose version is neither blessed nor overridden (here: written by
    hand) is never restored."""
    registry = blessed
    registry.promote(SHELF, 2)
    registry.register(SHELF, registry.load(SHELF, 1)[0], metadata(0.4))
    aliases = registry.root / SHELF / "aliases.json"
    aliases.write_text(json.dumps({"production": 2, "candidate": None, "history": [3]}))
    with pytest.raises(RegistryRefusedError, match="version 3 .* no recorded override"):
        registry.rollback(SHELF)
    assert registry.alias(SHELF, "production") == 2


# --------------------------------------------------------------------------- decisions


def test_decision_is_recorded_once(two_versions):
    registry = two_versions
    decision = {"passed": False, "reasons": ["ndcg@10 0.50 < baseline 0.52 + 0.01"]}
    record = registry.record_decision(SHELF, 1, decision)
    assert record.decision["passed"] is False and record.gate == "fail"
    assert record.decision["reasons"] == decision["reasons"] and "decided_at" in record.decision
    with pytest.raises(RegistryError, match="already recorded"):
        registry.record_decision(SHELF, 1, {"passed": True})
    assert registry.get(SHELF, 1).decision["passed"] is False
    with pytest.raises(RegistryError, match="boolean 'passed'"):
        registry.record_decision(SHELF, 2, {"reasons": []})
    with pytest.raises(RegistryLookupError):
        registry.record_decision(SHELF, 9, {"passed": True})
    assert not (registry.get(SHELF, 2).path / "decision.json").exists()
    version_dir = registry.get(SHELF, 1).path
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "decision.json",
        "model.ubj",
        "ranker.json",
        "version.json",
    ]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["", ".", "..", "../evil", "a/b", "a\\b", ".hidden", "x y", 3])
def test_path_traversal_and_odd_shelf_names_are_refused(registry, rankers, tmp_path, name):
    with pytest.raises(RegistryError, match="invalid shelf name"):
        registry.register(name, rankers[0], metadata())
    with pytest.raises(RegistryError, match="invalid shelf name"):
        registry.get(name, 1)
    with pytest.raises(RegistryError, match="invalid shelf name"):
        registry.production_sha(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_registry_root_prefers_registry_dir(tmp_path):
    assert Settings(data_dir=tmp_path).model_registry_dir == tmp_path / "registry"
    custom = Settings(data_dir=tmp_path, registry_dir=tmp_path / "elsewhere")
    assert custom.model_registry_dir == tmp_path / "elsewhere"


@pytest.fixture
def cli(tmp_path: Path):
    """``homerec models`` mounted on a tiny app that puts Settings in ctx.obj, as the
    main app does; returns an invoke(args) function."""
    app = typer.Typer(cls=ReportingGroup)

    @app.callback()
    def main(ctx: typer.Context) -> None:
        ctx.obj = Settings(data_dir=tmp_path)

    app.add_typer(models_app, name="models")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["models", *args])


@pytest.fixture
def cli_registry(tmp_path: Path, rankers) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(SHELF, rankers[0], metadata(0.5))
    registry.register(SHELF, rankers[1], metadata(0.625))
    registry.record_decision(SHELF, 2, {"passed": True, "reasons": ["beats baseline by 0.1"]})
    return registry


def test_cli_list_shows_versions_aliases_and_gate(cli, cli_registry):
    cli_registry.promote(SHELF, 1, reason="test: no gate", force=True)
    result = cli("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "shelf",
        "version",
        "sha256",
        "registered_at",
        "ndcg",
        "aliases",
        "gate",
    ]
    rows = [line.split() for line in lines[2:]]
    assert [row[1] for row in rows] == ["1", "2"]
    assert rows[0][2] == cli_registry.get(SHELF, 1).sha256[:12]
    assert rows[0][5:] == ["0.5000", "production", "-+override"]
    assert rows[1][5:] == ["0.6250", "-", "pass"]

    as_json = json.loads(cli("list", "--shelf", SHELF, "--json").stdout)
    assert [(r["version"], r["aliases"]) for r in as_json] == [(1, ["production"]), (2, [])]


def test_cli_list_empty_and_unknown_shelf(cli, tmp_path):
    result = cli("list")
    assert result.exit_code == 0 and "no models registered" in result.stdout
    result = cli("list", "--shelf", "nope")
    assert result.exit_code == 2
    assert "'nope'" in result.stderr and result.stdout == ""


def test_cli_show_prints_the_full_record(cli, cli_registry):
    result = cli("show", SHELF, "2")
    assert result.exit_code == 0, result.output
    assert "sha256:          " + cli_registry.get(SHELF, 2).sha256 in result.stdout
    assert "gate:            pass" in result.stdout
    assert "- beats baseline by 0.1" in result.stdout
    assert "train: 2024-01-01 .. 2024-01-03 (2 snapshots)" in result.stdout
    record = json.loads(cli("show", SHELF, "2", "--json", "--verify").stdout)
    assert record["decision"]["reasons"] == ["beats baseline by 0.1"]
    assert record["verified"] is True and record["version"] == 2
    result = cli("show", SHELF)
    assert result.exit_code == 2 and "no production version" in result.stderr
    result = cli("show", SHELF, "9")
    assert result.exit_code == 2 and "no version 9" in result.stderr


def test_cli_promote_and_rollback(cli, cli_registry):
    result = cli("promote", SHELF)
    assert result.exit_code == 2 and "no candidate" in result.stderr
    result = cli("promote", SHELF, "1")
    assert result.exit_code == 2 and "gate decision '-'" in result.stderr
    result = cli("promote", SHELF, "1", "--force")
    assert result.exit_code == 2 and "--force needs --reason" in result.stderr
    assert cli_registry.alias(SHELF, "production") is None
    result = cli("promote", SHELF, "1", "--force", "--reason", "demo day")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (f"{SHELF}: production - -> 1 (override: gate -, not blessed)")
    cli_registry.set_alias(SHELF, "candidate", 2, reason="test")
    result = cli("promote", SHELF, "--reason", "gate passed")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{SHELF}: production 1 -> 2"
    assert cli_registry.events(SHELF)[-1]["reason"] == "gate passed"
    result = cli("rollback", SHELF, "--reason", "incident 42")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{SHELF}: production 2 -> 1"
    assert cli_registry.events(SHELF)[-1]["reason"] == "incident 42"
    result = cli("rollback", SHELF)
    assert result.exit_code == 2 and "no previous production" in result.stderr
    result = cli("promote", "../etc", "1")
    assert result.exit_code == 2 and "invalid shelf name" in result.stderr


def test_cli_promote_refuses_a_tampered_model(cli, cli_registry):
    flip_a_byte(cli_registry.get(SHELF, 2).path / MODEL_FILE)
    result = cli("promote", SHELF, "2")
    assert result.exit_code == 2 and "sha256" in result.stderr
    assert cli_registry.alias(SHELF, "production") is None
