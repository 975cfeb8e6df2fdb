"""Offline evaluation: each shelf's model vs its heuristic baseline (and the oracle on
synthetic worlds) on the test window held out after training.

Groups (one listener at one snapshot) without any relevant candidate are left out: NDCG
is undefined for them, and training sets keep only groups with a relevant candidate.
"""

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.metrics import (
    bootstrap_gap_closed,
    catalog_coverage,
    ndcg_at_k,
    paired_bootstrap_ci,
    summarize,
)
from training.candidates import audience_rows
from training.core.atomic_io import atomic_write_text
from training.core.layout import WorldPaths, read_world_meta, trained_on
from training.core.settings import Settings
from training.core.shelves import Shelf, select_shelves
from training.features.tables import NEW_LISTENER_DAYS
from training.models.fitting import baseline_ranker
from training.models.registry import CANDIDATE, ModelRegistry
from training.training_sets import load_window

logger = logging.getLogger(__name__)

KS = (5, 10)
PRIMARY_K = 10
MIN_SLICE_GROUPS = 20


def oracle_available(settings: Settings) -> bool:
    """Synthetic worlds keep the generator's ground truth; imported ones do not."""
    meta = read_world_meta(WorldPaths(settings.world_dir))
    return meta.get("source") == "synthetic" and WorldPaths(settings.world_dir).truth.exists()


def oracle_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """The (listener_id, item_id, timestamp) pairs the oracle scores, from training rows."""
    return frame[["listener_id", "item_id", "event_timestamp"]].rename(
        columns={"event_timestamp": "timestamp"}
    )


def oracle_ranking_scores(
    settings: Settings, shelf: Shelf, frame: pd.DataFrame, **diagnostics: Any
) -> np.ndarray:
    """The generator's expected engagement under the shelf's label: the best ranking any
    model could produce. ``diagnostics`` go to ``oracle_scores`` (sources, affinity)."""
    from training.world.oracle import oracle_scores

    return oracle_scores(
        settings.world_dir,
        oracle_pairs(frame),
        horizon_days=shelf.label.horizon_days,
        measure=shelf.label.grade,
        **diagnostics,
    )


def system_metrics(frame: pd.DataFrame, score: np.ndarray, catalog_size: int) -> dict[str, float]:
    """NDCG@5/@10, recall@5/@10, MAP and catalog coverage@10 of one system's scores."""
    group, label = frame["group"].to_numpy(), frame["label"].to_numpy()
    metrics = summarize(group, label, score, ks=KS)
    metrics[f"coverage@{PRIMARY_K}"] = catalog_coverage(
        group, frame["item_id"].to_numpy(), score, PRIMARY_K, catalog_size
    )
    return {name: (int(v) if name == "n_groups" else float(v)) for name, v in metrics.items()}


