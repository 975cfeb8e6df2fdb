"""The evaluation gate: a registered version becomes ``production`` only if it earns it.

TFX's Evaluator/Pusher semantics, on the shelf's held-out test window (the last window of
its training set, restricted to the shelf's audience as in ``homerec evaluate``). A version
passes when all four checks pass:

(a) **floor** — its NDCG@k (the shelf's ``k``) is at least ``min_ndcg``;
(b) **vs production** — it is at least the current production version's NDCG@k *on the
    same window* minus ``tolerance`` (passes when there is no production version, or when
    production cannot score the window: a model that cannot be evaluated protects nothing);
(c) **vs heuristic** — it beats the shelf's heuristic by at least ``min_lift``;
(d) **infra** — in a fresh process (``python -m evaluation.gate validate``) it loads with
    every integrity check, its feature contract equals what serving builds (the shelf's
    FeatureService, then the candidate signals, *in that order*), and it scores requests
    built from the online store (stage 1 + model features, as serving reads them) with
    finite scores.

Thresholds come from ``Settings.gate_min_ndcg`` / ``gate_tolerance`` / ``gate_min_lift``,
overridden per shelf by ``Settings.gate_overrides``. The decision (every check, its
numbers, the thresholds and the reasons of a refusal) is stored with the version by
:meth:`ModelRegistry.record_decision`, once: gating a version already decided returns the
recorded decision. :func:`push` promotes only a passed version.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureStore

from evaluation.metrics import mean_ndcg
from training.candidates import audience_rows, generate_candidates, read_candidate_inputs
from training.core.errors import UserError
from training.core.layout import WorldPaths, trained_on
from training.core.settings import Settings
from training.core.shelves import Shelf, select_shelves, shelf_by_name
from training.features.store import OnlineReader, open_store
from training.models.fitting import baseline_ranker
from training.models.rankers import ModelIntegrityError, load_ranker
from training.models.registry import CANDIDATE, PRODUCTION, ModelRegistry, RegistryError
from training.training_sets import load_window, model_feature_names

logger = logging.getLogger(__name__)

THRESHOLD_KEYS = ("min_ndcg", "tolerance", "min_lift")
PROBE_ACTIVE_LISTENERS = 3
"""Infra validation scores the most active listeners ..."""
PROBE_NEW_LISTENERS = 2
"""... and the newest sign-ups (in the audience of new-listener shelves)."""


class GateConfigError(UserError, ValueError):
    """Gate thresholds that cannot be used; the message names the shelf and the key."""


@dataclass(frozen=True)
class GateThresholds:
    """The numbers a version must meet on a shelf (see the module docstring)."""

    min_ndcg: float
    tolerance: float
    min_lift: float


def thresholds(settings: Settings, shelf: str) -> GateThresholds:
    """The settings' gate thresholds, with the shelf's overrides applied."""
    unknown_shelves = sorted(
        set(settings.gate_overrides) - {s.name for s in select_shelves(settings)}
    )
    if unknown_shelves:
        raise GateConfigError(f"gate_overrides names unknown shelves {unknown_shelves}")
    override = settings.gate_overrides.get(shelf, {})
    unknown = sorted(set(override) - set(THRESHOLD_KEYS))
    if unknown:
        raise GateConfigError(
            f"gate_overrides[{shelf!r}] has unknown keys {unknown}; keys: {list(THRESHOLD_KEYS)}"
        )
    values = {
        "min_ndcg": settings.gate_min_ndcg,
        "tolerance": settings.gate_tolerance,
        "min_lift": settings.gate_min_lift,
    } | {key: float(value) for key, value in override.items()}
    return GateThresholds(**values)


# --------------------------------------------------------------------------- offline checks


def evaluation_frame(directory: Path, shelf: Shelf) -> pd.DataFrame:
    """The test window of the training set in ``directory``, restricted to the shelf's
    audience: the rows every version of the shelf is compared on."""
    test = load_window(directory, "test")
    return audience_rows(shelf, test)


def _window(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "first": str(frame["event_timestamp"].min()),
        "last": str(frame["event_timestamp"].max()),
        "groups": int(frame["group"].nunique()),
        "rows": int(len(frame)),
    }


def _score(ranker: Any, frame: pd.DataFrame, k: int) -> tuple[float | None, str | None]:
    """``(NDCG@k, None)`` or ``(None, why not)`` when the ranker fails or gives non-finite
    scores (NDCG is undefined for NaN scores)."""
    try:
        scores = np.asarray(ranker.predict(frame), dtype=np.float64)
    except Exception as error:  # any failure to score is a refusal, not a crash
        return None, f"scoring failed: {type(error).__name__}: {error}"
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        return None, f"{bad} of {len(scores)} scores are not finite"
    return mean_ndcg(frame, scores, k), None


def evaluate_on_window(
    registry: ModelRegistry, shelf: Shelf, version: int, frame: pd.DataFrame
) -> dict[str, Any]:
    """NDCG@k of the version, of the production version (if another one) and of the
    heuristic on the same rows, with why any of them could not be scored."""
    metric = f"ndcg@{shelf.k}"
    result: dict[str, Any] = {"metric": metric, "window": _window(frame)}
    try:
        ranker, _, _ = registry.load(shelf.name, version)
    except (RegistryError, ModelIntegrityError) as error:
        result["candidate"], result["candidate_error"] = None, f"does not load: {error}"
    else:
        result["candidate"], result["candidate_error"] = _score(ranker, frame, shelf.k)
    result["baseline"], _ = _score(baseline_ranker(shelf), frame, shelf.k)
    production = registry.alias(shelf.name, PRODUCTION)
    result["production_version"] = production
    result["production"] = result["production_error"] = None
    if production is not None and production != version:
        try:
            prod_ranker, _, _ = registry.load(shelf.name, production)
        except (RegistryError, ModelIntegrityError) as error:
            result["production_error"] = f"does not load: {error}"
        else:
            result["production"], result["production_error"] = _score(prod_ranker, frame, shelf.k)
    return result


# --------------------------------------------------------------------------- infra check


def probe_listeners(settings: Settings) -> list[str]:
    """Listeners infra validation scores: the most active ones and the newest sign-ups."""
    paths = WorldPaths(settings.world_dir)
    events = pd.read_parquet(paths.events, columns=["listener_id"])
    active = events["listener_id"].value_counts().index[:PROBE_ACTIVE_LISTENERS]
    listeners = pd.read_parquet(paths.listeners, columns=["listener_id", "signup_at"])
    newest = listeners.sort_values("signup_at")["listener_id"].iloc[-PROBE_NEW_LISTENERS:]
    return list(dict.fromkeys(map(str, [*active, *newest])))


def online_rows(store: FeatureStore, shelf: Shelf, listener_ids: Sequence[str]) -> pd.DataFrame:
    """Stage-1 candidates and model features of ``listener_ids`` from the online store,
    one request each, read as serving reads them (``get_online_features``)."""
    reader = OnlineReader(store)
    requests = pd.DataFrame({"group": range(len(listener_ids)), "listener_id": list(listener_ids)})
    inputs = read_candidate_inputs(reader, requests, [shelf])
    rows = generate_candidates(shelf, inputs).merge(requests, on="group", how="left")
    features = reader.read(
        store.get_feature_service(shelf.feature_service), rows[["listener_id", "item_id"]]
    )
    return pd.concat([rows, features.drop(columns=[c for c in features if c in rows])], axis=1)


def _contract_problem(names: list[str], expected: list[str]) -> str | None:
    """Why a model's ordered feature names differ from what serving builds, if they do."""
    if names == expected:
        return None
    missing = [name for name in expected if name not in names]
    extra = [name for name in names if name not in expected]
    if missing or extra:
        return f"feature contract differs from serving's: missing {missing}, unexpected {extra}"
    position = next(i for i, (a, b) in enumerate(zip(names, expected, strict=True)) if a != b)
    return (
        f"feature order differs from serving's at position {position}: model has "
        f"{names[position]!r}, serving builds {expected[position]!r}"
    )


