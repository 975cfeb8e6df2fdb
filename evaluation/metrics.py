"""Ranking metrics over many groups at once, vectorized with numpy.

A *group* is one ranking: one listener at one snapshot, with the candidates the ranker
ordered for them. Every metric takes flat, equally long arrays:

- ``group``: the group of each row (int codes or any hashable values). Rows of a group
  need not be contiguous; they are sorted internally with a stable sort.
- ``relevance``: graded gain of each row, finite and >= 0. Binary metrics (recall, AP)
  count a row as relevant when ``relevance > 0``.
- ``score``: the ranker's score; higher ranks first. NaN is rejected, +-inf is allowed.

Per-group metrics return one value per group, in the order of ``np.unique(group)``.

Conventions shared by every metric:

- **Ranks** are 1-based within a group; rank ``r`` is discounted by ``1 / log2(r + 1)``.
- **Ties in score**: NDCG averages over all orderings of tied rows exactly as
  ``sklearn.metrics.ndcg_score(..., ignore_ties=False)`` does. Recall and AP break ties
  deterministically: score descending, then original row order (a stable sort), so the
  row that comes first in the input ranks first. Nothing is random.
- **Groups without any positive relevance** get 0 from every per-group metric (the value
  sklearn gives NDCG when the ideal DCG is 0). They carry no information about the
  ranker, so evaluation reports exclude them: use :func:`groups_with_positives` to mask
  them out (``summarize`` does so by default).
- **Groups smaller than k** are ranked in full; the normalizers use the group's own
  rows, so a perfect ranking of a short group still scores 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from training.models.rankers import Ranker

__all__ = [
    "average_precision",
    "bootstrap_gap_closed",
    "catalog_coverage",
    "groups_with_positives",
    "ndcg_at_k",
    "paired_bootstrap_ci",
    "recall_at_k",
    "summarize",
]

# Elements of the (resamples x groups) index matrix drawn at once by the bootstrap.
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class _Ranked:
    """Rows sorted by (group, score descending, original row order).

    ``code``: group code of each sorted row (0..n_groups-1, in ``np.unique`` order);
    ``relevance``/``score``: the sorted values; ``order``: the permutation applied;
    ``position``: 0-based rank of the row within its group; ``starts``: index of the
    first sorted row of each group; ``n_groups``: number of groups.
    """

    code: np.ndarray
    relevance: np.ndarray
    score: np.ndarray
    order: np.ndarray
    position: np.ndarray
    starts: np.ndarray
    n_groups: int


def _as_1d(name: str, values: ArrayLike) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _check_k(k: int | None, *, allow_none: bool = False) -> None:
    if k is None and allow_none:
        return
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _dense_codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense rank of each value (0 = smallest; equal values share a code) and the count.

    Same codes as ``np.unique(values, return_inverse=True)`` for NaN-free numeric input,
    without its overhead.
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    order = np.argsort(values)
    sorted_values = values[order]
    new_value = np.empty(n, dtype=bool)
    new_value[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=new_value[1:])
    codes = np.empty(n, dtype=np.int64)
    codes[order] = np.cumsum(new_value) - 1
    return codes, int(new_value.sum())


def _stable_order(major: np.ndarray, n_major: int, minor: np.ndarray, n_minor: int) -> np.ndarray:
    """Permutation sorting rows by (major, minor, original row order).

    Equivalent to ``np.lexsort((minor, major))`` but faster: both codes are packed into
    one int64 key, made unique with the row index when it fits so that numpy's fast
    (unstable) argsort gives the stable order.
    """
    n = len(major)
    limit = np.iinfo(np.int64).max
    if n_major * n_minor >= limit:
        return np.lexsort((minor, major))
    key = major.astype(np.int64) * n_minor + minor
    if n_major * n_minor * max(n, 1) < limit:
        return np.argsort(key * n + np.arange(n))
    return np.argsort(key, kind="stable")


def _rank(group: ArrayLike, relevance: ArrayLike, score: ArrayLike) -> _Ranked:
    """Validate the inputs and sort rows by (group, -score), stably."""
    group_arr = _as_1d("group", group)
    rel = _as_1d("relevance", relevance)
    sc = _as_1d("score", score)
    if not (len(group_arr) == len(rel) == len(sc)):
        raise ValueError(
            "group, relevance and score must have the same length, got "
            f"{len(group_arr)}, {len(rel)} and {len(sc)}"
        )
    try:
        rel = rel.astype(np.float64, copy=False)
        sc = sc.astype(np.float64, copy=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"relevance and score must be numeric: {err}") from err
    if np.isnan(sc).any():
        raise ValueError(f"score contains {int(np.isnan(sc).sum())} NaN value(s)")
    if not np.isfinite(rel).all():
        raise ValueError("relevance contains NaN or infinite value(s)")
    if (rel < 0).any():
        raise ValueError("relevance must be >= 0 (it is the gain of NDCG)")

    if group_arr.dtype.kind == "f" and np.isnan(group_arr).any():
        raise ValueError("group contains NaN value(s)")
    if group_arr.dtype.kind in "biuf":
        code_of_row, n_groups = _dense_codes(group_arr)
    else:  # strings, objects, ...: np.unique gives the same (sorted) order of groups
        _, code_of_row = np.unique(group_arr, return_inverse=True)
        code_of_row = code_of_row.reshape(-1)
        n_groups = int(code_of_row.max()) + 1 if len(code_of_row) else 0
    score_code, n_scores = _dense_codes(-sc)  # 0 = highest score
    order = _stable_order(code_of_row, n_groups, score_code, n_scores)
    code = code_of_row[order]
    new_group = np.empty(len(order), dtype=bool)
    new_group[:1] = True
    np.not_equal(code[1:], code[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    position = np.arange(len(order)) - starts[code] if len(order) else np.zeros(0, np.int64)
    return _Ranked(
        code=code,
        relevance=rel[order],
        score=sc[order],
        order=order,
        position=position,
        starts=starts,
        n_groups=len(starts),
    )


def _group_sum(ranked: _Ranked, values: np.ndarray) -> np.ndarray:
    return np.bincount(ranked.code, weights=values, minlength=ranked.n_groups)


def _discount(position: np.ndarray, k: int | None) -> np.ndarray:
    """1 / log2(rank + 1) for 1-based rank = position + 1; 0 at ranks beyond k."""
    discount = 1.0 / np.log2(position + 2.0)
    if k is not None:
        discount[position >= k] = 0.0
    return discount


def _n_relevant(ranked: _Ranked) -> np.ndarray:
    return _group_sum(ranked, (ranked.relevance > 0).astype(np.float64))


def _ndcg(ranked: _Ranked, k: int) -> np.ndarray:
    discount = _discount(ranked.position, k)

    # DCG with tie averaging: rows of one group with equal score form a tie run; every
    # row in the run gets the mean discount of the run's positions (0 beyond k). This
    # equals sklearn's "mean gain of the run times the sum of its discounts".
    n = len(ranked.code)
    new_run = np.empty(n, dtype=bool)
    new_run[:1] = True
    np.not_equal(ranked.score[1:], ranked.score[:-1], out=new_run[1:])
    new_run[ranked.starts] = True
    run = np.cumsum(new_run) - 1
    run_discount = np.bincount(run, weights=discount) / np.bincount(run)
    dcg = _group_sum(ranked, ranked.relevance * run_discount[run])

    # Ideal DCG: the same group's relevances sorted descending (ties there are harmless).
    rel_code, n_levels = _dense_codes(-ranked.relevance)  # 0 = highest relevance
    levels = np.empty(n_levels)
    levels[rel_code] = ranked.relevance
    ideal_key = np.sort(ranked.code.astype(np.int64) * n_levels + rel_code)
    ideal_relevance = levels[ideal_key % n_levels] if n_levels else ideal_key.astype(float)
    idcg = _group_sum(ranked, ideal_relevance * discount)

    ndcg = np.zeros(ranked.n_groups)
    np.divide(dcg, idcg, out=ndcg, where=idcg > 0)
    return ndcg


def _recall(ranked: _Ranked, k: int) -> np.ndarray:
    relevant = ranked.relevance > 0
    hits = _group_sum(ranked, (relevant & (ranked.position < k)).astype(np.float64))
    n_relevant = _n_relevant(ranked)
    recall = np.zeros(ranked.n_groups)
    np.divide(hits, n_relevant, out=recall, where=n_relevant > 0)
    return recall


def _average_precision(ranked: _Ranked, k: int | None) -> np.ndarray:
    relevant = (ranked.relevance > 0).astype(np.float64)
    cumulative = np.cumsum(relevant)
    # Hits at or above each row within its group: subtract the count before the group.
    before_group = (cumulative - relevant)[ranked.starts]
    hits_so_far = cumulative - before_group[ranked.code]
    precision = hits_so_far / (ranked.position + 1.0)
    contribution = precision * relevant
    if k is not None:
        contribution[ranked.position >= k] = 0.0
    n_relevant = _n_relevant(ranked)
    denominator = n_relevant if k is None else np.minimum(n_relevant, k)
    ap = np.zeros(ranked.n_groups)
    np.divide(_group_sum(ranked, contribution), denominator, out=ap, where=denominator > 0)
    return ap


def ndcg_at_k(group: ArrayLike, relevance: ArrayLike, score: ArrayLike, k: int) -> np.ndarray:
    """Normalized discounted cumulative gain at k, one value per group.

    Definition, per group (identical to ``sklearn.metrics.ndcg_score(y_true=[relevance],
    y_score=[score], k=k, ignore_ties=False)``):

    - gain = relevance (linear gain, no ``2**rel - 1``);
    - discount of 1-based rank r = ``1 / log2(r + 1)``, and 0 for r > k;
    - DCG@k = sum of gain x discount in the order of score descending;
    - ties in score: every ordering of tied rows is averaged, i.e. each tied row's gain
      is multiplied by the mean discount of the positions the tie occupies (positions
      beyond k count with discount 0);
    - IDCG@k = DCG@k of the same group's relevances sorted descending;
    - NDCG@k = DCG@k / IDCG@k, and 0 when IDCG@k = 0 (no positive relevance). Mask such
      groups out with :func:`groups_with_positives`; evaluation reports exclude them.

    A group smaller than k uses all its rows. A group of one row scores 1 if its relevance
    is positive, else 0. Returns values in the order of ``np.unique(group)``.
    """
    _check_k(k)
    return _ndcg(_rank(group, relevance, score), k)


def recall_at_k(group: ArrayLike, relevance: ArrayLike, score: ArrayLike, k: int) -> np.ndarray:
    """Recall at k, one value per group.

    Definition, per group: (number of relevant rows, ``relevance > 0``, among the top k)
    / (number of relevant rows in the group). The denominator is the full number of
    relevant rows (the standard definition), not ``min(k, n_relevant)``: a group with more
    relevant rows than k cannot reach 1.

    Ties in score: score descending, then original row order (stable, deterministic).
    Groups without relevant rows score 0 (exclude them with :func:`groups_with_positives`).
    Returns values in the order of ``np.unique(group)``.
    """
    _check_k(k)
    return _recall(_rank(group, relevance, score), k)


def average_precision(
    group: ArrayLike, relevance: ArrayLike, score: ArrayLike, k: int | None = None
) -> np.ndarray:
    """Average precision (at k), one value per group; MAP is the mean of it.

    Definition, per group, with binary relevance ``rel_i = relevance > 0`` at 1-based rank
    i in the order of score descending:

        AP@k = sum_{i <= k} P@i * rel_i / min(k, n_relevant)

    where P@i = (relevant rows in the top i) / i and n_relevant counts the group's
    relevant rows. With ``k=None`` the sum runs over all rows and the denominator is
    n_relevant (classic AP). The ``min(k, n_relevant)`` denominator makes a perfect
    top-k ranking score 1.

    Ties in score: score descending, then original row order (stable, deterministic; no
    averaging, unlike ``sklearn.metrics.average_precision_score``). Groups without
    relevant rows score 0 (exclude them with :func:`groups_with_positives`). Returns
    values in the order of ``np.unique(group)``.
    """
    _check_k(k, allow_none=True)
    return _average_precision(_rank(group, relevance, score), k)


def groups_with_positives(group: ArrayLike, relevance: ArrayLike) -> np.ndarray:
    """Boolean mask, in the order of ``np.unique(group)``: does the group have a positive?

    Groups where every relevance is 0 get 0 from every per-group metric here; they say
    nothing about a ranker, so evaluation reports exclude them by indexing the per-group
    values with this mask.
    """
    rel = _as_1d("relevance", relevance)
    ranked = _rank(group, rel, np.zeros(len(rel)))
    return _n_relevant(ranked) > 0


def catalog_coverage(
    group: ArrayLike, item: ArrayLike, score: ArrayLike, k: int, catalog_size: int
) -> float:
    """Catalog coverage at k: distinct items shown in any group's top k / catalog size.

    The top k of each group is taken in the order of score descending, ties broken by
    original row order (stable, deterministic). ``catalog_size`` is the number of items
    that could have been shown (e.g. the catalog of the shelf's item type); it must be
    positive and at least the number of distinct items shown.
    """
    _check_k(k)
    item_arr = _as_1d("item", item)
    if isinstance(catalog_size, bool) or not isinstance(catalog_size, int | np.integer):
        raise ValueError(f"catalog_size must be a positive integer, got {catalog_size!r}")
    if catalog_size < 1:
        raise ValueError(f"catalog_size must be a positive integer, got {catalog_size!r}")
    if len(item_arr) != len(np.asarray(score)):
        raise ValueError(
            f"item and score must have the same length, got {len(item_arr)} and "
            f"{len(np.asarray(score))}"
        )
    ranked = _rank(group, np.zeros(len(item_arr)), score)
    shown = item_arr[ranked.order[ranked.position < k]]
    n_shown = len(np.unique(shown))
    if n_shown > catalog_size:
        raise ValueError(
            f"{n_shown} distinct items shown but catalog_size is {catalog_size}; "
            "catalog_size must count every item that could be shown"
        )
    return n_shown / catalog_size


def paired_bootstrap_ci(
    a: ArrayLike,
    b: ArrayLike,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: ArrayLike | None = None,
) -> dict[str, float]:
    """Paired bootstrap of the mean difference between two per-group metric vectors.

    ``a`` (model) and ``b`` (baseline) hold one value per group, for the same groups in
    the same order. Groups are resampled with replacement (the same draw for a and b,
    which keeps the pairing); each resample gives mean(a - b). With ``clusters`` (one
    label per group, e.g. the listener of each request) whole clusters are resampled
    instead, so correlated groups of one cluster move together and the interval is not
    too narrow. Returns ``{"diff": mean(a - b), "low": ..., "high": ...}`` where low/high
    are the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles (numpy's
    default linear interpolation) of the resampled means. Deterministic for a given
    ``seed``. Resamples are drawn as index matrices in chunks, not one Python step per
    resample.
    """
    _check_bootstrap(n_resamples, confidence)
    a_arr, b_arr = _paired("a", a, "b", b)
    diff = a_arr - b_arr
    means = _resampled_means(diff[None, :], clusters, n_resamples, seed)[:, 0]
    low, high = _interval(means, confidence)
    return {"diff": float(diff.mean()), "low": low, "high": high}


def bootstrap_gap_closed(
    model: ArrayLike,
    baseline: ArrayLike,
    oracle: ArrayLike,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: ArrayLike | None = None,
) -> dict[str, float | None]:
    """The share of the baseline→oracle gap the model closes, with a bootstrap interval.

    Per-group metric vectors as in :func:`paired_bootstrap_ci` (same resampling, same
    ``clusters``); each resample gives mean(model - baseline) / mean(oracle - baseline).
    Returns ``{"gap_closed": ..., "low": ..., "high": ...}``, all None when the oracle
    does not beat the baseline on average; resamples where it does not are left out.
    """
    _check_bootstrap(n_resamples, confidence)
    model_arr, baseline_arr = _paired("model", model, "baseline", baseline)
    _, oracle_arr = _paired("model", model, "oracle", oracle)
    lift = np.stack([model_arr - baseline_arr, oracle_arr - baseline_arr])
    if lift[1].mean() <= 0:
        return {"gap_closed": None, "low": None, "high": None}
    means = _resampled_means(lift, clusters, n_resamples, seed)
    ratios = means[means[:, 1] > 0]
    low, high = _interval(ratios[:, 0] / ratios[:, 1], confidence)
    return {"gap_closed": float(lift[0].mean() / lift[1].mean()), "low": low, "high": high}


def _paired(name_a: str, a: ArrayLike, name_b: str, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a_arr = _as_1d(name_a, a).astype(np.float64)
    b_arr = _as_1d(name_b, b).astype(np.float64)
    if len(a_arr) != len(b_arr):
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got {len(a_arr)} and {len(b_arr)}"
        )
    if len(a_arr) == 0:
        raise ValueError(f"{name_a} and {name_b} are empty; need at least one group")
    if np.isnan(a_arr).any() or np.isnan(b_arr).any():
        raise ValueError(f"{name_a} and {name_b} must not contain NaN")
    return a_arr, b_arr


def _resampled_means(
    values: np.ndarray, clusters: ArrayLike | None, n_resamples: int, seed: int
) -> np.ndarray:
    """Bootstrap means of each row of ``values`` (rows x groups), resampling clusters of
    groups (each group its own cluster by default); shape (n_resamples, rows)."""
    n_groups = values.shape[1]
    if clusters is None:
        sums, counts = values, np.ones(n_groups)
    else:
        labels = np.asarray(clusters)
        if labels.shape != (n_groups,):
            raise ValueError(
                f"clusters must hold one label per group ({n_groups}), got {labels.shape}"
            )
        _, inverse = np.unique(labels, return_inverse=True)
        counts = np.bincount(inverse).astype(np.float64)
        sums = np.stack([np.bincount(inverse, weights=row) for row in values])
    n = len(counts)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    means = np.empty((n_resamples, len(values)))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        indices = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = (sums[:, indices].sum(axis=2) / counts[indices].sum(axis=1)).T
    return means


def _check_bootstrap(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def summarize(
    group: ArrayLike,
    relevance: ArrayLike,
    score: ArrayLike,
    ks: tuple[int, ...] = (5, 10),
    *,
    exclude_empty: bool = True,
) -> dict[str, float]:
    """Mean of every metric over groups, from one sort of the rows.

    Returns ``{"ndcg@k": ..., "recall@k": ... for k in ks, "map": ..., "n_groups": ...}``
    where ``map`` is the mean of :func:`average_precision` with ``k=None``. With
    ``exclude_empty`` (the default, as in evaluation reports) groups without a positive
    relevance are left out of every mean; ``n_groups`` counts the groups averaged. Means
    over zero groups are NaN.
    """
    for k in ks:
        _check_k(k)
    ranked = _rank(group, relevance, score)
    keep = _n_relevant(ranked) > 0 if exclude_empty else np.ones(ranked.n_groups, dtype=bool)
    n_kept = int(keep.sum())

    def mean(values: np.ndarray) -> float:
        return float(values[keep].mean()) if n_kept else float("nan")

    summary: dict[str, float] = {}
    for k in ks:
        summary[f"ndcg@{k}"] = mean(_ndcg(ranked, k))
    for k in ks:
        summary[f"recall@{k}"] = mean(_recall(ranked, k))
    summary["map"] = mean(_average_precision(ranked, None))
    summary["n_groups"] = n_kept
    return summary


def mean_ndcg(frame: pd.DataFrame, scores: np.ndarray, k: int) -> float:
    """Mean NDCG@k over the groups of ``frame`` (every group has a relevant row)."""
    return float(ndcg_at_k(frame["group"], frame["label"], scores, k).mean())


def validation_ndcg(ranker: Ranker, frame: pd.DataFrame, k: int) -> float:
    return mean_ndcg(frame, ranker.predict(frame), k)
