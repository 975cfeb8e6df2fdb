"""Hyperparameter sweep: a grid of ShelfRanker parameters from a YAML file, each point fitted
on a shelf's train window and scored on its validation window; the best point's model is
registered as the shelf's ``candidate`` (the evaluation gate decides whether it ships).

The training set is the one of a retraining run (:mod:`training.jobs.retrain`'s ``window``,
``features`` and ``training_set`` steps, skipped when finished), so a sweep and a retrain
of the same as-of compare models on the same data. Locally the points run one after the
other (:func:`sweep`); the Kubeflow sweep pipeline runs one task per point
(:func:`run_trial`) and registers the best with :func:`register_best`, the same functions.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from evaluation.metrics import validation_ndcg
from training.core.errors import UserError
from training.core.settings import Settings
from training.core.shelves import select_shelves
from training.jobs.retrain import execute, open_run, parse_as_of, plan
from training.jobs.train import register_candidate, training_metadata
from training.models.fitting import fit_ranker
from training.models.rankers import ShelfRanker
from training.models.registry import ModelRegistry
from training.training_sets import TrainingSet, load_training_set

logger = logging.getLogger(__name__)

DEFAULT_SWEEP_FILE = Path(__file__).with_name("sweep.yaml")
FIXED_PARAMS = ("feature_names", "seed", "n_jobs", "log_every")
"""ShelfRanker parameters a grid may not vary (the contract, determinism, resources)."""


class SweepConfigError(UserError, ValueError):
    """A sweep file that cannot be used; the message names the file and the key."""


def load_grid(path: Path | None = None) -> list[dict[str, Any]]:
    """Every combination of the file's ``grid`` (parameter -> list of values), in file
    order; each key must be a ShelfRanker parameter a sweep may vary."""
    path = path or DEFAULT_SWEEP_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise SweepConfigError(f"{path}: sweep file not found") from error
    except yaml.YAMLError as error:
        raise SweepConfigError(f"{path}: not valid YAML: {error}") from error
    grid = raw.get("grid") if isinstance(raw, dict) else None
    if not isinstance(grid, dict) or not grid:
        raise SweepConfigError(f"{path}: expected a non-empty mapping 'grid: {{param: [values]}}'")
    allowed = set(ShelfRanker(feature_names=["x"]).get_params()) - set(FIXED_PARAMS)
    for name, values in grid.items():
        if name not in allowed:
            raise SweepConfigError(
                f"{path}: grid.{name} is not a parameter a sweep may vary; choose from "
                f"{sorted(allowed)}"
            )
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"{path}: grid.{name} must be a non-empty list of values")
    names = list(grid)
    return [dict(zip(names, point, strict=True)) for point in itertools.product(*grid.values())]


@dataclass(frozen=True)
class Trial:
    """One grid point of one shelf: its validation NDCG@k and fit time."""

    shelf: str
    params: dict[str, Any]
    metric: str
    valid_ndcg: float
    best_iteration: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "shelf": self.shelf,
            "params": self.params,
            "metric": self.metric,
            "valid_ndcg": self.valid_ndcg,
            "best_iteration": self.best_iteration,
            "seconds": self.seconds,
        }


def _fit(training_set: TrainingSet, shelf_k: int, params: Mapping[str, Any]) -> tuple:
    started = time.perf_counter()
    ranker = fit_ranker(training_set, params=params)
    score = validation_ndcg(ranker, training_set.rows["valid"], shelf_k)
    return ranker, score, time.perf_counter() - started


def _shelf_training_set(
    settings: Settings, as_of: datetime | None, shelf: str
) -> tuple[TrainingSet, str]:
    """The run's training set of ``shelf`` and its directory (the ``window``, ``features``
    and ``training_set`` steps run first unless finished)."""
    run = open_run(settings, as_of)
    for step, target in (("window", None), ("features", None), ("training_set", shelf)):
        result = execute(run, step, target)
    return load_training_set(Path(result["directory"])), result["directory"]


def run_trial(
    settings: Settings, shelf: str, params: Mapping[str, Any], as_of: str | None = None
) -> dict[str, Any]:
    """Fit one grid point and score it on the validation window (a pipeline task)."""
    target = select_shelves(settings, [shelf])[0]
    training_set, _ = _shelf_training_set(settings, parse_as_of(as_of), shelf)
    ranker, score, seconds = _fit(training_set, target.k, params)
    trial = Trial(
        shelf, dict(params), f"ndcg@{target.k}", score, ranker.best_iteration_, round(seconds, 2)
    )
    logger.info("%s %s: valid %s %.4f", shelf, json.dumps(params), trial.metric, score)
    return trial.to_dict()


def register_best(
    settings: Settings,
    shelf: str,
    trials: Sequence[Mapping[str, Any]],
    as_of: str | datetime | None = None,
    ranker: ShelfRanker | None = None,
) -> dict[str, Any]:
    """Register the best trial's model (refitted, deterministically, unless ``ranker`` is
    it) as the shelf's candidate, its metadata naming the sweep; return the version."""
    when = as_of if isinstance(as_of, datetime) or as_of is None else parse_as_of(as_of)
    best = max(trials, key=lambda trial: trial["valid_ndcg"])
    target = select_shelves(settings, [shelf])[0]
    training_set, directory = _shelf_training_set(settings, when, shelf)
    if ranker is None:
        ranker = fit_ranker(training_set, params=best["params"])
    sweep = {"params": best["params"], "valid_ndcg": best["valid_ndcg"], "trials": len(trials)}
    extra = {"sweep": sweep, "training_set": directory}
    metadata = training_metadata(target, training_set, ranker, extra)
    registry = ModelRegistry(settings.model_registry_dir)
    record, created = register_candidate(
        registry, shelf, ranker, metadata, training_set.reference_rows()
    )
    return {"shelf": shelf, "version": record.version, "registered": created, "best": best}


