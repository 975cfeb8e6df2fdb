"""Shelf rankers: one XGBoost learning-to-rank model per Home shelf, and the heuristic it replaces.

Both rankers follow the scikit-learn estimator conventions (``__init__`` stores
parameters, ``fit`` returns ``self``, learned state ends in ``_``) and share one protocol,
:class:`Ranker`: ``fit(X, y, group, eval_set)`` and ``predict(X) -> scores``, higher
ranks first. Evaluation therefore treats the pre-ML heuristic and the model alike.

Inputs, shared by both:

- ``X``: a DataFrame with one row per (listener, snapshot, candidate card); extra columns
  are ignored, a missing one is a ``ValueError`` naming it.
- ``y``: graded relevance per row, small non-negative integers (0..4); gain is linear.
- ``group``: the group id of each row (one group = one listener at one snapshot), not
  group sizes. Rows of a group need not be contiguous.

Persistence (:func:`save_ranker` / :func:`load_ranker`) writes two files and never
pickles: ``model.ubj``, the booster in XGBoost's UBJSON format, and ``ranker.json``, the
contract: format version, SHA-256 of the model file, the ordered feature names, the
learned categories, the constructor parameters, the best iteration and the caller's
metadata. Loading verifies the checksum and the contract against the booster and raises
:class:`ModelIntegrityError` on any mismatch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from training.core.atomic_io import atomic_write_bytes
from training.core.errors import UserError

__all__ = [
    "CONTRACT_FILE",
    "FORMAT_VERSION",
    "MODEL_FILE",
    "HeuristicRanker",
    "ModelIntegrityError",
    "Ranker",
    "ShelfRanker",
    "load_ranker",
    "save_ranker",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.ubj"
CONTRACT_FILE = "ranker.json"
_CONTRACT_KEYS = (
    "format",
    "model_file",
    "sha256",
    "feature_names",
    "categories",
    "params",
    "best_iteration",
    "metadata",
)

EvalSet = tuple[pd.DataFrame, np.ndarray, np.ndarray]


class ModelIntegrityError(UserError, ValueError):
    """A saved ranker cannot be trusted: a file is missing or corrupt, or the contract in
    ``ranker.json`` disagrees with the model file. The message names the file and the problem."""


class Ranker(Protocol):
    """What evaluation needs from a shelf ranker: fit on groups, score rows."""

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        group: np.ndarray,
        eval_set: EvalSet | None = None,
    ) -> Ranker: ...

    def predict(self, X: pd.DataFrame) -> np.ndarray: ...


# --------------------------------------------------------------------------- features


def _require_columns(X: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise ValueError naming every column of ``columns`` that ``X`` lacks."""
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"X must be a pandas DataFrame, got {type(X).__name__}")
    missing = [column for column in columns if column not in X.columns]
    if missing:
        raise ValueError(f"X is missing feature column(s): {', '.join(map(repr, missing))}")


