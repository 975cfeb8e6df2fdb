"""Feature drift: Chebyshev (L-infinity) distance between a reference profile and new data.

A *profile* holds one histogram per feature of a reference table (the training set). New
data (served-feature logs, a later training window) is counted on the *reference's*
buckets, and a feature drifts when the Chebyshev distance between the two normalized
histograms exceeds its threshold, as in TensorFlow Data Validation's ``linf`` comparator.

Buckets of a **numeric** feature (numeric or bool dtype, bool counted as 0/1, or an
object column of numbers only), fixed from the reference's finite values: edges
``e_0 < e_1 < ... < e_m`` are the unique quantiles at ``0, 1/bins, ..., 1`` with
``method="lower"``, so every edge is an observed value, ``e_0`` the minimum, ``e_m`` the
maximum. The ``m + 4`` buckets, in order:

- underflow ``x < e_0`` (``-inf`` included);
- ``m`` inner bins ``e_{k-1} <= x < e_k``, k = 1..m, all left-closed, right-open;
- the point bin ``x == e_m``. Unlike ``np.histogram`` (last bin right-closed) the maximum
  gets a bin of its own, so the two top values of a low-cardinality feature (False/True,
  0/1) never share a bin;
- overflow ``x > e_m`` (``+inf`` included);
- null: NaN, None, ``pd.NA``.

A reference without finite values has no edges and two buckets: not null, null.

Buckets of a **categorical** feature (any other object, string or category column;
values compared as ``str(value)``, so 1 and "1" are one value): the reference's
``top_values`` most frequent values (count descending, then value ascending), then
*other* (any value not among them), then null.

Columns holding arrays or lists, datetimes, complex numbers or other types are skipped
with a logged note and listed in ``Profile.skipped``.

**Sampling noise.** Two samples of one distribution differ by chance, the more so the
fewer requests they hold (rows of one request share its listener's features, so the
request is the unit). When both sides know their request counts, a feature drifts only
when its distance also exceeds its :func:`noise_floor`, the distance such samples exceed
by chance with probability ``NOISE_ALPHA``; with thousands of requests the floor is far
below any threshold, with a few dozen it keeps chance from raising alarms.
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from pandas.api import types as ptypes
from scipy.stats import norm

from training.core.atomic_io import atomic_write_text
from training.core.errors import UserError

__all__ = [
    "DriftReport",
    "FeatureDrift",
    "FeatureProfile",
    "Profile",
    "WebhookError",
    "build_profile",
    "chebyshev",
    "compare",
    "histogram",
    "load_profile",
    "noise_floor",
    "post_webhook",
    "profile_json",
    "profile_on",
    "save_profile",
    "webhook_target",
]

logger = logging.getLogger(__name__)

Kind = Literal["numeric", "categorical"]
PROFILE_FORMAT = "homerec-drift-profile"
PROFILE_VERSION = 1
NOISE_ALPHA = 0.05
"""Chance that a feature of two samples of one distribution exceeds its noise floor."""
_CONTAINERS = (list, tuple, set, dict, np.ndarray)
# What pandas.api.types.infer_dtype says of an object column that holds only numbers.
_NUMBERS = {"boolean", "integer", "floating", "mixed-integer-float", "decimal"}


@dataclass(frozen=True, eq=False)
class FeatureProfile:
    """Histogram of one feature: ``counts[i]`` rows fell in bucket ``i`` (module docstring).

    Numeric features set ``edges`` (``values`` empty); categorical ones set ``values``
    (``edges`` empty). The last bucket is always null.
    """

    name: str
    kind: Kind
    counts: np.ndarray
    edges: tuple[float, ...] = ()
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim != 1 or not (ptypes.is_integer_dtype(counts.dtype) or counts.size == 0):
            raise ValueError(f"feature {self.name!r}: counts must be a 1-D list of integers")
        if (counts < 0).any():
            raise ValueError(f"feature {self.name!r}: counts must be >= 0")
        if self.kind == "numeric":
            try:
                edges = np.asarray(self.edges, dtype=np.float64)
            except (TypeError, ValueError):
                edges = np.array([np.nan])
            if self.values or not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
                raise ValueError(
                    f"feature {self.name!r}: edges must be numbers, strictly increasing"
                )
            expected = len(edges) + 3 if len(edges) else 2
        elif self.kind == "categorical":
            if self.edges or len(set(self.values)) != len(self.values):
                raise ValueError(f"feature {self.name!r}: values must be unique, no edges")
            if not all(isinstance(value, str) for value in self.values):
                raise ValueError(f"feature {self.name!r}: values must be strings")
            expected = len(self.values) + 2
        else:
            raise ValueError(f"feature {self.name!r}: unknown kind {self.kind!r}")
        if counts.size != expected:
            raise ValueError(f"feature {self.name!r}: {counts.size} counts for {expected} buckets")
        counts = counts.astype(np.int64)
        counts.flags.writeable = False
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "edges", tuple(float(edge) for edge in self.edges))

    @property
    def rows(self) -> int:
        """Rows counted, nulls included."""
        return int(self.counts.sum())

    @property
    def nulls(self) -> int:
        """Rows in the null bucket."""
        return int(self.counts[-1])

    @property
    def null_rate(self) -> float | None:
        """``nulls / rows``; None when there are no rows."""
        return self.nulls / self.rows if self.rows else None

    def labels(self) -> list[str]:
        """A readable name for each bucket, in bucket order."""
        if self.kind == "categorical":
            return [*self.values, "<other>", "<null>"]
        if not self.edges:
            return ["<not null>", "<null>"]
        e = self.edges
        inner = [f"[{e[k - 1]:g}, {e[k]:g})" for k in range(1, len(e))]
        return [f"< {e[0]:g}", *inner, f"= {e[-1]:g}", f"> {e[-1]:g}", "<null>"]

    def same_buckets(self, other: FeatureProfile) -> bool:
        """True when ``other`` counts the same buckets (kind, edges and values equal)."""
        return (self.kind, self.edges, self.values) == (other.kind, other.edges, other.values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``rows`` and ``nulls`` are redundant and checked on load."""
        buckets: dict[str, list[float] | list[str]] = {}
        if self.kind == "numeric":
            buckets = {"edges": list(self.edges)}
        if self.kind == "categorical":
            buckets = {"values": list(self.values)}
        return {
            "kind": self.kind,
            **buckets,
            "counts": [int(count) for count in self.counts],
            "rows": self.rows,
            "nulls": self.nulls,
        }