def validate_model(
    settings: Settings, store: FeatureStore, shelf: Shelf, directory: Path, listeners: list[str]
) -> dict[str, Any]:
    """Load the model in ``directory`` and score ``listeners`` from the online store:
    ``{"ok", "error", "rows", "listeners", "seconds"}``. Runs in the fresh process."""
    started = time.perf_counter()
    result: dict[str, Any] = {"ok": False, "error": None, "rows": 0, "listeners": len(listeners)}
    try:
        ranker, metadata = load_ranker(directory)
        trained_on = metadata.get("feature_service")
        problem = None
        if trained_on != shelf.feature_service:
            problem = (
                f"trained on FeatureService {trained_on!r}, the shelf serves "
                f"{shelf.feature_service!r}"
            )
        problem = problem or _contract_problem(
            list(ranker.feature_names_), model_feature_names(store, shelf)
        )
        if problem is None:
            frame = online_rows(store, shelf, listeners)
            scores = np.asarray(ranker.predict(frame), dtype=np.float64)
            result["rows"] = len(scores)
            bad = int((~np.isfinite(scores)).sum())
            if not len(scores):
                problem = f"no candidates from the online store for listeners {listeners}"
            elif bad:
                problem = f"{bad} of {len(scores)} online scores are not finite"
        result["ok"], result["error"] = problem is None, problem
    except Exception as error:  # whatever breaks here would break serving: report it
        result["error"] = f"{type(error).__name__}: {error}"
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def _child_settings(settings: Settings) -> str:
    """The settings as JSON for the validation process (no secrets)."""
    return settings.model_dump_json(exclude={"serve_admin_token"})