def slice_labels(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """Per-row slice values: listener tenure (new / established), market, platform."""
    tenure = np.where(frame["account_age_days"] <= NEW_LISTENER_DAYS, "new", "established")
    return {
        "tenure": pd.Series(tenure, index=frame.index),
        "market": frame["market"].astype(str),
        "platform": frame["platform"].astype(str),
    }


def slice_metrics(frame: pd.DataFrame, scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """NDCG@10 per slice value for every system; slices under MIN_SLICE_GROUPS are skipped."""
    result: dict[str, Any] = {}
    for name, values in slice_labels(frame).items():
        result[name] = {}
        for value in sorted(values.unique()):
            mask = (values == value).to_numpy()
            groups = frame.loc[mask, "group"].to_numpy()
            if len(np.unique(groups)) < MIN_SLICE_GROUPS:
                continue
            labels = frame.loc[mask, "label"].to_numpy()
            entry: dict[str, Any] = {"groups": int(len(np.unique(groups)))}
            for system, score in scores.items():
                ndcg = ndcg_at_k(groups, labels, score[mask], PRIMARY_K)
                entry[system] = {f"ndcg@{PRIMARY_K}": float(ndcg.mean())}
            result[name][value] = entry
    return result


def compare(frame: pd.DataFrame, scores: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Model − baseline NDCG@10 with a paired bootstrap 95% interval, and the share of the
    baseline→oracle gap the model closes with its interval (when the oracle is known).

    Bootstraps resample listeners, not requests: the test window holds one request per
    listener and snapshot, and a listener's requests are far from independent.
    """
    group, label = frame["group"].to_numpy(), frame["label"].to_numpy()
    per_group = {name: ndcg_at_k(group, label, s, PRIMARY_K) for name, s in scores.items()}
    listeners = frame.groupby("group", sort=True)["listener_id"].first().to_numpy()
    interval = paired_bootstrap_ci(
        per_group["model"], per_group["baseline"], seed=seed, clusters=listeners
    )
    result: dict[str, Any] = {
        f"ndcg@{PRIMARY_K}_diff": float(interval["diff"]),
        "ci95": [float(interval["low"]), float(interval["high"])],
        "interval_excludes_zero": bool(interval["low"] > 0 or interval["high"] < 0),
        "resampled": "listeners",
    }
    if "oracle" in per_group:
        gap = bootstrap_gap_closed(
            per_group["model"],
            per_group["baseline"],
            per_group["oracle"],
            seed=seed,
            clusters=listeners,
        )
        result["gap_closed"] = gap["gap_closed"]
        result["gap_closed_ci95"] = None if gap["low"] is None else [gap["low"], gap["high"]]
    return result


def evaluate_shelf(settings: Settings, shelf: Shelf, with_oracle: bool) -> dict[str, Any]:
    """All metrics of the shelf's ``candidate`` (the version ``homerec train`` registered
    last) on the held-out test window of the training set it was trained on."""
    registry = ModelRegistry(settings.model_registry_dir)
    model, metadata, record = registry.load(shelf.name, CANDIDATE)
    test = load_window(trained_on(settings, shelf.name, metadata), "test")
    test = audience_rows(shelf, test)
    scores = {"model": model.predict(test), "baseline": baseline_ranker(shelf).predict(test)}
    if with_oracle:
        scores["oracle"] = oracle_ranking_scores(settings, shelf, test)
    items = pd.read_parquet(WorldPaths(settings.world_dir).items, columns=["content_type"])
    catalog_size = int(items["content_type"].isin(shelf.content_types).sum())
    report: dict[str, Any] = {
        name: system_metrics(test, score, catalog_size) for name, score in scores.items()
    }
    report["slices"] = slice_metrics(test, scores)
    report["model_vs_baseline"] = compare(test, scores)
    report["version"] = record.version
    report["test_window"] = {
        "first": str(test["event_timestamp"].min()),
        "last": str(test["event_timestamp"].max()),
        "groups": int(test["group"].nunique()),
        "rows": int(len(test)),
    }
    return report


def evaluate_all(settings: Settings, only: list[str] | None = None) -> dict[str, Any]:
    """``{"shelves": {name: report}}`` for every trained shelf (or those in ``only``;
    UnknownShelfError, before anything is read, when one is not declared)."""
    shelves = select_shelves(settings, only)
    with_oracle = oracle_available(settings)
    return {
        "shelves": {shelf.name: evaluate_shelf(settings, shelf, with_oracle) for shelf in shelves}
    }


def latest_report_path(settings: Settings) -> Path:
    """Where the latest evaluation report is kept (the dashboard's slices and metrics)."""
    return settings.data_dir / "evaluation" / "latest.json"


def evaluate_and_save(settings: Settings, only: list[str] | None = None) -> dict[str, Any]:
    """:func:`evaluate_all`, also written (atomically) to :func:`latest_report_path`."""
    report = evaluate_all(settings, only)
    atomic_write_text(latest_report_path(settings), json.dumps(report, indent=1) + "\n")
    return report


def format_table(report: Mapping[str, Any]) -> str:
    """A per-shelf text table: NDCG@10 of model, baseline, oracle, gap closed and the 95%
    intervals of the gap closed and of model − baseline."""
    header = (
        f"{'shelf':<22}{'model':>8}{'baseline':>10}{'oracle':>8}{'gap closed (95% CI)':>24}"
        "  model-baseline 95% CI"
    )
    lines = [header, "-" * len(header)]
    key = f"ndcg@{PRIMARY_K}"
    for name, shelf in report["shelves"].items():
        oracle = shelf.get("oracle", {}).get(key)
        comparison = shelf["model_vs_baseline"]
        low, high = comparison["ci95"]
        lines.append(
            f"{name:<22}{shelf['model'][key]:>8.4f}{shelf['baseline'][key]:>10.4f}"
            f"{'' if oracle is None else f'{oracle:.4f}':>8}"
            f"{_gap_text(comparison):>24}  [{low:+.4f}, {high:+.4f}]"
        )
    return "\n".join(lines)


def _gap_text(comparison: Mapping[str, Any]) -> str:
    gap, interval = comparison.get("gap_closed"), comparison.get("gap_closed_ci95")
    if gap is None:
        return ""
    return f"{gap:.2f}" if interval is None else f"{gap:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"
