"""Continuous retraining: world window -> features -> training sets -> train -> evaluate ->
gate -> push, as named steps that a scheduler (cron, ``homerec retrain``) or a Kubeflow
pipeline (:mod:`training.jobs.kfp_pipeline`, one task per step) runs through :func:`run_step`.

**Runs.** A run is identified by its window end, the *as-of* instant (``--as-of DATE``, or
the world's end): ``<data_dir>/runs/as-of-<YYYYMMDDTHHMMSSZ>/``. Each finished step writes
``steps/<step>[.<shelf>].json`` (atomically) with its result and the world's fingerprint
(``world.json`` and the size and mtime of each world file). Re-running skips every finished
step whose fingerprint matches, so an interrupted run resumes where it failed and a
finished one is "nothing to do"; a changed world makes the old records stale, and
``force`` re-runs every step.

**As of.** Training, validation and test snapshots end one label horizon before the as-of
instant, so every snapshot and label comes from events before it. Feature tables are built
from the whole log: a snapshot row only uses events before its own timestamp, so the rows
a run reads are those a log cut at the as-of date would give, and the online store keeps
serving the latest values.

**Idempotence.** Features are rebuilt only when the world changed since the last build
(``runs/features.json``). A model trained on a data hash with parameters already
registered is that version, never a duplicate; a version's gate decision is written once,
and pushing a version that is already production changes nothing.

Steps: ``window`` and ``features`` once per run, then per shelf ``training_set``, ``train``
(registers the ``candidate``), ``evaluate`` (candidate, production and heuristic NDCG@k on
the run's test window), ``gate`` (records the decision) and ``push`` (promotes a passed
version; serving polls the registry and reloads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evaluation.gate import evaluate_on_window, evaluation_frame, gate_evaluated, push
from training.core.atomic_io import atomic_write_text
from training.core.errors import UserError
from training.core.instants import parse_instant
from training.core.layout import WorldPaths
from training.core.settings import Settings
from training.core.shelves import Shelf, select_shelves
from training.features.pipeline import prepare_features
from training.features.store import open_store, world_window
from training.jobs.train import find_version, mark_candidate, register_candidate, training_metadata
from training.models.fitting import fit_ranker, ranker_params
from training.models.registry import PRODUCTION, ModelRegistry
from training.training_sets import build_shelf_training_set, load_training_set, shelf_split

logger = logging.getLogger(__name__)

RUN_STEPS = ("window", "features")
"""Steps run once per run."""
SHELF_STEPS = ("training_set", "train", "evaluate", "gate", "push")
"""Steps run once per shelf of a run, in this order."""
FEATURES_MARKER = "features.json"


class RetrainError(UserError, ValueError):
    """A retrain request that cannot run as given (bad as-of date, unknown step or shelf,
    window too short, a step run before the one it needs); the message says which."""


# --------------------------------------------------------------------------- runs


def world_fingerprint(settings: Settings) -> str:
    """SHA-256 over ``world.json`` and the name, size and mtime of every world file:
    changes when the world is regenerated, re-imported or appended to."""
    paths = WorldPaths(settings.world_dir)
    if not paths.root.is_dir():
        raise RetrainError(f"no world in {paths.root}: run `homerec world generate` first")
    digest = hashlib.sha256()
    for path in sorted(p for p in paths.root.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Run:
    """One retraining run: its window end (as-of) and where its records live."""

    settings: Settings
    as_of: datetime
    cut: bool
    """True when ``--as-of`` cut the world window short of the world's end."""
    world: str

    @property
    def run_id(self) -> str:
        return "as-of-" + self.as_of.strftime("%Y%m%dT%H%M%SZ")

    @property
    def directory(self) -> Path:
        return self.settings.data_dir / "runs" / self.run_id

    def training_set_dir(self, shelf: str) -> Path:
        return self.directory / "training_sets" / shelf

    def record_path(self, step: str, shelf: str | None) -> Path:
        name = step if shelf is None else f"{step}.{shelf}"
        return self.directory / "steps" / f"{name}.json"


def parse_as_of(text: str | None) -> datetime | None:
    """``--as-of`` (ISO 8601 only, no offset: UTC) as an aware datetime; None for None/''."""
    return parse_instant(text, "--as-of") if text else None


def open_run(settings: Settings, as_of: datetime | None = None) -> Run:
    """The run ending at ``as_of`` (default: the world's end), checked to lie in the world."""
    world = world_fingerprint(settings)
    start, end = world_window(settings)
    if as_of is not None and not start < as_of <= end:
        raise RetrainError(
            f"--as-of {as_of.isoformat()} is outside the world window "
            f"{start.isoformat()} .. {end.isoformat()}"
        )
    cut = as_of is not None and as_of < end
    return Run(settings, as_of if as_of is not None else end, cut, world)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("%s: unreadable step record, the step runs again (%s)", path, error)
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def step_record(run: Run, step: str, shelf: str | None = None) -> dict[str, Any] | None:
    """The finished record of a step in this run, or None (never run, or stale: the
    world changed since)."""
    record = _read_json(run.record_path(step, shelf))
    if record is None or record.get("world") != run.world:
        return None
    return record


