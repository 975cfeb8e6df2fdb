"""The evaluation gate: a good model passes and is pushed; deliberately broken models
(trained on shuffled labels, scoring NaN, features in the wrong order) are refused with
their reasons stored in the registry, and never reach production.

Everything runs on ``trained_world`` (its shortcuts model and training set) with a
registry of the test's own, so the shared world's registry stays untouched.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from evaluation.gate import (
    GateConfigError,
    GateRequest,
    evaluation_frame,
    gate_versions,
    push,
    thresholds,
)
from tests.conftest import TrainedWorld, candidate_dir
from training.core.layout import training_set_dir
from training.core.settings import Settings
from training.core.shelves import load_shelves, shelf_by_name
from training.models.fitting import fit_ranker
from training.models.rankers import ShelfRanker, load_ranker
from training.models.registry import PRODUCTION, ModelRegistry, RegistryError
from training.training_sets import TrainingSet, load_training_set

SHELF = shelf_by_name(load_shelves(), "shortcuts")
FAST = {"n_estimators": 30, "early_stopping_rounds": 10}
"""Broken models need not be good at anything: few rounds keep the test fast."""


@pytest.fixture(scope="module")
def gated(trained_world: TrainedWorld, tmp_path_factory: pytest.TempPathFactory):
    """A fresh registry: the trained shortcuts model gated and pushed, then three broken
    versions gated in one call. Returns (settings, registry, good, broken decisions)."""
    settings = trained_world.settings.model_copy(
        update={"registry_dir": tmp_path_factory.mktemp("gate") / "registry"}
    )
    registry = ModelRegistry(settings.model_registry_dir)
    _, metadata = load_ranker(candidate_dir(trained_world.settings, SHELF.name))
    good = registry.register(SHELF.name, trained_world.fitted[SHELF.name], metadata).version
    directory = training_set_dir(settings, SHELF.name)
    frame = evaluation_frame(directory, SHELF)
    [decision] = gate_versions(settings, registry, [GateRequest(SHELF, good, frame)], run="test")
    pushed = push(registry, SHELF.name, good) if decision["passed"] else False

    training_set = load_training_set(directory)
    broken = {
        "shuffled labels": shuffled_label_ranker(training_set),
        "nan output": nan_ranker(trained_world.fitted[SHELF.name]),
        "wrong feature order": reversed_feature_ranker(training_set),
    }
    versions = {
        name: registry.register(
            SHELF.name, ranker, metadata | {"broken": name, "feature_names": ranker.feature_names_}
        ).version
        for name, ranker in broken.items()
    }
    requests = [GateRequest(SHELF, version, frame) for version in versions.values()]
    decisions = gate_versions(settings, registry, requests, run="test")
    return settings, registry, (good, decision, pushed), dict(zip(versions, decisions, strict=True))


def shuffled_label_ranker(training_set: TrainingSet) -> ShelfRanker:
    """Trained on labels shuffled across rows: it learns noise."""
    rng = np.random.default_rng(0)
    rows = dict(training_set.rows)
    rows["train"] = rows["train"].assign(label=rng.permutation(rows["train"]["label"].to_numpy()))
    shuffled = TrainingSet(
        training_set.shelf, rows, training_set.feature_names, training_set.split, "shuffled"
    )
    return fit_ranker(shuffled, params=FAST)


def nan_ranker(ranker: ShelfRanker) -> ShelfRanker:
    """The good model with its first tree's leaves set to NaN: every score is NaN."""
    model = json.loads(bytes(ranker.booster_.save_raw(raw_format="json")))
    tree = model["learner"]["gradient_booster"]["model"]["trees"][0]
    leaves = [i for i, child in enumerate(tree["left_children"]) if child == -1]
    for key in ("split_conditions", "base_weights"):
        for i in leaves:
            tree[key][i] = float("nan")
    booster = xgb.Booster()
    booster.load_model(bytearray(json.dumps(model).encode()))
    broken = ShelfRanker(**ranker.get_params())
    broken.__dict__.update({k: v for k, v in ranker.__dict__.items() if k.endswith("_")})
    broken.booster_ = booster
    return broken


