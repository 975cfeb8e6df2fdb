"""Where each shelf's oracle edge comes from, and how much of it observable features reach.

Reads a data dir after ``make demo`` (a synthetic world: its ``truth/`` is needed) and, on
each shelf's held-out test window (the rows ``homerec evaluate`` scores), prints NDCG@10
and the share of the baseline→oracle gap closed by:

- the baseline, the production model and the oracle (as ``homerec evaluate``);
- the oracle counting only some play sources: repeats of familiar items, the taste
  channel, or the popularity channels (popular, onboarding, editorial);
- the oracle with every hidden quantity but one: the familiar-pair affinity, replaced by
  its best estimate from the shelf's model features (a gradient-boosted regression fitted
  on the train window's familiar pairs; R² on the test window's). Shelves whose test rows
  hold fewer than MIN_MEMBERS familiar pairs are skipped.

Hidden truth is used here only to diagnose; it never becomes a feature.

    .venv/bin/python benchmarks/quality_bound.py [--data-dir data] [--shelf NAME] [--json]
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from evaluation.metrics import ndcg_at_k
from evaluation.report import PRIMARY_K, oracle_available, oracle_pairs, oracle_ranking_scores
from training.candidates import audience_rows
from training.core.layout import training_set_dir
from training.core.settings import Settings
from training.core.shelves import Shelf, load_shelves
from training.models.fitting import baseline_ranker
from training.models.registry import CANDIDATE, ModelRegistry
from training.training_sets import TrainingSet, load_training_set
from training.world.behaviour import PLAY_SOURCES, POPULARITY_CHANNELS
from training.world.oracle import familiar_affinity

MIN_MEMBERS = 1000
SOURCE_VARIANTS = {
    "oracle: repeats only": ["repeat"],
    "oracle: taste channel only": ["taste"],
    "oracle: popularity channels only": list(POPULARITY_CHANNELS),
}


def _ndcg(frame: pd.DataFrame, score: np.ndarray) -> float:
    group, label = frame["group"].to_numpy(), frame["label"].to_numpy()
    return float(ndcg_at_k(group, label, score, PRIMARY_K).mean())


def _model_inputs(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The model features, text columns as categories (what the regression can split on)."""
    inputs = frame[names].copy()
    for name in names:
        if not pd.api.types.is_numeric_dtype(inputs[name]):
            inputs[name] = inputs[name].astype("category")
    return inputs


def estimated_affinity(
    world_dir: Path, training_set: TrainingSet, test: pd.DataFrame
) -> tuple[pd.DataFrame, float, int] | None:
    """Affinity estimates of the test rows that are familiar pairs, their R², and how many:
    a regression of the hidden affinity on the model features of the train window's
    familiar pairs. None when the test rows hold fewer than MIN_MEMBERS familiar pairs."""
    train = training_set.rows["train"]
    train_truth = familiar_affinity(world_dir, oracle_pairs(train))
    test_truth = familiar_affinity(world_dir, oracle_pairs(test))
    train_member, test_member = ~np.isnan(train_truth), ~np.isnan(test_truth)
    if test_member.sum() < MIN_MEMBERS:
        return None
    names = training_set.feature_names
    regression = xgb.XGBRegressor(
        n_estimators=400,
        max_depth=6,
        learning_rate=0.08,
        subsample=0.9,
        enable_categorical=True,
        tree_method="hist",
        n_jobs=2,
        random_state=0,
    )
    regression.fit(_model_inputs(train[train_member], names), train_truth[train_member])
    members = test[test_member]
    estimate = regression.predict(_model_inputs(members, names)).astype(np.float64)
    truth = test_truth[test_member]
    r2 = 1.0 - float(np.mean((estimate - truth) ** 2) / np.var(truth))
    return oracle_pairs(members).assign(affinity=estimate), r2, int(test_member.sum())


def shelf_bounds(settings: Settings, shelf: Shelf) -> dict[str, Any]:
    """NDCG@10 and gap closed of every variant on the shelf's test window."""
    training_set = load_training_set(training_set_dir(settings, shelf.name))
    test = audience_rows(shelf, training_set.rows["test"])
    model, _, _ = ModelRegistry(settings.model_registry_dir).load(shelf.name, CANDIDATE)
    scores = {
        "baseline": baseline_ranker(shelf).predict(test),
        "model": model.predict(test),
        "oracle": oracle_ranking_scores(settings, shelf, test),
    }
    for name, sources in SOURCE_VARIANTS.items():
        scores[name] = oracle_ranking_scores(settings, shelf, test, sources=sources)
    result: dict[str, Any] = {"groups": int(test["group"].nunique())}
    estimates = estimated_affinity(settings.world_dir, training_set, test)
    if estimates is not None:
        affinity, r2, members = estimates
        name = "oracle: affinity estimated from features"
        scores[name] = oracle_ranking_scores(settings, shelf, test, affinity=affinity)
        result["affinity_estimate"] = {"r2": r2, "familiar_test_rows": members}
    ndcg = {name: _ndcg(test, score) for name, score in scores.items()}
    gap = ndcg["oracle"] - ndcg["baseline"]
    result["variants"] = {
        name: {
            f"ndcg@{PRIMARY_K}": value,
            "gap_closed": (value - ndcg["baseline"]) / gap if gap else None,
        }
        for name, value in ndcg.items()
    }
    return result


def _table(report: dict[str, Any]) -> str:
    lines = []
    for shelf, result in report["shelves"].items():
        lines.append(f"{shelf} ({result['groups']} test groups)")
        for name, value in result["variants"].items():
            closed = value["gap_closed"]
            closed_text = "n/a" if closed is None else f"{closed:+.3f}"
            lines.append(f"  {name:<42} ndcg@10 {value['ndcg@10']:.4f}  gap closed {closed_text}")
        if "affinity_estimate" in result:
            estimate = result["affinity_estimate"]
            lines.append(
                f"  affinity estimate: R² {estimate['r2']:.3f} over"
                f" {estimate['familiar_test_rows']} familiar test rows"
            )
    lines.append(f"({report['seconds']:.0f} s; sources: {', '.join(PLAY_SOURCES)})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--shelf", action="append", help="only this shelf (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = Settings(data_dir=args.data_dir, feature_repo=REPO / "feature_repo")
    if not oracle_available(settings):
        sys.exit(f"{settings.world_dir}: not a synthetic world with truth/ (run make demo)")
    shelves = [s for s in load_shelves(settings.shelves_file) if s.name in (args.shelf or [s.name])]
    started = time.perf_counter()
    report: dict[str, Any] = {"shelves": {s.name: shelf_bounds(settings, s) for s in shelves}}
    report["seconds"] = time.perf_counter() - started
    print(json.dumps(report, indent=2) if args.json else _table(report))


if __name__ == "__main__":
    main()