def _required(run: Run, step: str, shelf: str | None = None) -> dict[str, Any]:
    """The result of a step another step needs; RetrainError when it has not run."""
    record = step_record(run, step, shelf)
    if record is None:
        target = step if shelf is None else f"{step} {shelf}"
        raise RetrainError(f"run {run.run_id}: step {target!r} has not finished yet")
    return record["result"]


# --------------------------------------------------------------------------- steps


def _window(run: Run, shelf: Shelf | None) -> dict[str, Any]:
    start, end = world_window(run.settings)
    return {
        "world_start": start.isoformat(),
        "world_end": end.isoformat(),
        "as_of": run.as_of.isoformat(),
        "cut": run.cut,
    }


def _features(run: Run, shelf: Shelf | None) -> dict[str, Any]:
    """Build, apply and materialize, unless the tables were built from this very world."""
    settings = run.settings
    marker_path = settings.data_dir / "runs" / FEATURES_MARKER
    marker = _read_json(marker_path)
    registry_db = settings.feast_dir / "registry.db"
    if (
        marker is not None
        and marker.get("world") == run.world
        and settings.features_dir.is_dir()
        and registry_db.exists()
    ):
        logger.info("features already built from this world at %s: kept", marker.get("built_at"))
        return {"rebuilt": False, "built_at": marker.get("built_at"), "rows": marker.get("rows")}
    rows = prepare_features(settings)
    built_at = datetime.now(UTC).isoformat()
    _write_json(marker_path, {"world": run.world, "built_at": built_at, "rows": rows})
    return {"rebuilt": True, "built_at": built_at, "rows": rows}


def _training_set(run: Run, shelf: Shelf) -> dict[str, Any]:
    split = shelf_split(run.settings, shelf, run.as_of)
    directory = run.training_set_dir(shelf.name)
    training_set = build_shelf_training_set(
        run.settings, open_store(run.settings), shelf, split, directory
    )
    return {
        "directory": str(directory),
        "data_hash": training_set.data_hash,
        "rows": {window: len(frame) for window, frame in training_set.rows.items()},
        "test_first": split.test[0].isoformat(),
        "test_last": split.test[-1].isoformat(),
    }


def _registry(run: Run) -> ModelRegistry:
    return ModelRegistry(run.settings.model_registry_dir)


def _train(run: Run, shelf: Shelf) -> dict[str, Any]:
    """Fit and register the candidate, unless this data was already trained on."""
    built = _required(run, "training_set", shelf.name)
    training_set = load_training_set(Path(built["directory"]))
    registry = _registry(run)
    params = ranker_params(training_set.feature_names)
    existing = find_version(registry, shelf.name, training_set.data_hash, params)
    if existing is not None:
        logger.info(
            "%s: version %d was trained on this data (hash %s): not retrained",
            shelf.name,
            existing.version,
            training_set.data_hash[:12],
        )
        record, created = mark_candidate(registry, existing), False
    else:
        ranker = fit_ranker(training_set)
        extra = {"run": run.run_id, "training_set": built["directory"]}
        metadata = training_metadata(shelf, training_set, ranker, extra)
        record, created = register_candidate(
            registry, shelf.name, ranker, metadata, training_set.reference_rows()
        )
    return {"version": record.version, "registered": created, "sha256": record.sha256}


def _evaluate(run: Run, shelf: Shelf) -> dict[str, Any]:
    version = _required(run, "train", shelf.name)["version"]
    frame = evaluation_frame(Path(_required(run, "training_set", shelf.name)["directory"]), shelf)
    evaluation = evaluate_on_window(_registry(run), shelf, version, frame)
    logger.info(
        "%s: v%d %s %s, heuristic %s, production %s",
        shelf.name,
        version,
        evaluation["metric"],
        evaluation["candidate"],
        evaluation["baseline"],
        evaluation["production"],
    )
    return {"version": version, "evaluation": evaluation}


def _gate(run: Run, shelf: Shelf) -> dict[str, Any]:
    evaluated = _required(run, "evaluate", shelf.name)
    version, evaluation = evaluated["version"], evaluated["evaluation"]
    registry = _registry(run)
    if registry.alias(shelf.name, PRODUCTION) != evaluation["production_version"]:
        logger.info("%s: production changed since evaluation; evaluating again", shelf.name)
        evaluation = _evaluate(run, shelf)["evaluation"]
    decision = gate_evaluated(run.settings, registry, [(shelf, version, evaluation)], run.run_id)
    return {"version": version, "passed": bool(decision[0]["passed"]), "decision": decision[0]}


def _push(run: Run, shelf: Shelf) -> dict[str, Any]:
    gated = _required(run, "gate", shelf.name)
    version, registry = gated["version"], _registry(run)
    if not gated["passed"]:
        return {"version": version, "status": "refused", "reasons": gated["decision"]["reasons"]}
    pushed = push(registry, shelf.name, version, reason=f"evaluation gate passed ({run.run_id})")
    return {"version": version, "status": "pushed" if pushed else "already production"}