def sweep(
    settings: Settings,
    grid_file: Path | None = None,
    only: list[str] | None = None,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """Every grid point for every shelf (``only``), one after the other; the best of each
    shelf registered as its candidate. ``{"trials": [...], "best": {shelf: {...}}}``."""
    grid = load_grid(grid_file)
    _, shelves = plan(settings, as_of, only)
    trials: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    for shelf in shelves:
        training_set, _ = _shelf_training_set(settings, as_of, shelf.name)
        top: tuple[float, ShelfRanker] | None = None
        shelf_trials = []
        for number, params in enumerate(grid, 1):
            logger.info("sweep %s: point %d/%d %s", shelf.name, number, len(grid), params)
            ranker, score, seconds = _fit(training_set, shelf.k, params)
            trial = Trial(
                shelf.name,
                params,
                f"ndcg@{shelf.k}",
                score,
                ranker.best_iteration_,
                round(seconds, 2),
            )
            shelf_trials.append(trial.to_dict())
            if top is None or score > top[0]:
                top = (score, ranker)
        trials += shelf_trials
        assert top is not None  # load_grid refuses an empty grid
        best[shelf.name] = register_best(settings, shelf.name, shelf_trials, as_of, top[1])
    return {"trials": trials, "best": best}


def format_trials(result: Mapping[str, Any]) -> str:
    """The sweep as a text table: shelf, parameters, validation NDCG@k, best marked."""
    chosen = {
        (name, json.dumps(entry["best"]["params"], sort_keys=True))
        for name, entry in result["best"].items()
    }
    rows = [
        (
            trial["shelf"],
            " ".join(f"{key}={value}" for key, value in trial["params"].items()),
            f"{trial['valid_ndcg']:.4f}",
            str(trial["best_iteration"]),
            "*" if (trial["shelf"], json.dumps(trial["params"], sort_keys=True)) in chosen else "",
        )
        for trial in result["trials"]
    ]
    header = ("shelf", "params", "valid ndcg@k", "best iter", "best")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    for name, entry in result["best"].items():
        state = "registered" if entry["registered"] else "already registered"
        lines.append(f"{name}: best {entry['best']['params']} -> v{entry['version']} ({state})")
    return "\n".join(lines)