def infra_validate(settings: Settings, targets: Sequence[tuple[str, Path]]) -> dict[str, Any]:
    """Validate each ``(shelf, model directory)`` in one fresh Python process; results
    keyed by directory (as a string). A crashed or timed-out process fails every target."""
    command = [sys.executable, "-m", "evaluation.gate", "validate"]
    command += ["--settings", _child_settings(settings)]
    for shelf, directory in targets:
        command += ["--target", f"{shelf}={directory}"]
    logger.info("infra validation of %d model(s) in a fresh process", len(targets))
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=settings.gate_infra_timeout_seconds,
            check=False,
        )
        results = json.loads(done.stdout.strip().splitlines()[-1])
        if not isinstance(results, dict):
            raise ValueError("expected a JSON object")
        return results
    except subprocess.TimeoutExpired:
        problem = f"validation process timed out after {settings.gate_infra_timeout_seconds} s"
    except (ValueError, IndexError):
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        problem = f"validation process exited with {done.returncode} without a result: {tail}"
    return {str(d): {"ok": False, "error": problem, "rows": 0} for _, d in targets}


# --------------------------------------------------------------------------- decision


def _passes(value: float | None, bound: float) -> bool:
    return value is not None and math.isfinite(value) and value >= bound - 1e-12


def decide(
    evaluation: Mapping[str, Any], infra: Mapping[str, Any], limits: GateThresholds
) -> dict[str, Any]:
    """The gate's verdict from the window evaluation and the infra validation: every check
    with its numbers, and the reasons of a refusal (empty when passed)."""
    metric, candidate = evaluation["metric"], evaluation["candidate"]
    shown = "unscored" if candidate is None else f"{candidate:.4f}"
    reasons: list[str] = []
    if candidate is None:
        reasons.append(f"{metric} cannot be computed: {evaluation['candidate_error']}")
    checks: dict[str, bool] = {"floor": _passes(candidate, limits.min_ndcg)}
    if candidate is not None and not checks["floor"]:
        reasons.append(f"{metric} {shown} is below the floor {limits.min_ndcg:.4f}")

    production = evaluation["production"]
    if production is None:
        checks["vs_production"] = candidate is not None
    else:
        checks["vs_production"] = _passes(candidate, production - limits.tolerance)
        if candidate is not None and not checks["vs_production"]:
            reasons.append(
                f"{metric} {shown} trails production v{evaluation['production_version']} "
                f"({production:.4f}) on the same window by more than {limits.tolerance:.4f}"
            )

    baseline = evaluation["baseline"]
    checks["vs_heuristic"] = baseline is not None and _passes(candidate, baseline + limits.min_lift)
    if candidate is not None and not checks["vs_heuristic"]:
        reasons.append(
            f"{metric} {shown} does not beat the heuristic ({baseline:.4f}) by "
            f"{limits.min_lift:.4f}"
        )

    checks["infra"] = bool(infra.get("ok"))
    if not checks["infra"]:
        reasons.append(f"infra validation failed: {infra.get('error')}")
    return {
        "passed": all(checks.values()),
        "reasons": reasons,
        "checks": checks,
        "metric": metric,
        "candidate": candidate,
        "baseline": baseline,
        "production": production,
        "production_version": evaluation["production_version"],
        "production_error": evaluation["production_error"],
        "window": evaluation["window"],
        "thresholds": {
            "min_ndcg": limits.min_ndcg,
            "tolerance": limits.tolerance,
            "min_lift": limits.min_lift,
        },
        "infra": dict(infra),
    }