@dataclass(frozen=True, eq=False)
class Profile:
    """Histograms of a feature table. ``rows``: rows of the table; ``skipped``: columns
    not profiled, with the reason; ``bins``/``top_values``: the parameters used;
    ``requests``: the independent requests the rows belong to (None: unknown)."""

    features: Mapping[str, FeatureProfile]
    rows: int
    skipped: Mapping[str, str] = field(default_factory=dict)
    bins: int = 10
    top_values: int = 20
    requests: int | None = None

    def __post_init__(self) -> None:
        if self.rows < 0 or self.bins < 1 or self.top_values < 0:
            raise ValueError("profile needs rows >= 0, bins >= 1 and top_values >= 0")
        if self.requests is not None and not 0 <= self.requests <= self.rows:
            raise ValueError(f"profile requests must be in [0, rows], got {self.requests}")
        for name, feature in self.features.items():
            if feature.name != name:
                raise ValueError(f"feature {name!r} holds a profile named {feature.name!r}")
            if feature.rows != self.rows:
                raise ValueError(f"feature {name!r}: counts {feature.rows} rows, not {self.rows}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (see :func:`save_profile`)."""
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "rows": self.rows,
            "requests": self.requests,
            "bins": self.bins,
            "top_values": self.top_values,
            "features": {name: feature.to_dict() for name, feature in self.features.items()},
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Profile:
        """Rebuild and validate a profile; any problem is a ValueError saying what."""
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"not a drift profile (format is not {PROFILE_FORMAT!r})")
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"unsupported profile version {data.get('version')!r}")
        try:
            features = {}
            for name, raw in data["features"].items():
                feature = FeatureProfile(
                    name=name,
                    kind=raw["kind"],
                    counts=np.asarray(raw["counts"]),
                    edges=tuple(raw.get("edges", ())),
                    values=tuple(raw.get("values", ())),
                )
                if (raw["rows"], raw["nulls"]) != (feature.rows, feature.nulls):
                    raise ValueError(f"feature {name!r}: rows/nulls disagree with counts")
                features[name] = feature
            return cls(
                features=features,
                rows=int(data["rows"]),
                requests=None if data.get("requests") is None else int(data["requests"]),
                skipped={str(k): str(v) for k, v in data["skipped"].items()},
                bins=int(data["bins"]),
                top_values=int(data["top_values"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed profile: {type(exc).__name__}: {exc}") from exc


def profile_json(profile: Profile) -> str:
    """``profile`` as the JSON text :func:`save_profile` writes and :func:`load_profile`
    (or ``Profile.from_dict(json.loads(text))``) reads back."""
    return json.dumps(profile.to_dict(), indent=1, allow_nan=False) + "\n"


def save_profile(profile: Profile, path: Path | str) -> None:
    """Write ``profile`` as JSON to ``path`` atomically (temp file + rename)."""
    atomic_write_text(Path(path), profile_json(profile))


def load_profile(path: Path | str) -> Profile:
    """Read a profile written by :func:`save_profile`; ValueError names the file and problem."""
    path = Path(path)
    try:
        return Profile.from_dict(json.loads(path.read_text()))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        raise ValueError(f"{path}: {exc}") from exc


def _column_kind(series: pd.Series) -> Kind | str:
    """``numeric``, ``categorical``, or the reason the column cannot be profiled."""
    dtype = series.dtype
    if ptypes.is_bool_dtype(dtype):
        return "numeric"
    if ptypes.is_complex_dtype(dtype):
        return "complex numbers are not supported"
    if ptypes.is_datetime64_any_dtype(dtype) or ptypes.is_timedelta64_dtype(dtype):
        return f"{dtype} column: timestamps are not profiled"
    if ptypes.is_numeric_dtype(dtype):
        return "numeric"
    if isinstance(dtype, pd.CategoricalDtype) or ptypes.is_string_dtype(dtype):
        inferred = ptypes.infer_dtype(series, skipna=True)
        if ptypes.is_object_dtype(dtype) and inferred in _NUMBERS:
            return "numeric"
        if inferred == "mixed" and series.map(lambda v: isinstance(v, _CONTAINERS)).any():
            return "array/list-valued column"
        return "categorical"
    return f"unsupported dtype {dtype}"


def _numeric_values(values: pd.Series, name: str) -> np.ndarray:
    """Values as float64 with NaN for nulls; ValueError when they are not numbers."""
    if ptypes.is_bool_dtype(values.dtype) or (
        ptypes.is_numeric_dtype(values.dtype) and not ptypes.is_complex_dtype(values.dtype)
    ):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    if values.dtype == object:
        try:
            return pd.to_numeric(values).to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"feature {name!r} is numeric in the reference: {exc}") from exc
    raise ValueError(f"feature {name!r} is numeric in the reference, not {values.dtype}")


def _numeric_counts(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Counts of float values ``x`` on the numeric buckets of ``edges``."""
    nulls = int(np.isnan(x).sum())
    if edges.size == 0:
        return np.array([x.size - nulls, nulls], dtype=np.int64)
    m = edges.size - 1
    # side="right": number of edges <= x, i.e. 0 underflow, k inner bin, m+1 when x >= e_m.
    # Adding x > e_m moves x > e_m to overflow (m+2). NaN sorts last: it lands on m+1.
    bucket = np.searchsorted(edges, x, side="right") + (x > edges[-1])
    counts = np.bincount(bucket, minlength=m + 4)
    counts[m + 1] -= nulls
    counts[m + 3] = nulls
    return counts.astype(np.int64)


def _frequencies(values: pd.Series, name: str) -> tuple[pd.Series, int]:
    """Rows per distinct ``str(value)`` (index: value) and the number of null rows."""
    try:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
    except TypeError as exc:  # unhashable values: lists, arrays
        raise ValueError(f"feature {name!r} holds unhashable values: {exc}") from exc
    per_unique = np.bincount(codes[codes >= 0], minlength=len(uniques))
    labels = [str(unique) for unique in uniques]  # one per distinct value, not per row
    freq = pd.Series(per_unique, index=labels, dtype=np.int64)
    if not freq.index.is_unique:  # e.g. 1 and "1" in one object column
        freq = freq.groupby(level=0, sort=False).sum()
    return freq, int((codes < 0).sum())


def _categorical_counts(top: tuple[str, ...], freq: pd.Series, nulls: int) -> np.ndarray:
    """Counts on the categorical buckets ``top`` values, other, null from frequencies."""
    k = len(top)
    bucket = pd.Index(top, dtype=object).get_indexer(freq.index)
    bucket[bucket < 0] = k
    counts = np.bincount(bucket, weights=freq.to_numpy(), minlength=k + 2).astype(np.int64)
    counts[k + 1] = nulls
    return counts


def histogram(feature: FeatureProfile, values: ArrayLike | pd.Series) -> np.ndarray:
    """Counts of ``values`` on ``feature``'s buckets, in its bucket order (vectorized)."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if feature.kind == "numeric":
        x = _numeric_values(series, feature.name)
        return _numeric_counts(np.asarray(feature.edges, dtype=np.float64), x)
    return _categorical_counts(feature.values, *_frequencies(series, feature.name))


def _select(frame: pd.DataFrame, features: Sequence[str] | None) -> list[str]:
    """The feature names to profile; ValueError for duplicate, non-string or absent names."""
    if not frame.columns.is_unique:
        raise ValueError("frame has duplicate column names")
    names = list(frame.columns) if features is None else list(features)
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"feature names must be strings: {names}")
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise ValueError(f"features not in the frame: {missing}")
    return names


def build_profile(
    frame: pd.DataFrame,
    features: list[str] | None = None,
    bins: int = 10,
    top_values: int = 20,
    requests: int | None = None,
) -> Profile:
    """Reference profile of ``frame`` (all columns, or ``features``), buckets as documented
    in the module docstring: ``bins`` quantile bins per numeric feature, ``top_values``
    values per categorical one; ``requests``: how many requests the rows belong to."""
    if bins < 1 or top_values < 0:
        raise ValueError(f"need bins >= 1 and top_values >= 0, got {bins}, {top_values}")
    if len(frame) == 0:
        raise ValueError("cannot build a reference profile from an empty frame")
    quantiles = np.linspace(0.0, 1.0, bins + 1)
    profiled: dict[str, FeatureProfile] = {}
    skipped: dict[str, str] = {}
    for name in _select(frame, features):
        series = frame[name]
        kind = _column_kind(series)
        if kind == "numeric":
            x = _numeric_values(series, name)
            edges = x[np.isfinite(x)]
            if edges.size:
                edges = np.unique(np.quantile(edges, quantiles, method="lower"))
            counts = _numeric_counts(edges, x)
            profiled[name] = FeatureProfile(name, "numeric", counts, edges=tuple(edges))
        elif kind == "categorical":
            freq, nulls = _frequencies(series, name)
            order = np.lexsort((freq.index.to_numpy(dtype=object), -freq.to_numpy()))
            top = tuple(freq.index[order[:top_values]])
            counts = _categorical_counts(top, freq, nulls)
            profiled[name] = FeatureProfile(name, "categorical", counts, values=top)
        else:
            logger.info("drift profile skips %r: %s", name, kind)
            skipped[name] = kind
    return Profile(profiled, len(frame), skipped, bins, top_values, requests)


def profile_on(reference: Profile, frame: pd.DataFrame, requests: int | None = None) -> Profile:
    """Profile of ``frame`` (rows of ``requests`` requests) on ``reference``'s buckets, for
    every reference feature.

    Reference features absent from ``frame`` are listed in ``skipped`` as missing; a
    column whose values cannot be counted on its reference buckets is a ValueError.
    """
    profiled = {
        name: FeatureProfile(name, f.kind, histogram(f, frame[name]), f.edges, f.values)
        for name, f in reference.features.items()
        if name in frame.columns
    }
    skipped = {name: "missing from frame" for name in reference.features if name not in profiled}
    return Profile(profiled, len(frame), skipped, reference.bins, reference.top_values, requests)


def chebyshev(p_counts: ArrayLike, q_counts: ArrayLike) -> float:
    """Chebyshev (L-infinity) distance ``max_i |p_i / sum(p) - q_i / sum(q)|``.

    Taken over every bucket, the null bucket included, so a change in null rate counts as
    drift. The result is in [0, 1]. A histogram with no rows is not a distribution: when
    either side sums to 0 the distance is 1.0 (maximal), so an empty window always alerts.
    """
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.ndim != 1 or p.shape != q.shape or p.size == 0:
        raise ValueError(f"histograms must be 1-D, non-empty, equally long: {p.shape}, {q.shape}")
    if not (np.isfinite(p).all() and np.isfinite(q).all()) or (p < 0).any() or (q < 0).any():
        raise ValueError("histogram counts must be finite and >= 0")
    p_total, q_total = p.sum(), q.sum()
    if p_total == 0 or q_total == 0:
        return 1.0
    return float(np.max(np.abs(p / p_total - q / q_total)))


def noise_floor(
    p_counts: ArrayLike,
    q_counts: ArrayLike,
    p_requests: int | None,
    q_requests: int | None,
    alpha: float = NOISE_ALPHA,
) -> float:
    """The Chebyshev distance that two samples of one distribution, of ``p_requests`` and
    ``q_requests`` requests, exceed by chance with probability about ``alpha``.

    Per bucket, the two-sample normal bound ``z * sqrt(s (1 - s) (1/p + 1/q))`` on the
    difference of its shares (``s``: the pooled share), with ``z`` Bonferroni-corrected
    over the buckets; the largest over buckets. Counting requests, not rows, is exact for
    listener features (constant within a request) and cautious for item features. 0.0
    when either request count is unknown or zero.
    """
    if not p_requests or not q_requests:
        return 0.0
    pooled = np.asarray(p_counts, dtype=np.float64) + np.asarray(q_counts, dtype=np.float64)
    if pooled.sum() == 0:
        return 0.0
    share = pooled / pooled.sum()
    z = norm.ppf(1.0 - alpha / (2 * share.size))
    spread = np.max(share * (1.0 - share)) * (1.0 / p_requests + 1.0 / q_requests)
    return float(z * np.sqrt(spread))


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature. ``null_rate_change`` is current minus reference; rates are None
    when their side has no rows. ``worst_bucket`` labels the bucket of maximal difference
    (None at distance 0). ``drifted``: distance above both threshold and noise floor."""

    name: str
    kind: Kind
    distance: float
    threshold: float
    noise_floor: float
    drifted: bool
    reference_null_rate: float | None
    current_null_rate: float | None
    null_rate_change: float | None
    worst_bucket: str | None


@dataclass(frozen=True)
class DriftReport:
    """Per-feature drift of a current window against a reference profile.

    ``missing_features``: in the reference, absent from the current data (each a breach);
    ``extra_features``: in the current data only, ignored.
    """

    features: tuple[FeatureDrift, ...]
    missing_features: tuple[str, ...]
    extra_features: tuple[str, ...]
    reference_rows: int
    current_rows: int

    @property
    def drifted_features(self) -> tuple[str, ...]:
        """Features over their threshold, then missing features."""
        return (*(f.name for f in self.features if f.drifted), *self.missing_features)

    @property
    def breach(self) -> bool:
        """True when any feature drifted or is missing."""
        return bool(self.drifted_features)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary; every float is finite (undefined rates are None)."""
        return {
            "breach": self.breach,
            "drifted_features": list(self.drifted_features),
            "missing_features": list(self.missing_features),
            "extra_features": list(self.extra_features),
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "features": [asdict(feature) for feature in self.features],
        }


def _threshold(thresholds: Mapping[str, float], name: str, default: float) -> float:
    """The threshold of ``name``: its own, else ``default``; ValueError outside [0, 1]."""
    value = float(thresholds.get(name, default))
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"drift threshold for {name!r} must be in [0, 1], got {value}")
    return value


def compare(
    reference: Profile,
    current: pd.DataFrame | Profile,
    thresholds: Mapping[str, float] | None = None,
    default_threshold: float = 0.1,
    current_requests: int | None = None,
) -> DriftReport:
    """Compare ``current`` with ``reference``: a feature drifts when its Chebyshev distance
    (:func:`chebyshev`) is strictly greater than its threshold (``thresholds[name]``, else
    ``default_threshold``) and than its :func:`noise_floor`. ``current`` is a frame of
    ``current_requests`` requests (counted on the reference's buckets) or a profile built
    by :func:`profile_on` (its buckets must equal the reference's)."""
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(reference.features))
    if unknown:
        raise ValueError(f"thresholds name features not in the reference profile: {unknown}")
    if isinstance(current, pd.DataFrame):
        extra = [str(c) for c in current.columns if c not in reference.features]
        current = profile_on(reference, current, current_requests)
    else:
        extra = [name for name in current.features if name not in reference.features]
    extra = [name for name in extra if name not in reference.skipped]
    drifts, missing = [], []
    for name, ref in reference.features.items():
        threshold = _threshold(thresholds, name, default_threshold)
        cur = current.features.get(name)
        if cur is None:
            missing.append(name)
            continue
        if not ref.same_buckets(cur):
            raise ValueError(
                f"feature {name!r}: the current profile's buckets differ from the reference's;"
                " build it with profile_on(reference, frame)"
            )
        distance = chebyshev(ref.counts, cur.counts)
        floor = noise_floor(ref.counts, cur.counts, reference.requests, current.requests)
        worst = None
        if distance > 0 and ref.rows and cur.rows:
            diff = np.abs(ref.counts / ref.rows - cur.counts / cur.rows)
            worst = ref.labels()[int(np.argmax(diff))]
        change = None
        if ref.null_rate is not None and cur.null_rate is not None:
            change = cur.null_rate - ref.null_rate
        drifts.append(
            FeatureDrift(
                name=name,
                kind=ref.kind,
                distance=distance,
                threshold=threshold,
                noise_floor=floor,
                drifted=distance > max(threshold, floor),
                reference_null_rate=ref.null_rate,
                current_null_rate=cur.null_rate,
                null_rate_change=change,
                worst_bucket=worst,
            )
        )
    report = DriftReport(tuple(drifts), tuple(missing), tuple(extra), reference.rows, current.rows)
    logger.debug(
        "drift: %d of %d features drifted, %d missing",
        len(report.drifted_features) - len(missing),
        len(drifts),
        len(missing),
    )
    return report


