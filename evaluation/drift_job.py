"""The drift job: each shelf's production model's training profile vs its served features.

*Reference profile* of a model version: :func:`evaluation.drift.build_profile` of the rows
of the **train window** of the training set it was fitted on, restricted to the model's
feature names (``ranker.feature_names_``), stored with the version in the registry as
``profile.json`` (written once, :meth:`ModelRegistry.record_profile`). It is what the
model learned the world looks like, so serving data that no longer looks like it is the
alert. A version registered without a profile gets one rebuilt from the saved training set
``<data_dir>/training_sets/<shelf>/`` when that set is provably the one it was trained on
(its ``data_hash`` equals the version's); the rebuilt profile is then recorded, so later
runs read it.

*Served window*: the rows of the served-feature log (:mod:`training.features.served_log`) of the
shelf with ``since <= served_at < until`` (UTC), served by any model version: the features'
distribution does not depend on which model scored them.

*Training windows* (optional): consecutive windows of the saved training set compared with
each other, ``train -> valid`` and ``valid -> test``, all counted on the train window's
buckets; drift there means the world already moved while the model was being trained.

Thresholds come from a YAML file (:func:`load_drift_config`, default ``drift.yaml`` next
to this module). A shelf breaches when a feature's Chebyshev distance exceeds its threshold
or a reference feature is missing from the served rows (see :func:`evaluation.drift.compare`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from evaluation.drift import (
    DriftReport,
    Profile,
    build_profile,
    compare,
    load_profile,
    profile_json,
    profile_on,
)
from training.core.atomic_io import atomic_write_text
from training.core.errors import UserError
from training.core.layout import training_set_dir
from training.core.settings import Settings
from training.features.served_log import LOG_COLUMNS, LoggedRows, read_logged_rows
from training.models.registry import PRODUCTION, PROFILE_FILE, ModelRegistry, RegistryError
from training.training_sets import TrainingSet, load_training_set

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_WINDOW",
    "DriftConfig",
    "DriftConfigError",
    "DriftJobError",
    "DriftRun",
    "ShelfDrift",
    "check_shelf",
    "check_window",
    "latest_report_path",
    "load_drift_config",
    "reference_profile",
    "run_drift",
    "save_reference_profile",
    "served_rows",
    "skipped_lines",
    "summary_lines",
    "training_window_reports",
    "write_latest",
]

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = timedelta(days=1)
"""The window checked when ``--since`` is not given: the day before ``--until``."""
DEFAULT_CONFIG_FILE = Path(__file__).with_name("drift.yaml")
"""The thresholds ``homerec drift`` uses without ``--config``."""
TRAINING_PAIRS = (("train", "valid"), ("valid", "test"))
"""Consecutive training windows compared by ``--compare-training`` (earlier -> later)."""


class DriftJobError(UserError, ValueError):
    """A drift check cannot run: no production model, no reference profile, no served rows
    in the window, a bad time. The message names the shelf, file or value concerned."""


class DriftConfigError(DriftJobError):
    """The thresholds file is unreadable or invalid; the message names the file and key."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DriftConfig:
    """Drift thresholds: ``thresholds[feature]`` where given, else ``default_threshold``.

    A threshold is a Chebyshev distance in [0, 1]; a feature drifts when its distance is
    strictly greater. ``source`` names where the values came from (for messages).
    """

    default_threshold: float = 0.1
    thresholds: Mapping[str, float] = field(default_factory=dict)
    source: str = "defaults"

    def __post_init__(self) -> None:
        values = {"default_threshold": self.default_threshold, **self.thresholds}
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DriftConfigError(f"{self.source}: threshold {name!r} must be a number")
            if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
                raise DriftConfigError(
                    f"{self.source}: threshold {name!r} must be in [0, 1], got {value}"
                )

    def thresholds_for(self, profile: Profile) -> dict[str, float]:
        """The per-feature thresholds that apply to ``profile``'s features."""
        return {name: float(v) for name, v in self.thresholds.items() if name in profile.features}