@dataclass(frozen=True)
class GateRequest:
    """One version to gate, and the rows (its shelf's test window) to judge it on."""

    shelf: Shelf
    version: int
    frame: pd.DataFrame


def gate_versions(
    settings: Settings, registry: ModelRegistry, requests: Sequence[GateRequest], run: str = ""
) -> list[dict[str, Any]]:
    """Evaluate each request's version on its window, then decide and record (see
    :func:`gate_evaluated`)."""
    evaluated = [
        (r.shelf, r.version, evaluate_on_window(registry, r.shelf, r.version, r.frame))
        for r in requests
    ]
    return gate_evaluated(settings, registry, evaluated, run)


def gate_evaluated(
    settings: Settings,
    registry: ModelRegistry,
    evaluated: Sequence[tuple[Shelf, int, Mapping[str, Any]]],
    run: str = "",
) -> list[dict[str, Any]]:
    """Decide and record the gate decision of each ``(shelf, version, evaluation)``
    (``evaluation`` from :func:`evaluate_on_window`); infra validation of all of them runs
    in one fresh process. A version already decided keeps its recorded decision."""
    decided: dict[int, dict[str, Any]] = {}
    pending: list[tuple[int, Shelf, int, Mapping[str, Any], GateThresholds, Path]] = []
    for index, (shelf, version, evaluation) in enumerate(evaluated):
        record = registry.get(shelf.name, version)
        if record.decision is not None:
            logger.info(
                "%s: version %d already decided (%s at %s)",
                shelf.name,
                version,
                record.gate,
                record.decision.get("decided_at"),
            )
            decided[index] = record.decision
            continue
        limits = thresholds(settings, shelf.name)  # config errors before any work
        pending.append((index, shelf, version, evaluation, limits, record.path))
    if pending:
        infra = infra_validate(settings, [(p[1].name, p[5]) for p in pending])
        for index, shelf, version, evaluation, limits, path in pending:
            decision = decide(evaluation, infra[str(path)], limits) | {"run": run}
            record = registry.record_decision(shelf.name, version, decision)
            _log_decision(shelf.name, version, decision)
            decided[index] = record.decision or decision
    return [decided[index] for index in range(len(evaluated))]


def _log_decision(shelf: str, version: int, decision: Mapping[str, Any]) -> None:
    if decision["passed"]:
        logger.info(
            "%s: version %d passed the gate (%s %.4f, heuristic %.4f, production %s)",
            shelf,
            version,
            decision["metric"],
            decision["candidate"],
            decision["baseline"],
            decision["production"],
        )
    else:
        logger.warning(
            "%s: version %d refused by the gate: %s", shelf, version, "; ".join(decision["reasons"])
        )


