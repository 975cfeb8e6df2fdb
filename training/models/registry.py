"""Model registry: per shelf, integer versions of immutable rankers and two aliases.

Layout under the registry root (``<data_dir>/registry`` unless configured otherwise)::

    <root>/<shelf>/versions/<N>/model.ubj       the booster (written by save_ranker)
    <root>/<shelf>/versions/<N>/ranker.json     the feature contract, params, metadata
    <root>/<shelf>/versions/<N>/version.json    {version, shelf, sha256, registered_at}
    <root>/<shelf>/versions/<N>/decision.json   the evaluation gate's verdict, written once
    <root>/<shelf>/versions/<N>/profile.json    training-data feature profile (drift), once
    <root>/<shelf>/versions/<N>/overrides.log   one JSON line per forced (unblessed) promote
    <root>/<shelf>/aliases.json                 {"production", "candidate", "history"}
    <root>/<shelf>/events.log                   one JSON line per alias switch

A version is written into a temp directory inside ``versions/`` and renamed to its
number, so readers never see half a version and concurrent registers get distinct
numbers. Versions are never rewritten; only ``decision.json`` and ``profile.json`` are
added, each once. Alias
switches rewrite ``aliases.json`` atomically (temp file, fsync, rename) under a per-shelf
lock, append to ``events.log`` and log at INFO. Moving ``production`` pushes the previous
production onto ``history``; :meth:`ModelRegistry.rollback` pops it back. Moving one
alias never moves the other.

Blessing: only a *servable* version becomes ``production`` — one whose recorded gate
decision is a pass (*blessed*), or one promoted with ``force=True`` and a reason, an
override appended to the version's ``overrides.log`` and to ``events.log``. Anything else
is refused with :class:`RegistryRefusedError`; serving checks the same rule on load.

Integrity: an alias only moves to a version that loads through
:func:`training.models.rankers.load_ranker` (checksum and feature contract verified) and whose
checksum equals the one recorded at registration; :meth:`ModelRegistry.load` applies the
same checks, so a tampered model is never loaded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.core.atomic_io import atomic_write_bytes, fsync_directory
from training.core.constants import ALIASES, CANDIDATE, PRODUCTION
from training.core.errors import UserError
from training.models.rankers import (
    CONTRACT_FILE,
    ModelIntegrityError,
    ShelfRanker,
    load_ranker,
    save_ranker,
)

try:  # POSIX: alias updates are serialized across processes with flock.
    import fcntl
except ImportError:  # pragma: no cover - Windows: serialized within the process only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ALIASES",
    "PRODUCTION",
    "CANDIDATE",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "RegistryLookupError",
    "RegistryIntegrityError",
    "RegistryRefusedError",
    "decision_status",
]

logger = logging.getLogger(__name__)


VERSIONS_DIR = "versions"
VERSION_FILE = "version.json"
DECISION_FILE = "decision.json"
PROFILE_FILE = "profile.json"
OVERRIDES_FILE = "overrides.log"
ALIASES_FILE = "aliases.json"
EVENTS_FILE = "events.log"
LOCK_FILE = ".lock"

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_MAX_REGISTER_ATTEMPTS = 1000
_THREAD_LOCK = threading.Lock()


_ALIAS_HINTS = {
    CANDIDATE: "`homerec train` registers one",
    PRODUCTION: "`homerec gate` pushes a candidate that passes",
}


class RegistryError(UserError, ValueError):
    """The registry cannot do what was asked: an invalid name, a corrupt registry file,
    or a refused write. The message names the shelf, version or file concerned."""


class RegistryLookupError(RegistryError, LookupError):
    """Something asked for does not exist: a shelf, a version, an unset alias, or a
    previous production to roll back to."""


class RegistryIntegrityError(RegistryError, ModelIntegrityError):
    """A registered version fails verification (checksum, feature contract, or a record
    disagreeing with its files); it is never loaded and no alias moves to it."""


class RegistryRefusedError(RegistryError):
    """An alias move the blessing rule forbids: production for a version the gate did not
    pass, without a forced override and its reason."""


def decision_status(decision: Mapping[str, Any] | None) -> str:
    """``"pass"``, ``"fail"`` or ``"-"`` (no decision recorded) for a gate decision."""
    if decision is None:
        return "-"
    return "pass" if decision.get("passed") is True else "fail"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a shelf's ranker, as recorded (the model is not loaded).

    ``split`` is the data window the model was trained on (snapshot times per window,
    from the training metadata); ``decision`` is the evaluation gate's record, or None
    before the gate ran; ``overrides`` are the forced promotes of this version, oldest
    first; ``aliases`` are the aliases currently pointing at this version.
    """

    shelf: str
    version: int
    path: Path
    sha256: str
    registered_at: str
    feature_service: str | None
    feature_names: list[str]
    metrics: dict[str, Any]
    split: dict[str, Any]
    data_hash: str | None
    trained_at: str | None
    params: dict[str, Any]
    best_iteration: int | None
    best_score: float | None
    xgboost_version: str | None
    metadata: dict[str, Any] = field(repr=False)
    decision: dict[str, Any] | None = None
    overrides: tuple[dict[str, Any], ...] = ()
    aliases: tuple[str, ...] = ()

    @property
    def gate(self) -> str:
        """The gate decision as ``pass``, ``fail`` or ``-``."""
        return decision_status(self.decision)

    @property
    def blessed(self) -> bool:
        """True when the evaluation gate passed this version."""
        return self.gate == "pass"

    @property
    def override(self) -> dict[str, Any] | None:
        """The latest forced promote of this version (None when never forced)."""
        return self.overrides[-1] if self.overrides else None

    @property
    def servable(self) -> bool:
        """May be production: blessed, or promoted by a recorded override."""
        return self.blessed or bool(self.overrides)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of this version (paths as strings, aliases as a list)."""
        return {
            "shelf": self.shelf,
            "version": self.version,
            "path": str(self.path),
            "sha256": self.sha256,
            "registered_at": self.registered_at,
            "aliases": list(self.aliases),
            "feature_service": self.feature_service,
            "feature_names": list(self.feature_names),
            "metrics": dict(self.metrics),
            "split": dict(self.split),
            "data_hash": self.data_hash,
            "trained_at": self.trained_at,
            "params": dict(self.params),
            "best_iteration": self.best_iteration,
            "best_score": self.best_score,
            "xgboost_version": self.xgboost_version,
            "decision": self.decision,
            "blessed": self.blessed,
            "overrides": [dict(item) for item in self.overrides],
            "metadata": dict(self.metadata),
        }


# --------------------------------------------------------------------------- helpers


def _check_name(name: Any, what: str) -> str:
    """A shelf name must be one path component of [A-Za-z0-9_.-] not starting with a dot."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("."):
        raise RegistryError(
            f"invalid {what} name {name!r}: use letters, digits, '_', '.' and '-', "
            "not starting with '.'"
        )
    return name