def load_drift_config(path: Path | None = None) -> DriftConfig:
    """Thresholds from a YAML file (default :data:`DEFAULT_CONFIG_FILE`) with the keys
    ``default_threshold`` (number, default 0.1) and ``thresholds`` (feature -> number);
    any other key, or a value that is not a number in [0, 1], is a DriftConfigError."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DriftConfigError(f"drift config {path}: cannot read: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise DriftConfigError(f"drift config {path}: not valid YAML: {err}") from err
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise DriftConfigError(f"drift config {path}: expected a mapping at the top level")
    unknown = sorted(map(str, set(raw) - {"default_threshold", "thresholds"}))
    if unknown:
        raise DriftConfigError(
            f"drift config {path}: unknown keys {unknown}; keys are default_threshold, thresholds"
        )
    thresholds = raw.get("thresholds") or {}
    if not isinstance(thresholds, dict) or not all(isinstance(k, str) for k in thresholds):
        raise DriftConfigError(f"drift config {path}: thresholds must map feature names to numbers")
    return DriftConfig(raw.get("default_threshold", 0.1), dict(thresholds), str(path))


# --------------------------------------------------------------------------- reference profiles


def request_count(rows: pd.DataFrame) -> int | None:
    """Requests ``rows`` belong to: distinct ``request_id`` (served-feature log) or
    ``group`` (training set); None when rows carry neither."""
    for column in ("request_id", "group"):
        if column in rows:
            return int(rows[column].nunique())
    return None


def save_reference_profile(
    registry: ModelRegistry,
    shelf: str,
    version: int,
    reference_rows: pd.DataFrame,
    feature_names: Sequence[str] | None = None,
) -> Path:
    """Profile ``reference_rows`` (the training set's reference: the train window's
    candidates for the shelf's audience, whatever their labels, i.e. the population the
    version is served) over the version's features and record it with the version, once;
    returns the file's path.

    ``feature_names`` default to the version's feature contract and, when given, must equal
    it: a profile over other features could not be compared with what the model is served.
    """
    record = registry.get(shelf, version)
    names = list(record.feature_names if feature_names is None else feature_names)
    if names != record.feature_names:
        raise DriftJobError(
            f"{shelf} version {version}: feature names {names} differ from the model's "
            f"feature contract {record.feature_names}"
        )
    profile = build_profile(reference_rows, names, requests=request_count(reference_rows))
    return registry.record_profile(shelf, version, profile_json(profile))


def _rebuild_profile(
    registry: ModelRegistry, shelf: str, version: int, training_dir: Path
) -> Profile:
    """The reference of a version registered without one, from the saved training set's
    reference rows when its data hash proves it is the version's; recorded so the next
    run reads it."""
    record = registry.get(shelf, version)
    missing = f"{shelf} version {version} has no reference profile ({record.path / PROFILE_FILE})"
    if not (training_dir / "training_set.json").exists():
        raise DriftJobError(f"{missing} and there is no saved training set at {training_dir}")
    training_set = load_training_set(training_dir)
    if record.data_hash is None or training_set.data_hash != record.data_hash:
        raise DriftJobError(
            f"{missing}, and the training set at {training_dir} is not the one it was trained "
            f"on (data_hash {training_set.data_hash[:12]} != {str(record.data_hash)[:12]}); "
            "record one with evaluation.drift_job.save_reference_profile"
        )
    logger.info(
        "%s: rebuilding version %d's reference profile from %s", shelf, version, training_dir
    )
    path = record.path / PROFILE_FILE
    try:
        save_reference_profile(registry, shelf, version, training_set.reference_rows())
    except RegistryError:
        if not path.exists():  # another run recording it meanwhile is fine
            raise
    return load_profile(path)


def reference_profile(
    registry: ModelRegistry,
    shelf: str,
    version_or_alias: str | int = PRODUCTION,
    training_dir: Path | None = None,
) -> Profile:
    """The reference profile recorded with a version (by number or alias).

    When none is recorded and ``training_dir`` is given, it is rebuilt from the training
    set saved there (its reference rows) if that set's data hash equals the version's (and
    then recorded); otherwise DriftJobError says what is missing. Registry lookups raise
    RegistryError.
    """
    version = registry.resolve(shelf, version_or_alias)
    path = registry.get(shelf, version).path / PROFILE_FILE
    if path.exists():
        return load_profile(path)
    if training_dir is None:
        raise DriftJobError(
            f"{shelf} version {version} has no reference profile ({path}); record one with "
            "evaluation.drift_job.save_reference_profile after registering the version"
        )
    return _rebuild_profile(registry, shelf, version, training_dir)


# --------------------------------------------------------------------------- windows


def check_window(since: pd.Timestamp, until: pd.Timestamp) -> None:
    """DriftJobError unless ``since < until`` (the window ``[since, until)`` is not empty)."""
    if not since < until:
        raise DriftJobError(
            f"empty window: since {since.isoformat()} is not before until {until.isoformat()}"
        )


def _as_utc(values: pd.Series) -> pd.Series:
    """Timestamps as UTC (naive ones are UTC, as the feature log writes them)."""
    values = pd.to_datetime(values)
    return values.dt.tz_localize(UTC) if values.dt.tz is None else values.dt.tz_convert(UTC)


def served_rows(log_dir: Path, shelf: str, since: pd.Timestamp, until: pd.Timestamp) -> LoggedRows:
    """Logged rows of ``shelf`` with ``since <= served_at < until`` (and the log files that
    could not be read); DriftJobError when there are no rows."""
    check_window(since, until)
    logged = read_logged_rows(log_dir, shelf)
    log = logged.rows
    if len(log):
        served_at = _as_utc(log["served_at"])
        log = log[((served_at >= since) & (served_at < until)).to_numpy()]
    if not len(log):
        torn = f" ({len(logged.unreadable)} unreadable files skipped)" if logged.unreadable else ""
        raise DriftJobError(
            f"{shelf}: no served features logged in [{since.isoformat()}, {until.isoformat()}) "
            f"under {Path(log_dir) / shelf}{torn}"
        )
    return LoggedRows(log.reset_index(drop=True), logged.unreadable)


def training_window_reports(
    training_set: TrainingSet, feature_names: Sequence[str], config: DriftConfig
) -> dict[str, DriftReport]:
    """``"train->valid"`` and ``"valid->test"`` reports of ``training_set``: each window
    counted on the train window's buckets, each compared with the window before it."""
    train = training_set.rows["train"]
    reference = build_profile(train, list(feature_names), requests=request_count(train))
    profiles = {"train": reference}
    profiles |= {
        w: profile_on(reference, training_set.rows[w], request_count(training_set.rows[w]))
        for w in ("valid", "test")
    }
    thresholds = config.thresholds_for(reference)
    return {
        f"{before}->{after}": compare(
            profiles[before], profiles[after], thresholds, config.default_threshold
        )
        for before, after in TRAINING_PAIRS
    }