def push(registry: ModelRegistry, shelf: str, version: int, reason: str = "gate passed") -> bool:
    """Make a version that passed the gate production (True if the alias moved); the
    registry refuses (RegistryRefusedError) a version whose decision is not a pass."""
    if registry.alias(shelf, PRODUCTION) == version:
        return False
    registry.promote(shelf, version, reason=reason)
    return True


@dataclass(frozen=True)
class GateOutcome:
    """What gating a shelf's candidate did."""

    shelf: str
    version: int | None
    passed: bool | None
    pushed: bool
    decision: dict[str, Any] | None


def gate_candidates(settings: Settings, only: list[str] | None = None) -> list[GateOutcome]:
    """Gate each shelf's ``candidate`` on the test window of the training set it was
    trained on (``metadata["training_set"]``, else ``<data_dir>/training_sets/<shelf>``)
    and push those that pass."""
    shelves = select_shelves(settings, only)
    registry = ModelRegistry(settings.model_registry_dir)
    requests: list[GateRequest] = []
    outcomes: dict[str, GateOutcome] = {}
    registered = registry.shelves()
    for shelf in shelves:
        version = registry.alias(shelf.name, CANDIDATE) if shelf.name in registered else None
        if version is None:
            logger.info("%s: no candidate to gate", shelf.name)
            outcomes[shelf.name] = GateOutcome(shelf.name, None, None, False, None)
            continue
        metadata = registry.get(shelf.name, version).metadata
        directory = trained_on(settings, shelf.name, metadata)
        requests.append(GateRequest(shelf, version, evaluation_frame(directory, shelf)))
    decisions = gate_versions(settings, registry, requests, run="gate")
    for request, decision in zip(requests, decisions, strict=True):
        name, version = request.shelf.name, request.version
        passed = bool(decision.get("passed"))
        pushed = passed and push(registry, name, version, reason="evaluation gate passed")
        outcomes[name] = GateOutcome(name, version, passed, pushed, decision)
    return [outcomes[shelf.name] for shelf in shelves]


def describe(outcome: GateOutcome) -> str:
    """One line per outcome for the command line."""
    if outcome.version is None:
        return f"{outcome.shelf}: no candidate"
    decision = outcome.decision or {}
    value = decision.get("candidate")
    score = "unscored" if value is None else f"{value:.4f}"
    if outcome.passed:
        action = "pushed to production" if outcome.pushed else "already production"
        return (
            f"{outcome.shelf}: v{outcome.version} passed ({decision.get('metric')} {score}, "
            f"heuristic {decision.get('baseline', 0):.4f}), {action}"
        )
    return f"{outcome.shelf}: v{outcome.version} refused: " + "; ".join(decision.get("reasons", []))


# --------------------------------------------------------------------------- fresh process


def _parse_target(text: str) -> tuple[str, Path]:
    shelf, sep, directory = text.partition("=")
    if not sep or not shelf or not directory:
        raise argparse.ArgumentTypeError(f"target must be SHELF=MODEL_DIR, got {text!r}")
    return shelf, Path(directory)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evaluation.gate validate --settings JSON --target SHELF=DIR ...``: print
    one JSON object ``{dir: result}``; exit 0 when every model validates, else 1."""
    parser = argparse.ArgumentParser(prog="python -m evaluation.gate")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="load and score models in this process")
    validate.add_argument("--settings", required=True, help="Settings as JSON")
    validate.add_argument("--target", action="append", type=_parse_target, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = Settings(**json.loads(args.settings))
    store = open_store(settings)
    listeners = probe_listeners(settings)
    shelves = select_shelves(settings)
    results = {
        str(directory): validate_model(
            settings, store, shelf_by_name(shelves, shelf), directory, listeners
        )
        for shelf, directory in args.target
    }
    sys.stdout.write(json.dumps(results) + "\n")
    return 0 if all(result["ok"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