def _is_numeric(series: pd.Series) -> bool:
    """Numbers and booleans are numeric features; a category dtype never is."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return False
    return pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype)


def _as_strings(series: pd.Series) -> pd.Series:
    """Values as pandas strings, missing values as ``pd.NA``."""
    return series.astype("string")


def _as_float(name: str, series: pd.Series, dtype: type[np.floating]) -> np.ndarray:
    """A numeric column as floats of ``dtype`` with NaN for missing values."""
    if not _is_numeric(series):
        try:
            series = pd.to_numeric(series.astype(object), errors="raise")
        except (TypeError, ValueError) as err:
            raise ValueError(f"column {name!r} must be numeric: {err}") from err
    return series.to_numpy(dtype=dtype, na_value=np.nan)


def _learn_categories(X: pd.DataFrame, feature_names: Sequence[str]) -> dict[str, list[str]]:
    """Sorted unique non-null values of every string, object or category column."""
    categories: dict[str, list[str]] = {}
    for name in feature_names:
        series = X[name]
        if _is_numeric(series):
            continue
        if pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(
            series
        ):
            raise ValueError(f"feature {name!r} has unsupported dtype {series.dtype}")
        values = sorted(str(value) for value in _as_strings(series).dropna().unique())
        if not values:
            raise ValueError(
                f"categorical feature {name!r} has no non-null value to learn categories "
                "from; drop it or cast it to a numeric dtype"
            )
        categories[name] = values
    return categories


def _encode(
    X: pd.DataFrame, feature_names: Sequence[str], categories: Mapping[str, list[str]]
) -> pd.DataFrame:
    """The feature contract applied to ``X``: exactly ``feature_names`` in order, numeric
    columns as float32 (NaN = missing), categorical ones as ``pd.Categorical`` over the
    learned categories (unseen values become missing)."""
    _require_columns(X, feature_names)
    columns: dict[str, Any] = {}
    for name in feature_names:
        series = X[name]
        if name in categories:
            columns[name] = pd.Categorical(_as_strings(series), categories=categories[name])
        else:
            columns[name] = _as_float(name, series, np.float32)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(X)))


def _group_order(group: np.ndarray, n_rows: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Stable permutation sorting rows by group, and the sorted integer query ids."""
    group_arr = np.asarray(group)
    if group_arr.ndim != 1 or len(group_arr) != n_rows:
        raise ValueError(
            f"{what}: group must be one-dimensional with one id per row of X ({n_rows}), "
            f"got shape {group_arr.shape}"
        )
    if group_arr.dtype.kind == "f" and np.isnan(group_arr).any():
        raise ValueError(f"{what}: group contains NaN")
    _, codes = np.unique(group_arr, return_inverse=True)
    codes = codes.reshape(-1)
    order = np.argsort(codes, kind="stable")
    return order, codes[order]


def _check_labels(y: np.ndarray, n_rows: int, what: str) -> np.ndarray:
    labels = np.asarray(y, dtype=np.float64)
    if labels.ndim != 1 or len(labels) != n_rows:
        raise ValueError(
            f"{what}: y must be one-dimensional with one label per row of X ({n_rows}), "
            f"got shape {labels.shape}"
        )
    if not np.isfinite(labels).all() or (labels < 0).any():
        raise ValueError(f"{what}: relevance labels must be finite and >= 0")
    return labels


# --------------------------------------------------------------------------- rankers


class _ProgressLog(xgb.callback.TrainingCallback):
    """Log the latest evaluation results every ``every`` boosting rounds at INFO."""

    def __init__(self, every: int, total: int) -> None:
        super().__init__()
        self.every = every
        self.total = total

    def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
        if self.every > 0 and (epoch + 1) % self.every == 0:
            latest = ", ".join(
                f"{data}-{metric}={values[-1]:.5f}"
                for data, metrics in evals_log.items()
                for metric, values in metrics.items()
            )
            logger.debug("round %d/%d %s", epoch + 1, self.total, latest or "(no eval set)")
        return False