# --------------------------------------------------------------------------- the job


def _window(since: pd.Timestamp, until: pd.Timestamp) -> dict[str, str]:
    return {"since": since.isoformat(), "until": until.isoformat()}


@dataclass(frozen=True)
class ShelfDrift:
    """One shelf's drift check: the production ``model_version``'s reference against the
    rows served in ``[since, until)`` (``report``), and optionally consecutive training
    windows (``training``, keyed ``"train->valid"``, ``"valid->test"``). Served-log files
    that could not be read were skipped and are named in ``unreadable_files``."""

    shelf: str
    model_version: int
    since: pd.Timestamp
    until: pd.Timestamp
    report: DriftReport
    training: Mapping[str, DriftReport] = field(default_factory=dict)
    unreadable_files: tuple[str, ...] = ()

    @property
    def breach(self) -> bool:
        """Served features drifted or went missing, or (when compared) training windows did."""
        return self.report.breach or any(r.breach for r in self.training.values())

    def to_dict(self) -> dict[str, Any]:
        """``report.to_dict()`` plus ``model_version``, ``window`` and, when compared,
        ``training`` (pair -> report dict); ``breach`` is the served report's."""
        data = self.report.to_dict() | {
            "model_version": self.model_version,
            "window": _window(self.since, self.until),
            "unreadable_files": list(self.unreadable_files),
        }
        if self.training:
            data["training"] = {pair: r.to_dict() for pair, r in self.training.items()}
        return data


def check_shelf(
    settings: Settings,
    shelf: str,
    since: pd.Timestamp,
    until: pd.Timestamp,
    config: DriftConfig,
    compare_training: bool = False,
) -> ShelfDrift:
    """Drift of ``shelf``'s production model (see the module docstring); DriftJobError or
    RegistryError when it cannot be checked. Logs a warning naming drifted features."""
    registry = ModelRegistry(settings.model_registry_dir)
    version = registry.resolve(shelf, PRODUCTION)
    training_dir = training_set_dir(settings, shelf)
    reference = reference_profile(registry, shelf, version, training_dir)
    logged = served_rows(settings.served_features_dir, shelf, since, until)
    rows = logged.rows
    requests = request_count(rows)
    rows = rows.drop(columns=[c for c in LOG_COLUMNS if c in rows and c not in reference.features])
    report = compare(
        reference, rows, config.thresholds_for(reference), config.default_threshold, requests
    )
    training: dict[str, DriftReport] = {}
    if compare_training:
        names = list(reference.features)
        training = training_window_reports(load_training_set(training_dir), names, config)
    unreadable = tuple(
        str(path.relative_to(settings.served_features_dir)) for path in logged.unreadable
    )
    result = ShelfDrift(shelf, version, since, until, report, training, unreadable)
    for what, checked in {"served features": report, **training}.items():
        if checked.breach:
            logger.warning(
                "drift: %s version %d, %s: %s",
                shelf,
                version,
                what,
                ", ".join(checked.drifted_features),
            )
    return result