STEP_FUNCTIONS: dict[str, Callable[[Run, Any], dict[str, Any]]] = {
    "window": _window,
    "features": _features,
    "training_set": _training_set,
    "train": _train,
    "evaluate": _evaluate,
    "gate": _gate,
    "push": _push,
}


def _check_step(settings: Settings, step: str, shelf: str | None) -> Shelf | None:
    if step not in STEP_FUNCTIONS:
        raise RetrainError(f"unknown step {step!r}; steps: {list(STEP_FUNCTIONS)}")
    if step in RUN_STEPS:
        if shelf:
            raise RetrainError(f"step {step!r} runs once per run, not per shelf")
        return None
    if not shelf:
        raise RetrainError(f"step {step!r} runs per shelf: name the shelf")
    return select_shelves(settings, [shelf])[0]


def execute(run: Run, step: str, shelf: str | None = None, force: bool = False) -> dict[str, Any]:
    """Run one step of ``run`` unless it already finished (``force``: run it again);
    return its result and record it."""
    target = _check_step(run.settings, step, shelf)
    label = step if shelf is None else f"{step} {shelf}"
    record = None if force else step_record(run, step, shelf)
    if record is not None:
        logger.info("%s: %s already done at %s, skipped", run.run_id, label, record["finished_at"])
        return record["result"]
    logger.info("%s: %s ...", run.run_id, label)
    started = time.perf_counter()
    result = STEP_FUNCTIONS[step](run, target)
    seconds = time.perf_counter() - started
    _write_json(
        run.record_path(step, shelf),
        {
            "step": step,
            "shelf": shelf,
            "run": run.run_id,
            "world": run.world,
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": round(seconds, 2),
            "result": result,
        },
    )
    logger.info("%s: %s done in %.1f s", run.run_id, label, seconds)
    return result


def run_step(
    settings: Settings,
    step: str,
    as_of: str | datetime | None = None,
    shelf: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """One step of the run ending at ``as_of``: what each Kubeflow task calls."""
    when = parse_as_of(as_of) if not isinstance(as_of, datetime) else as_of
    return execute(open_run(settings, when), step, shelf or None, force)


# --------------------------------------------------------------------------- whole run


@dataclass(frozen=True)
class RetrainResult:
    """What a run did: per shelf ``{"version", "status", ...}`` from its push step
    (status ``pushed``, ``already production`` or ``refused``), and each step's seconds
    (0 for a step skipped because it had finished)."""

    run_id: str
    shelves: dict[str, dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def refused(self) -> list[str]:
        return [name for name, out in self.shelves.items() if out["status"] == "refused"]

    @property
    def exit_code(self) -> int:
        """0: every shelf pushed or already production; 1: a gate refused a version."""
        return 1 if self.refused else 0


def plan(settings: Settings, as_of: datetime | None, only: list[str] | None) -> tuple[Run, list]:
    """The run and its shelves, every shelf's window checked before any step runs."""
    try:
        shelves = select_shelves(settings, only)
    except ValueError as error:
        raise RetrainError(str(error)) from error
    run = open_run(settings, as_of)
    for shelf in shelves:
        try:
            shelf_split(settings, shelf, run.as_of)
        except ValueError as error:
            raise RetrainError(f"{shelf.name}: {error}") from error
    return run, shelves


def retrain(
    settings: Settings,
    as_of: datetime | None = None,
    only: list[str] | None = None,
    force: bool = False,
) -> RetrainResult:
    """Every step of the run ending at ``as_of`` for the shelves (``only``), in order,
    skipping those already finished (all of them again with ``force``)."""
    run, shelves = plan(settings, as_of, only)
    steps = [(step, None) for step in RUN_STEPS]
    steps += [(step, shelf.name) for shelf in shelves for step in SHELF_STEPS]
    names = [shelf.name for shelf in shelves]
    logger.info("retrain %s: %d steps, shelves %s", run.run_id, len(steps), names)
    seconds: dict[str, float] = {}
    skipped: list[str] = []
    outcomes: dict[str, dict[str, Any]] = {}
    for number, (step, shelf) in enumerate(steps, 1):
        label = step if shelf is None else f"{step} {shelf}"
        logger.info("retrain %s: step %d/%d %s", run.run_id, number, len(steps), label)
        done = None if force else step_record(run, step, shelf)
        started = time.perf_counter()
        result = execute(run, step, shelf, force)
        seconds[label] = 0.0 if done is not None else round(time.perf_counter() - started, 2)
        if done is not None:
            skipped.append(label)
        if step == "push" and shelf is not None:
            outcomes[shelf] = result
    return RetrainResult(run.run_id, outcomes, seconds, skipped)


def shelf_names(settings: Settings, only: list[str] | None = None) -> list[str]:
    """Names of the shelves a run covers (for the pipeline compiler)."""
    return [shelf.name for shelf in select_shelves(settings, only)]