class ShelfRanker(BaseEstimator):
    """XGBoost learning-to-rank for one shelf.

    ``feature_names`` is the ordered feature contract: ``fit`` and ``predict`` use
    exactly those columns of ``X`` in that order. Numeric columns become float32 with NaN
    as missing; string, object and category columns are categorical: ``fit`` learns the
    sorted unique non-null values and both ``fit`` and ``predict`` encode with
    ``pd.Categorical(values, categories=learned)`` (unseen values are missing), handled
    natively by XGBoost (``tree_method="hist"``, ``enable_categorical=True``).

    Training sorts rows by group (stable) and passes query ids to XGBoost, with linear
    gain (``ndcg_exp_gain=False``) as in :func:`evaluation.metrics.ndcg_at_k`. With an
    ``eval_set`` (a time-later validation window) every round is scored with
    ``ndcg@eval_at`` and training stops after ``early_stopping_rounds`` rounds without
    improvement; ``predict`` then uses the trees up to the best iteration. Note XGBoost's
    ``ndcg@k`` counts groups without a positive label as 1, unlike evaluation reports
    that exclude them; ``best_score_`` is for monitoring, not for reporting.

    Deterministic for a fixed ``seed``: CPU ``hist`` training gave bit-identical models
    across repeated fits and across ``n_jobs`` 1, 2 and 8 with XGBoost 3.2. On a busy
    machine, more threads than free cores makes OpenMP training many times slower (seen
    20x on 2 busy cores); lower ``n_jobs`` or set ``OMP_WAIT_POLICY=passive`` there.

    Learned state: ``booster_`` (``xgboost.Booster``), ``categories_`` (column -> list of
    categories), ``best_iteration_`` (0-based), ``best_score_`` (validation ndcg at the
    best iteration, None without ``eval_set``), ``evals_result_`` (per-round metrics).
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        objective: str = "rank:ndcg",
        n_estimators: int = 400,
        learning_rate: float = 0.08,
        max_depth: int = 6,
        min_child_weight: float = 1.0,
        subsample: float = 0.9,
        colsample_bytree: float = 0.9,
        reg_lambda: float = 1.0,
        max_bin: int = 256,
        lambdarank_pair_method: str = "topk",
        lambdarank_num_pair_per_sample: int | None = None,
        early_stopping_rounds: int | None = 40,
        eval_at: int = 10,
        seed: int = 0,
        n_jobs: int = 2,
        log_every: int = 50,
    ) -> None:
        self.feature_names = feature_names
        self.objective = objective
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.max_bin = max_bin
        self.lambdarank_pair_method = lambdarank_pair_method
        self.lambdarank_num_pair_per_sample = lambdarank_num_pair_per_sample
        self.early_stopping_rounds = early_stopping_rounds
        self.eval_at = eval_at
        self.seed = seed
        self.n_jobs = n_jobs
        self.log_every = log_every

    def xgb_params(self) -> dict[str, Any]:
        """The XGBoost training parameters these settings stand for."""
        params: dict[str, Any] = {
            "objective": self.objective,
            "eval_metric": f"ndcg@{self.eval_at}",
            "ndcg_exp_gain": False,
            "tree_method": "hist",
            "eta": self.learning_rate,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
            "max_bin": self.max_bin,
            "lambdarank_pair_method": self.lambdarank_pair_method,
            "seed": self.seed,
            "nthread": self.n_jobs,
        }
        if self.lambdarank_num_pair_per_sample is not None:
            params["lambdarank_num_pair_per_sample"] = self.lambdarank_num_pair_per_sample
        return params

    def _check_settings(self) -> list[str]:
        names = list(self.feature_names)
        if not names:
            raise ValueError("feature_names must name at least one feature")
        if not all(isinstance(name, str) for name in names):
            raise ValueError("feature_names must be strings")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"feature_names has duplicates: {duplicates}")
        if self.n_estimators < 1:
            raise ValueError(f"n_estimators must be >= 1, got {self.n_estimators}")
        return names

    def _dmatrix(self, X: pd.DataFrame, y: np.ndarray, group: np.ndarray, what: str) -> xgb.DMatrix:
        features = _encode(X, self.feature_names_, self.categories_)
        labels = _check_labels(y, len(features), what)
        order, qid = _group_order(group, len(features), what)
        return xgb.DMatrix(
            features.iloc[order],
            label=labels[order],
            qid=qid,
            enable_categorical=True,
            nthread=self.n_jobs,
        )

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        group: np.ndarray,
        eval_set: EvalSet | None = None,
    ) -> ShelfRanker:
        """Train on ``X``/``y`` grouped by ``group``; early-stop on ``eval_set`` if given.

        ``eval_set`` is ``(X_valid, y_valid, group_valid)``, encoded with the categories
        learned from ``X``.
        """
        names = self._check_settings()
        _require_columns(X, names)
        self.feature_names_ = names
        self.categories_ = _learn_categories(X, names)
        train = self._dmatrix(X, y, group, "train")
        evals: list[tuple[xgb.DMatrix, str]] = []
        if eval_set is not None:
            X_valid, y_valid, group_valid = eval_set
            evals.append((self._dmatrix(X_valid, y_valid, group_valid, "eval_set"), "valid"))
            if not (np.asarray(y_valid) > 0).any():
                logger.warning("eval_set has no positive label; early stopping is blind")
        logger.debug(
            "training %s on %d rows, %d groups, %d features (%d categorical), up to %d rounds",
            self.objective,
            train.num_row(),
            len(np.unique(np.asarray(group))),
            len(names),
            len(self.categories_),
            self.n_estimators,
        )
        evals_result: dict[str, dict[str, list[float]]] = {}
        stopping = self.early_stopping_rounds if evals else None
        self.booster_ = xgb.train(
            self.xgb_params(),
            train,
            num_boost_round=self.n_estimators,
            evals=evals,
            early_stopping_rounds=stopping,
            evals_result=evals_result,
            verbose_eval=False,
            callbacks=[_ProgressLog(self.log_every, self.n_estimators)],
        )
        self.evals_result_ = evals_result
        rounds = self.booster_.num_boosted_rounds()
        if stopping is not None and self.booster_.attr("best_iteration") is not None:
            self.best_iteration_ = int(self.booster_.best_iteration)
        else:
            self.best_iteration_ = rounds - 1
        metric = f"ndcg@{self.eval_at}"
        scores = evals_result.get("valid", {}).get(metric)
        self.best_score_ = float(scores[self.best_iteration_]) if scores else None
        logger.info(
            "trained %d rounds; best iteration %d; best valid %s %s",
            rounds,
            self.best_iteration_,
            metric,
            "n/a" if self.best_score_ is None else f"{self.best_score_:.5f}",
        )
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Score each row of ``X`` (float64, input order) with the trees up to the best
        iteration. Row order and grouping do not matter: scores are per row."""
        check_is_fitted(self, "booster_")
        features = _encode(X, self.feature_names_, self.categories_)
        if len(features) == 0:
            return np.zeros(0, dtype=np.float64)
        scores = self.booster_.inplace_predict(
            features, iteration_range=(0, self.best_iteration_ + 1)
        )
        return np.asarray(scores, dtype=np.float64)

    def predict_columns(self, columns: Mapping[str, np.ndarray], rows: int) -> np.ndarray:
        """``predict`` for features given as arrays (name -> one value per row), without
        a DataFrame: the contract's columns in a float32 matrix, categorical values as
        codes of the learned categories (unseen or missing: NaN), scored in place.
        Returns what ``predict`` returns for the same values."""
        check_is_fitted(self, "booster_")
        missing = [name for name in self.feature_names_ if name not in columns]
        if missing:
            raise ValueError(f"missing feature column(s): {', '.join(map(repr, missing))}")
        matrix = np.empty((rows, len(self.feature_names_)), dtype=np.float32)
        for j, name in enumerate(self.feature_names_):
            values = columns[name]
            if name in self.categories_:
                codes = self._category_codes(name)
                matrix[:, j] = [codes.get(value, np.nan) for value in values]
            elif values.dtype.kind in "fiub":
                matrix[:, j] = values
            else:
                matrix[:, j] = [np.nan if value is None else value for value in values]
        if rows == 0:
            return np.zeros(0, dtype=np.float64)
        scores = self.booster_.inplace_predict(
            matrix, iteration_range=(0, self.best_iteration_ + 1)
        )
        return np.asarray(scores, dtype=np.float64)

    def _category_codes(self, name: str) -> dict[Any, float]:
        """Category -> its code, for feature ``name`` (cached)."""
        cache = self.__dict__.setdefault("_codes", {})
        if name not in cache:
            cache[name] = {value: float(code) for code, value in enumerate(self.categories_[name])}
        return cache[name]