@dataclass(frozen=True)
class DriftRun:
    """The drift checks of one ``homerec drift`` run: ``shelves`` checked, ``errors``
    (shelf -> message) of shelves that could not be checked."""

    shelves: Mapping[str, ShelfDrift]
    errors: Mapping[str, str]
    checked_at: str

    @property
    def breach(self) -> bool:
        """Any checked shelf breached."""
        return any(result.breach for result in self.shelves.values())

    def to_dict(self) -> dict[str, Any]:
        """``{"shelves": {shelf: ShelfDrift.to_dict()}, "breach", "errors", "checked_at"}``."""
        return {
            "shelves": {name: result.to_dict() for name, result in self.shelves.items()},
            "breach": self.breach,
            "errors": dict(self.errors),
            "checked_at": self.checked_at,
        }


def run_drift(
    settings: Settings,
    shelves: Sequence[str],
    since: pd.Timestamp,
    until: pd.Timestamp,
    config: DriftConfig,
    compare_training: bool = False,
) -> DriftRun:
    """:func:`check_shelf` for each shelf; a shelf that cannot be checked is recorded in
    ``errors`` and the others still run, so one quiet shelf never hides another's drift."""
    results: dict[str, ShelfDrift] = {}
    errors: dict[str, str] = {}
    for shelf in shelves:
        try:
            results[shelf] = check_shelf(settings, shelf, since, until, config, compare_training)
        except (ValueError, FileNotFoundError) as err:  # DriftJobError, RegistryError, ...
            errors[shelf] = str(err)  # the caller reports them (the CLI: one line each)
    known = {
        name
        for result in results.values()
        for name in (*(f.name for f in result.report.features), *result.report.missing_features)
    }
    unused = sorted(set(config.thresholds) - known)
    if results and unused:
        logger.warning("drift: %s names features no checked model has: %s", config.source, unused)
    return DriftRun(results, errors, datetime.now(UTC).isoformat())


def latest_report_path(settings: Settings) -> Path:
    """Where the latest run's report is kept for the dashboard."""
    return settings.data_dir / "drift" / "latest.json"


def write_latest(settings: Settings, run: DriftRun) -> Path:
    """Write ``run.to_dict()`` to :func:`latest_report_path` atomically; returns the path."""
    path = latest_report_path(settings)
    atomic_write_text(path, json.dumps(run.to_dict(), indent=1, allow_nan=False) + "\n")
    return path


# --------------------------------------------------------------------------- text


def skipped_lines(shelf: str, result: ShelfDrift) -> list[str]:
    """One line per served-log file the check had to skip."""
    return [
        f"{shelf}: skipped unreadable served-log file {name} (torn or corrupt)"
        for name in result.unreadable_files
    ]


def summary_lines(run: DriftRun) -> list[str]:
    """One line per shelf: rows compared, the largest distance and any drifted features."""
    lines = []
    for shelf, result in run.shelves.items():
        report = result.report
        worst = max(report.features, key=lambda f: f.distance, default=None)
        largest = "-"
        if worst is not None:
            largest = (
                f"{worst.name} {worst.distance:.3f} (threshold {worst.threshold},"
                f" noise floor {worst.noise_floor:.3f})"
            )
        drifted = ", ".join(report.drifted_features) or "none"
        lines.append(
            f"{shelf} v{result.model_version}: {report.current_rows} served rows vs"
            f" {report.reference_rows} training rows; largest distance {largest};"
            f" drifted: {drifted}"
        )
    lines += [
        line for shelf, result in run.shelves.items() for line in skipped_lines(shelf, result)
    ]
    lines += [f"{shelf}: not checked: {message}" for shelf, message in run.errors.items()]
    return lines