class WebhookError(RuntimeError):
    """The drift webhook could not be delivered."""


class WebhookURLError(UserError, ValueError):
    """The drift webhook url is not an http(s) url with a host."""


def webhook_target(url: str) -> str:
    """``scheme://host[:port]`` of a webhook ``url``, for messages (paths and credentials
    often carry secrets); WebhookURLError unless it is an http(s) url with a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookURLError(
            f"webhook url must be http(s)://host/..., got scheme {parts.scheme!r}"
        )
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def post_webhook(url: str, report: DriftReport | Mapping[str, Any], timeout: float = 5.0) -> None:
    """POST ``report`` (a DriftReport as ``report.to_dict()``, or any JSON object) as JSON
    to ``url`` (http or https); WebhookError on failure.

    Errors name only the scheme and host: webhook paths often carry secret tokens.
    """
    where = webhook_target(url)
    payload = report.to_dict() if isinstance(report, DriftReport) else dict(report)
    body = json.dumps(payload, allow_nan=False).encode("utf-8")
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"drift webhook {where} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WebhookError(f"drift webhook {where} unreachable: {reason}") from exc
    if not 200 <= status < 300:
        raise WebhookError(f"drift webhook {where} answered HTTP {status}")
    logger.info("drift report posted to %s (HTTP %d)", where, status)