class HeuristicRanker(BaseEstimator):
    """The heuristic a shelf used before ML, as a linear score over named columns.

    ``predict(X) = sum(weight * X[column])`` over ``weights``, with NaN counted as 0
    (a missing recency or popularity adds nothing). ``fit`` learns nothing and returns
    ``self``; it only checks that the columns exist, so the heuristic drops into any
    place a :class:`ShelfRanker` goes.
    """

    def __init__(self, weights: Mapping[str, float], name: str = "heuristic") -> None:
        self.weights = weights
        self.name = name

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray | None = None,
        group: np.ndarray | None = None,
        eval_set: EvalSet | None = None,
    ) -> HeuristicRanker:
        _require_columns(X, list(self.weights))
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        _require_columns(X, list(self.weights))
        score = np.zeros(len(X), dtype=np.float64)
        for column, weight in self.weights.items():
            values = _as_float(column, X[column], np.float64)
            score += float(weight) * np.where(np.isnan(values), 0.0, values)
        return score


# --------------------------------------------------------------------------- persistence


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def save_ranker(ranker: ShelfRanker, directory: Path, metadata: Mapping[str, Any]) -> str:
    """Persist a fitted ranker to ``directory`` (created); return the model's SHA-256.

    Writes ``model.ubj`` (``Booster.save_raw("ubj")``, the bytes ``save_model`` writes
    for a ``.ubj`` path) and then ``ranker.json``: ``{"format": 1, "model_file",
    "sha256", "feature_names", "categories", "params" (constructor parameters except
    ``feature_names``), "best_iteration", "best_score", "evals_result",
    "xgboost_version", "metadata"}``. Each file goes to a temp file in ``directory`` and
    is renamed in, model first: a crash leaves either the previous pair, or a new model
    that the previous ``ranker.json`` rejects by checksum, never a half-written file.
    ``metadata`` must be JSON-serializable (numpy scalars are converted); NaN is refused.
    """
    check_is_fitted(ranker, "booster_")
    directory = Path(directory)
    raw = bytes(ranker.booster_.save_raw(raw_format="ubj"))
    digest = _sha256(raw)
    params = ranker.get_params(deep=False)
    params.pop("feature_names")
    contract = {
        "format": FORMAT_VERSION,
        "model_file": MODEL_FILE,
        "sha256": digest,
        "feature_names": list(ranker.feature_names_),
        "categories": {name: list(values) for name, values in ranker.categories_.items()},
        "params": params,
        "best_iteration": int(ranker.best_iteration_),
        "best_score": ranker.best_score_,
        "evals_result": ranker.evals_result_,
        "xgboost_version": xgb.__version__,
        "metadata": dict(metadata),
    }
    try:
        text = json.dumps(contract, indent=2, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata cannot be written as strict JSON: {err}") from err
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / MODEL_FILE, raw)
    atomic_write_bytes(directory / CONTRACT_FILE, (text + "\n").encode("utf-8"))
    logger.debug(
        "saved ranker to %s (sha256 %s, %d features, best iteration %d)",
        directory,
        digest,
        len(ranker.feature_names_),
        ranker.best_iteration_,
    )
    return digest