def _check_alias(name: Any) -> str:
    if name not in ALIASES:
        raise RegistryError(f"unknown alias {name!r}; aliases are {list(ALIASES)}")
    return name


def _check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"invalid version {version!r}: versions are integers >= 1")
    return version


def _check_reason(reason: Any) -> str:
    if not isinstance(reason, str):
        raise RegistryError(f"reason must be a string, got {type(reason).__name__}")
    return reason


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _json_bytes(value: Any, what: str) -> bytes:
    """Strict JSON (no NaN), indented, newline-terminated; RegistryError naming ``what``."""
    try:
        text = json.dumps(value, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise RegistryError(f"{what} cannot be written as strict JSON: {err}") from err
    return (text + "\n").encode("utf-8")


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; RegistryError naming the file when unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise RegistryIntegrityError(f"{path}: missing") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RegistryError(f"{path}: corrupt, not readable JSON: {err}") from err
    if not isinstance(value, dict):
        raise RegistryError(f"{path}: corrupt, expected a JSON object")
    return value


def _read_json_lines(path: Path, what: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines log, oldest first ([] when it does not exist)."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise RegistryError(f"{path}:{number}: corrupt {what} line: {err}") from err
    return records


def _append_json_line(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to a log and fsync it."""
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
        log.flush()
        os.fsync(log.fileno())


def _is_version_or_none(value: Any) -> bool:
    return value is None or (not isinstance(value, bool) and isinstance(value, int) and value > 0)


def _empty_aliases() -> dict[str, Any]:
    return {PRODUCTION: None, CANDIDATE: None, "history": []}


# --------------------------------------------------------------------------- registry


class ModelRegistry:
    """Versioned shelf rankers with ``production`` and ``candidate`` aliases under ``root``.

    Reads never modify anything; the root and shelf folders are created by the first
    :meth:`register`. Safe for concurrent use from threads and processes on one machine
    (alias updates hold a per-shelf ``flock``; version numbers come from atomic renames).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # ----------------------------------------------------------------- paths

    def _shelf_dir(self, shelf: str) -> Path:
        return self.root / _check_name(shelf, "shelf")

    def _versions_dir(self, shelf: str) -> Path:
        return self._shelf_dir(shelf) / VERSIONS_DIR

    def _version_dir(self, shelf: str, version: int) -> Path:
        return self._versions_dir(shelf) / str(_check_version(version))

    def _require_shelf(self, shelf: str) -> Path:
        directory = self._shelf_dir(shelf)
        if not (directory / VERSIONS_DIR).is_dir():
            known = ", ".join(self.shelves()) or "none"
            raise RegistryLookupError(
                f"shelf {shelf!r} has no registered model in {self.root} (shelves: {known}): "
                "train one with `homerec train`"
            )
        return directory

    def _require_version(self, shelf: str, version: int) -> Path:
        self._require_shelf(shelf)
        directory = self._version_dir(shelf, version)
        if not directory.is_dir():
            known = self.version_numbers(shelf)
            raise RegistryLookupError(
                f"shelf {shelf!r} has no version {version} (versions: {known or 'none'})"
            )
        return directory

    @contextlib.contextmanager
    def _locked(self, shelf: str) -> Iterator[None]:
        """Hold the shelf's alias lock (flock on ``<shelf>/.lock``; a thread lock elsewhere)."""
        path = self._shelf_dir(shelf) / LOCK_FILE
        if fcntl is None:  # pragma: no cover
            with _THREAD_LOCK:
                yield
            return
        with open(path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # ----------------------------------------------------------------- listing

    def shelves(self) -> list[str]:
        """Names of the shelves with a ``versions`` folder, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if _NAME.fullmatch(entry.name)
            and not entry.name.startswith(".")
            and (entry / VERSIONS_DIR).is_dir()
        )

    def version_numbers(self, shelf: str) -> list[int]:
        """The registered version numbers of ``shelf``, ascending (empty for a new shelf)."""
        directory = self._versions_dir(shelf)
        if not directory.is_dir():
            return []
        return sorted(
            int(entry.name)
            for entry in directory.iterdir()
            if entry.name.isdigit()
            and entry.name == str(int(entry.name))
            and int(entry.name) > 0
            and entry.is_dir()
        )

    def versions(self, shelf: str) -> list[ModelVersion]:
        """Every registered version of ``shelf``, ascending; RegistryError on a corrupt one."""
        self._require_shelf(shelf)
        aliases = self._read_aliases(shelf)
        return [self._record(shelf, number, aliases) for number in self.version_numbers(shelf)]

    def get(self, shelf: str, version: int) -> ModelVersion:
        """The record of one version (JSON files only; the model is not loaded or hashed)."""
        self._require_version(shelf, version)
        return self._record(shelf, version, self._read_aliases(shelf))

    def _record(self, shelf: str, version: int, aliases: Mapping[str, Any]) -> ModelVersion:
        directory = self._version_dir(shelf, version)
        record = self._read_version_file(shelf, version)
        contract_path = directory / CONTRACT_FILE
        contract = _read_json_object(contract_path)
        metadata = contract.get("metadata")
        if not isinstance(metadata, dict):
            raise RegistryError(f"{contract_path}: corrupt, metadata must be a JSON object")
        decision_path = directory / DECISION_FILE
        decision = _read_json_object(decision_path) if decision_path.exists() else None
        overrides = _read_json_lines(directory / OVERRIDES_FILE, "override")
        return ModelVersion(
            shelf=shelf,
            version=version,
            path=directory,
            sha256=record["sha256"],
            registered_at=record["registered_at"],
            feature_service=metadata.get("feature_service"),
            feature_names=list(contract.get("feature_names") or []),
            metrics=dict(metadata.get("metrics") or {}),
            split=dict(metadata.get("split") or {}),
            data_hash=metadata.get("data_hash"),
            trained_at=metadata.get("trained_at"),
            params=dict(contract.get("params") or {}),
            best_iteration=contract.get("best_iteration"),
            best_score=contract.get("best_score"),
            xgboost_version=contract.get("xgboost_version"),
            metadata=metadata,
            decision=decision,
            overrides=tuple(overrides),
            aliases=tuple(name for name in ALIASES if aliases.get(name) == version),
        )

    def _read_version_file(self, shelf: str, version: int) -> dict[str, Any]:
        """``version.json``, checked to describe this shelf and version."""
        path = self._version_dir(shelf, version) / VERSION_FILE
        record = _read_json_object(path)
        problems = []
        if record.get("version") != version:
            problems.append(f"version {record.get('version')!r} != {version}")
        if record.get("shelf") != shelf:
            problems.append(f"shelf {record.get('shelf')!r} != {shelf!r}")
        for key in ("sha256", "registered_at"):
            if not isinstance(record.get(key), str):
                problems.append(f"{key} missing or not a string")
        if problems:
            raise RegistryError(f"{path}: corrupt: {'; '.join(problems)}")
        return record

    # ----------------------------------------------------------------- registering

    def register(
        self, shelf: str, ranker: ShelfRanker, metadata: Mapping[str, Any]
    ) -> ModelVersion:
        """Save ``ranker`` with ``metadata`` as the next version of ``shelf`` and return it.

        The artifact is written with :func:`save_ranker` into a temp folder inside
        ``versions/``, verified with :func:`load_ranker`, and renamed to the next free
        number; a number taken meanwhile by a concurrent register is skipped. No alias
        moves. ``metadata["shelf"]``, when present, must equal ``shelf``.
        """
        _check_name(shelf, "shelf")
        if metadata.get("shelf", shelf) != shelf:
            raise RegistryError(
                f"metadata names shelf {metadata['shelf']!r} but the model is registered "
                f"for shelf {shelf!r}"
            )
        versions_dir = self._versions_dir(shelf)
        versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=versions_dir, prefix=".tmp-"))
        try:
            sha256 = save_ranker(ranker, staging, metadata)
            self._verify_directory(staging, sha256, metadata.get("feature_names"))
            record = {"version": 0, "shelf": shelf, "sha256": sha256, "registered_at": _now()}
            version = self._publish(staging, versions_dir, record)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("%s: registered version %d (sha256 %s)", shelf, version, sha256)
        return self.get(shelf, version)

    def _publish(self, staging: Path, versions_dir: Path, record: dict[str, Any]) -> int:
        """Rename ``staging`` to the next free version number; return the number."""
        for _ in range(_MAX_REGISTER_ATTEMPTS):
            version = max(self.version_numbers(record["shelf"]), default=0) + 1
            data = _json_bytes(record | {"version": version}, VERSION_FILE)
            atomic_write_bytes(staging / VERSION_FILE, data)
            try:
                os.rename(staging, versions_dir / str(version))
            except OSError as err:
                if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    logger.debug("version %d taken by a concurrent register; retrying", version)
                    continue
                raise
            fsync_directory(versions_dir)
            return version
        raise RegistryError(
            f"could not allocate a version in {versions_dir} after "
            f"{_MAX_REGISTER_ATTEMPTS} attempts"
        )

    def record_decision(
        self, shelf: str, version: int, decision: Mapping[str, Any]
    ) -> ModelVersion:
        """Record the evaluation gate's ``decision`` for a version, once.

        ``decision`` is a JSON object with at least ``"passed": bool`` (commonly also
        ``"reasons"``, metrics and thresholds); ``decided_at`` is added when absent. A
        second decision for the same version is refused (RegistryError).
        """
        directory = self._require_version(shelf, version)
        if not isinstance(decision, Mapping) or not isinstance(decision.get("passed"), bool):
            raise RegistryError(
                f"decision for {shelf} version {version} must be a mapping with a boolean 'passed'"
            )
        record = {"decided_at": _now()} | dict(decision)
        data = _json_bytes(record, f"decision for {shelf} version {version}")
        path = directory / DECISION_FILE
        try:
            atomic_write_bytes(path, data, exclusive=True)
        except FileExistsError as err:
            raise RegistryError(
                f"{path}: a decision is already recorded for {shelf} version {version}; "
                "decisions are written once"
            ) from err
        logger.info("%s: version %d gate decision %s", shelf, version, decision_status(record))
        return self.get(shelf, version)

    def record_profile(self, shelf: str, version: int, profile_json: str) -> Path:
        """Store a version's reference feature profile (``profile.json``), once; its path.

        ``profile_json`` is the JSON text of the distribution of the version's features in
        its training data (:func:`evaluation.drift.profile_json`); drift checks compare
        served features with it. It must be a JSON object; a second profile for the same
        version is refused (RegistryError): the reference of a version never changes.
        """
        directory = self._require_version(shelf, version)
        what = f"profile for {shelf} version {version}"
        try:
            parsed = json.loads(profile_json)
        except (TypeError, json.JSONDecodeError) as err:
            raise RegistryError(f"{what} is not JSON text: {err}") from err
        if not isinstance(parsed, dict):
            raise RegistryError(f"{what} must be a JSON object")
        path = directory / PROFILE_FILE
        try:
            atomic_write_bytes(path, profile_json.encode("utf-8"), exclusive=True)
        except FileExistsError as err:
            raise RegistryError(
                f"{path}: a profile is already recorded for {shelf} version {version}; "
                "profiles are written once"
            ) from err
        logger.debug("%s: version %d reference profile recorded", shelf, version)
        return path

    # ----------------------------------------------------------------- integrity

    def _verify_directory(
        self, directory: Path, sha256: str, feature_names: Any
    ) -> tuple[ShelfRanker, dict[str, Any]]:
        """Load through load_ranker, then check the recorded checksum and feature names."""
        try:
            ranker, metadata = load_ranker(directory)
        except ModelIntegrityError as err:
            raise RegistryIntegrityError(
                f"{directory}: refused, integrity check failed: {err}"
            ) from err
        contract = _read_json_object(directory / CONTRACT_FILE)
        if contract.get("sha256") != sha256:
            raise RegistryIntegrityError(
                f"{directory / CONTRACT_FILE}: sha256 {contract.get('sha256')} differs from "
                f"the registered {sha256}"
            )
        if feature_names is not None and list(feature_names) != ranker.feature_names_:
            raise RegistryIntegrityError(
                f"{directory}: metadata feature_names {list(feature_names)} differ from the "
                f"model's feature contract {ranker.feature_names_}"
            )
        return ranker, metadata

    def verify(self, shelf: str, version: int) -> tuple[ShelfRanker, dict[str, Any], ModelVersion]:
        """Load one version with every check (RegistryIntegrityError if any fails)."""
        self._require_version(shelf, version)
        record = self.get(shelf, version)
        ranker, metadata = self._verify_directory(
            record.path, record.sha256, record.metadata.get("feature_names")
        )
        return ranker, metadata, record

    def load(
        self, shelf: str, alias_or_version: str | int = PRODUCTION
    ) -> tuple[ShelfRanker, dict[str, Any], ModelVersion]:
        """Load a verified ranker by alias (``production``/``candidate``) or version
        (int or digits): ``(ranker, metadata, record)``. Raises RegistryLookupError when
        the alias is unset or the version missing, RegistryIntegrityError when corrupt."""
        version = self.resolve(shelf, alias_or_version)
        ranker, metadata, record = self.verify(shelf, version)
        logger.debug("%s: loaded version %d (%s)", shelf, version, alias_or_version)
        return ranker, metadata, record

    def resolve(self, shelf: str, alias_or_version: str | int) -> int:
        """The version number an alias points at, or the version given (checked to exist)."""
        ref = alias_or_version
        if isinstance(ref, str) and ref.isdigit():
            ref = int(ref)
        if isinstance(ref, int):
            self._require_version(shelf, ref)
            return ref
        _check_alias(ref)
        self._require_shelf(shelf)
        version = self.alias(shelf, ref)
        if version is None:
            raise RegistryLookupError(
                f"shelf {shelf!r} has no {ref} version (alias unset): {_ALIAS_HINTS[ref]}"
            )
        return version

    # ----------------------------------------------------------------- aliases

    def _aliases_path(self, shelf: str) -> Path:
        return self._shelf_dir(shelf) / ALIASES_FILE

    def _read_aliases(self, shelf: str) -> dict[str, Any]:
        """``aliases.json`` (all unset when absent), checked; RegistryError naming it."""
        path = self._aliases_path(shelf)
        if not path.exists():
            return _empty_aliases()
        aliases = _read_json_object(path)
        history = aliases.get("history")
        if (
            not all(_is_version_or_none(aliases.get(name)) for name in ALIASES)
            or not isinstance(history, list)
            or not all(_is_version_or_none(item) and item is not None for item in history)
        ):
            raise RegistryError(
                f"{path}: corrupt, expected {{'production': int|null, 'candidate': int|null, "
                "'history': [int, ...]}"
            )
        return {PRODUCTION: aliases.get(PRODUCTION), CANDIDATE: aliases.get(CANDIDATE)} | {
            "history": list(history)
        }

    def aliases(self, shelf: str) -> dict[str, Any]:
        """A copy of ``aliases.json``: production, candidate and the production history."""
        self._require_shelf(shelf)
        return self._read_aliases(shelf)

    def alias(self, shelf: str, name: str) -> int | None:
        """The version ``name`` points at, or None when unset."""
        _check_alias(name)
        return self._read_aliases(shelf)[name]

    def production_sha(self, shelf: str) -> tuple[int, str] | None:
        """``(version, sha256)`` of the production model, from the JSON records alone, or
        None when the shelf has no production model: a cheap poll for "did it change?"."""
        if not (self._shelf_dir(shelf) / VERSIONS_DIR).is_dir():
            return None
        version = self._read_aliases(shelf)[PRODUCTION]
        if version is None:
            return None
        return version, self._read_version_file(shelf, version)["sha256"]

    def events(self, shelf: str) -> list[dict[str, Any]]:
        """The alias switches of ``shelf``, oldest first (from ``events.log``)."""
        return _read_json_lines(self._shelf_dir(shelf) / EVENTS_FILE, "event")

    def _switch(
        self,
        shelf: str,
        action: str,
        reason: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        note: Mapping[str, Any] | None = None,
    ) -> bool:
        """Under the shelf lock: read aliases, apply ``change`` (returns the new aliases,
        may raise to refuse), write them atomically, then log and append one event per
        alias that moved (``note`` added to each). True when anything changed."""
        with self._locked(shelf):
            before = self._read_aliases(shelf)
            after = change({**before, "history": list(before["history"])})
            moved = [name for name in ALIASES if before[name] != after[name]]
            if not moved and before["history"] == after["history"]:
                return False
            atomic_write_bytes(self._aliases_path(shelf), _json_bytes(after, ALIASES_FILE))
            timestamp = _now()
            for name in moved:
                event = {
                    "timestamp": timestamp,
                    "action": action,
                    "alias": name,
                    "from": before[name],
                    "to": after[name],
                    "reason": reason,
                } | dict(note or {})
                _append_json_line(self._shelf_dir(shelf) / EVENTS_FILE, event)
                logger.info(
                    "%s: %s %s %s -> %s (%s)",
                    shelf,
                    action,
                    name,
                    before[name],
                    after[name],
                    reason or "no reason given",
                )
            return True

    def set_alias(
        self, shelf: str, name: str, version: int, reason: str = "", force: bool = False
    ) -> None:
        """Point alias ``name`` at ``version`` after verifying it loads (checksum and
        feature contract). ``production`` follows :meth:`promote`'s blessing rule."""
        _check_alias(name)
        if name == PRODUCTION:
            self.promote(shelf, _check_version(version), reason=reason, force=force)
            return
        _check_reason(reason)
        self.verify(shelf, _check_version(version))

        def change(aliases: dict[str, Any]) -> dict[str, Any]:
            aliases[name] = version
            return aliases

        self._switch(shelf, "set_alias", reason, change)

    def promote(
        self, shelf: str, version: int | None = None, reason: str = "", force: bool = False
    ) -> int:
        """Make ``version`` (default: the candidate) production; return it. The version is
        verified first and must be blessed (gate passed); ``force=True`` with a reason
        promotes any other version and records the override. The candidate alias stays."""
        _check_reason(reason)
        self._require_shelf(shelf)
        if version is None:
            version = self.alias(shelf, CANDIDATE)
            if version is None:
                raise RegistryLookupError(
                    f"shelf {shelf!r} has no candidate to promote; name a version"
                )
        record = self.verify(shelf, _check_version(version))[2]
        override = _override(record, force, reason)

        def change(aliases: dict[str, Any]) -> dict[str, Any]:
            previous = aliases[PRODUCTION]
            if previous is not None and previous != version:
                aliases["history"].append(previous)
            aliases[PRODUCTION] = version
            return aliases

        note = None if override is None else {"override": True, "gate": record.gate}
        moved = self._switch(shelf, "promote", reason, change, note)
        if moved and override is not None:
            # After the alias: a crash in between leaves production on a version without
            # its override, which serving refuses, rather than an override never used.
            _append_json_line(record.path / OVERRIDES_FILE, override)
            logger.warning(
                "%s: version %d forced into production without a gate pass (%s)",
                shelf,
                version,
                reason,
            )
        return version

    def rollback(self, shelf: str, reason: str = "") -> int:
        """Restore the previous production version (popped from history); return it.
        The version rolled back from is not kept in history. The restored version is
        verified first and must be servable (blessed or promoted by an override);
        RegistryLookupError when there is no previous production."""
        _check_reason(reason)
        self._require_shelf(shelf)
        restored: list[int] = []

        def change(aliases: dict[str, Any]) -> dict[str, Any]:
            if not aliases["history"]:
                raise RegistryLookupError(
                    f"shelf {shelf!r} has no previous production version to roll back to"
                )
            target = aliases["history"][-1]
            record = self.verify(shelf, target)[2]
            if not record.servable:
                raise RegistryRefusedError(
                    f"{shelf} version {target} (the previous production) has gate decision "
                    f"{record.gate!r} and no recorded override: not rolled back to"
                )
            aliases["history"].pop()
            aliases[PRODUCTION] = target
            restored.append(target)
            return aliases

        self._switch(shelf, "rollback", reason, change)
        return restored[0]


def _override(record: ModelVersion, force: bool, reason: str) -> dict[str, Any] | None:
    """What promoting ``record`` must record: None for a blessed version; the override
    for a forced one (a reason is required); RegistryRefusedError otherwise."""
    if record.blessed:
        return None
    where = f"{record.shelf} version {record.version}"
    if not force:
        raise RegistryRefusedError(
            f"{where} has gate decision {record.gate!r}: only a version that passed the "
            "evaluation gate becomes production (override with --force --reason TEXT)"
        )
    if not reason.strip():
        raise RegistryRefusedError(f"forcing {where} into production needs a reason")
    return {"timestamp": _now(), "action": "promote", "gate": record.gate, "reason": reason}