def reversed_feature_ranker(training_set: TrainingSet) -> ShelfRanker:
    """Trained with its feature contract in reverse order: serving builds the other order."""
    names = list(reversed(training_set.feature_names))
    ranker = ShelfRanker(feature_names=names, **FAST)
    train, valid = training_set.rows["train"], training_set.rows["valid"]
    return ranker.fit(
        train,
        train["label"].to_numpy(),
        train["group"].to_numpy(),
        eval_set=(valid, valid["label"].to_numpy(), valid["group"].to_numpy()),
    )


def test_a_good_model_passes_every_check_and_is_pushed(gated):
    """The trained shortcuts model clears the floor, the heuristic (there is no production
    yet) and the fresh-process infra check; it becomes production."""
    _, registry, (good, decision, pushed), _ = gated
    assert decision["passed"] is True, decision["reasons"]
    assert decision["checks"] == {
        "floor": True,
        "vs_production": True,
        "vs_heuristic": True,
        "infra": True,
    }
    assert decision["reasons"] == []
    assert decision["candidate"] > decision["baseline"]
    assert decision["infra"]["rows"] > 0, "infra validation scored nothing"
    assert pushed and registry.alias(SHELF.name, PRODUCTION) == good
    assert registry.get(SHELF.name, good).gate == "pass"


@pytest.mark.parametrize(
    ("broken", "failed_check", "reason"),
    [
        ("shuffled labels", "vs_production", "trails production"),
        ("nan output", "infra", "not finite"),
        ("wrong feature order", "infra", "feature order differs"),
    ],
)
def test_a_broken_model_is_refused_with_its_reasons_stored(gated, broken, failed_check, reason):
    """Each broken model fails the check that guards against it; the decision and its
    reasons are stored with the version; production stays the good model."""
    _, registry, (good, _, _), decisions = gated
    decision = decisions[broken]
    assert decision["passed"] is False
    assert decision["checks"][failed_check] is False
    assert any(reason in text for text in decision["reasons"]), decision["reasons"]
    version = next(
        record.version
        for record in registry.versions(SHELF.name)
        if record.metadata.get("broken") == broken
    )
    stored = registry.get(SHELF.name, version)
    assert stored.gate == "fail" and stored.decision["reasons"] == decision["reasons"]
    assert registry.alias(SHELF.name, PRODUCTION) == good
    with pytest.raises(RegistryError, match="only a version that passed"):
        push(registry, SHELF.name, version)


def test_nan_scores_fail_the_offline_checks_too(gated):
    """NaN scores have no NDCG: every offline check fails, saying why."""
    decision = gated[3]["nan output"]
    assert decision["candidate"] is None
    assert not any(decision["checks"][name] for name in ("floor", "vs_production", "vs_heuristic"))
    assert any("cannot be computed" in reason for reason in decision["reasons"])


def test_a_decided_version_keeps_its_decision(gated):
    """Gating a version again returns the recorded decision (decisions are written once)."""
    settings, registry, (good, decision, _), _ = gated
    frame = evaluation_frame(training_set_dir(settings, SHELF.name), SHELF)
    [again] = gate_versions(settings, registry, [GateRequest(SHELF, good, frame)])
    assert again == registry.get(SHELF.name, good).decision
    assert again["decided_at"] and again["candidate"] == decision["candidate"]


def test_thresholds_take_per_shelf_overrides_and_refuse_unknown_keys(tmp_path: Path):
    """Settings give the defaults; gate_overrides replace them for one shelf only."""
    settings = Settings(
        data_dir=tmp_path, gate_min_ndcg=0.3, gate_overrides={"shortcuts": {"min_lift": 0.05}}
    )
    assert thresholds(settings, "shortcuts").min_lift == 0.05
    assert thresholds(settings, "shortcuts").min_ndcg == 0.3
    assert thresholds(settings, "try_something_else").min_lift == settings.gate_min_lift
    bad = Settings(data_dir=tmp_path, gate_overrides={"shortcuts": {"floor": 0.5}})
    with pytest.raises(GateConfigError, match="unknown keys \\['floor'\\]"):
        thresholds(bad, "shortcuts")
    with pytest.raises(GateConfigError, match="unknown shelves"):
        thresholds(Settings(data_dir=tmp_path, gate_overrides={"nope": {}}), "shortcuts")