def _read_contract(path: Path) -> dict[str, Any]:
    """Parse ``ranker.json`` and check its shape; ModelIntegrityError naming it otherwise."""
    if not path.is_file():
        raise ModelIntegrityError(f"{path}: missing; no ranker contract in {path.parent}")
    try:
        contract = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelIntegrityError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(contract, dict):
        raise ModelIntegrityError(f"{path}: expected a JSON object")
    absent = [key for key in _CONTRACT_KEYS if key not in contract]
    if absent:
        raise ModelIntegrityError(f"{path}: missing key(s) {absent}")
    if contract["format"] != FORMAT_VERSION:
        raise ModelIntegrityError(
            f"{path}: unsupported format {contract['format']!r} (expected {FORMAT_VERSION})"
        )
    model_file = contract["model_file"]
    if (
        not isinstance(model_file, str)
        or Path(model_file).name != model_file
        or model_file.startswith(".")
    ):
        raise ModelIntegrityError(
            f"{path}: model_file must be a plain file name, got {model_file!r}"
        )
    names = contract["feature_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelIntegrityError(f"{path}: feature_names must be a non-empty list of strings")
    categories = contract["categories"]
    if not isinstance(categories, dict) or not all(
        isinstance(values, list) and all(isinstance(v, str) for v in values)
        for values in categories.values()
    ):
        raise ModelIntegrityError(f"{path}: categories must map column -> list of strings")
    for key, kind in (("sha256", str), ("params", dict), ("metadata", dict)):
        if not isinstance(contract[key], kind):
            raise ModelIntegrityError(f"{path}: {key} must be a {kind.__name__}")
    if isinstance(contract["best_iteration"], bool) or not isinstance(
        contract["best_iteration"], int
    ):
        raise ModelIntegrityError(f"{path}: best_iteration must be an integer")
    return contract


def _booster_categories(booster: xgb.Booster) -> dict[str, list[str]] | None:
    """The categories XGBoost stored in the model (XGBoost >= 3.1), or None if unavailable."""
    try:
        stored = booster.get_categories(export_to_arrow=True).to_arrow()
    except (AttributeError, ImportError, NotImplementedError, ValueError, xgb.core.XGBoostError):
        return None
    return {name: list(array.to_pylist()) for name, array in stored if array is not None}


def _check_booster(
    booster: xgb.Booster, contract: Mapping[str, Any], model_path: Path, contract_path: Path
) -> None:
    """The booster must match the contract: feature names in order, categorical
    features and their categories, and a best iteration inside the trained rounds."""
    names = contract["feature_names"]
    if list(booster.feature_names or []) != names:
        raise ModelIntegrityError(
            f"{contract_path}: feature_names {names} do not match the features of "
            f"{model_path} {booster.feature_names} (names and order must be equal)"
        )
    types = booster.feature_types or []
    model_categorical = sorted(
        name for name, kind in zip(names, types, strict=False) if kind == "c"
    )
    if model_categorical != sorted(contract["categories"]):
        raise ModelIntegrityError(
            f"{contract_path}: categorical features {sorted(contract['categories'])} do not "
            f"match those of {model_path} {model_categorical}"
        )
    stored = _booster_categories(booster)
    if stored is not None and stored != contract["categories"]:
        raise ModelIntegrityError(
            f"{contract_path}: categories differ from those stored in {model_path}"
        )
    rounds = booster.num_boosted_rounds()
    if not 0 <= contract["best_iteration"] < rounds:
        raise ModelIntegrityError(
            f"{contract_path}: best_iteration {contract['best_iteration']} is outside the "
            f"{rounds} rounds of {model_path}"
        )


def load_ranker(directory: Path) -> tuple[ShelfRanker, dict[str, Any]]:
    """Load a ranker saved by :func:`save_ranker`: ``(ranker ready to predict, metadata)``.

    Verifies, raising :class:`ModelIntegrityError` naming the file and the problem: both
    files exist; ``ranker.json`` is a format-1 contract; the SHA-256 of the model file
    equals the contract's; the model loads; its feature names equal the contract's in
    order; its categorical features (and, where XGBoost stores them, their categories)
    equal the contract's; the best iteration lies within the trained rounds; the saved
    parameters are valid ``ShelfRanker`` parameters. The model is hashed and loaded from
    the same bytes, so what is verified is what is loaded.
    """
    directory = Path(directory)
    contract_path = directory / CONTRACT_FILE
    contract = _read_contract(contract_path)
    model_path = directory / contract["model_file"]
    if not model_path.is_file():
        raise ModelIntegrityError(f"{model_path}: missing (named by {contract_path})")
    raw = model_path.read_bytes()
    digest = _sha256(raw)
    if digest != contract["sha256"]:
        raise ModelIntegrityError(
            f"{model_path}: sha256 checksum mismatch: {contract_path} expects "
            f"{contract['sha256']}, the file hashes to {digest}"
        )
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(raw))
    except xgb.core.XGBoostError as err:
        raise ModelIntegrityError(f"{model_path}: not a loadable XGBoost model: {err}") from err
    _check_booster(booster, contract, model_path, contract_path)
    try:
        ranker = ShelfRanker(feature_names=list(contract["feature_names"]), **contract["params"])
    except TypeError as err:
        raise ModelIntegrityError(f"{contract_path}: invalid params: {err}") from err
    if contract.get("xgboost_version") not in (None, xgb.__version__):
        logger.warning(
            "%s was saved with xgboost %s; loading with %s",
            model_path,
            contract["xgboost_version"],
            xgb.__version__,
        )
    booster.set_param({"nthread": ranker.n_jobs})
    ranker.booster_ = booster
    ranker.feature_names_ = list(contract["feature_names"])
    ranker.categories_ = {name: list(values) for name, values in contract["categories"].items()}
    ranker.best_iteration_ = contract["best_iteration"]
    ranker.best_score_ = contract.get("best_score")
    ranker.evals_result_ = contract.get("evals_result") or {}
    logger.debug("loaded ranker from %s (sha256 %s)", directory, digest)
    return ranker, dict(contract["metadata"])
