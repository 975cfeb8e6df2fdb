"""Tests for evaluation.metrics: each test says which property of a metric it guards."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from evaluation import metrics
from evaluation.metrics import (
    average_precision,
    bootstrap_gap_closed,
    catalog_coverage,
    groups_with_positives,
    ndcg_at_k,
    paired_bootstrap_ci,
    recall_at_k,
    summarize,
)


def _random_groups(
    seed: int, n_groups: int = 300, max_size: int = 25, min_size: int = 2, tied: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled rows of groups with sparse graded relevance; some groups all-zero.

    Group ids are large, non-consecutive ints so rows of a group are not contiguous and
    codes differ from ids. With ``tied`` scores take only a few values.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(min_size, max_size + 1, n_groups)
    ids = rng.choice(10**9, size=n_groups, replace=False)
    group = np.repeat(ids, sizes)
    n = len(group)
    relevance = rng.integers(0, 4, n).astype(float) * (rng.random(n) < 0.3)
    relevance[np.isin(group, ids[: n_groups // 10])] = 0.0  # some groups with no positive
    score = rng.integers(0, 4, n).astype(float) if tied else rng.normal(size=n)
    perm = rng.permutation(n)
    return group[perm], relevance[perm], score[perm]


def _per_group(group: np.ndarray, *arrays: np.ndarray):
    """(group id, arrays restricted to that group) in np.unique order; rows keep input order."""
    for g in np.unique(group):
        mask = group == g
        yield g, [a[mask] for a in arrays]


# --- NDCG agrees with sklearn -------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5, 10])
@pytest.mark.parametrize("tied", [False, True])
def test_ndcg_matches_sklearn_per_group(k: int, tied: bool) -> None:
    """Guards: linear gain, log2 discount, k truncation, tie averaging, zero-IDCG groups."""
    group, relevance, score = _random_groups(seed=k + 100 * tied, tied=tied)
    ours = ndcg_at_k(group, relevance, score, k)
    expected = np.array(
        [
            ndcg_score([rel], [sc], k=k, ignore_ties=False)
            for _, (rel, sc) in _per_group(group, relevance, score)
        ]
    )
    assert len(ours) == len(np.unique(group))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)
    # The data really exercises ties and groups without positives.
    assert (~groups_with_positives(group, relevance)).sum() >= 10
    if tied:
        assert len(np.unique(score)) == 4


def test_ndcg_matches_sklearn_with_float_gains_and_ties_straddling_k() -> None:
    """Guards: tie runs that cross the k cut use discount 0 for positions beyond k."""
    rng = np.random.default_rng(7)
    group = np.repeat(np.arange(200), 12)
    relevance = rng.random(len(group)) * (rng.random(len(group)) < 0.5)
    score = rng.integers(0, 3, len(group)).astype(float)
    for k in (1, 4, 6, 12, 20):
        expected = [
            ndcg_score([rel], [sc], k=k) for _, (rel, sc) in _per_group(group, relevance, score)
        ]
        np.testing.assert_allclose(
            ndcg_at_k(group, relevance, score, k), expected, rtol=0, atol=1e-9
        )


def test_ndcg_all_zero_relevance_is_zero_like_sklearn() -> None:
    """Guards: groups with ideal DCG 0 score 0, the value sklearn gives."""
    relevance = np.zeros(4)
    score = np.array([0.3, 0.1, 0.2, 0.0])
    assert ndcg_score([relevance], [score], k=3) == 0.0
    np.testing.assert_array_equal(ndcg_at_k(np.zeros(4, int), relevance, score, 3), [0.0])


def test_ndcg_hand_worked_tie() -> None:
    """Guards: tie averaging by hand.

    Rows (rel 3, rel 0) share one score; k = 1. Discounts of positions 1, 2 at k=1 are
    (1, 0), mean 0.5, so DCG = 3 * 0.5 + 0 * 0.5 = 1.5; IDCG = 3; NDCG = 0.5.
    """
    got = ndcg_at_k([0, 0], [3.0, 0.0], [1.0, 1.0], 1)
    np.testing.assert_allclose(got, [0.5])
    np.testing.assert_allclose(got, [ndcg_score([[3.0, 0.0]], [[1.0, 1.0]], k=1)])


def test_ndcg_hand_worked_no_ties() -> None:
    """Guards: the discount 1/log2(rank+1) and IDCG from the group's sorted relevances.

    Ranked relevances (0, 2, 1): DCG@3 = 0 + 2/log2(3) + 1/log2(4) = 2/log2(3) + 0.5;
    ideal (2, 1, 0): IDCG@3 = 2 + 1/log2(3).
    """
    got = ndcg_at_k([5, 5, 5], [1.0, 0.0, 2.0], [0.1, 0.9, 0.5], 3)
    expected = (2 / np.log2(3) + 0.5) / (2 + 1 / np.log2(3))
    np.testing.assert_allclose(got, [expected], rtol=1e-12)


def test_groups_of_size_one_and_smaller_than_k() -> None:
    """Guards: singletons score 1 (positive) or 0; groups shorter than k rank in full."""
    group = np.array([0, 1, 2, 2])
    relevance = np.array([2.0, 0.0, 0.0, 1.0])
    score = np.array([0.5, 0.5, 0.9, 0.1])
    np.testing.assert_allclose(ndcg_at_k(group, relevance, score, 10), [1.0, 0.0, 1 / np.log2(3)])
    np.testing.assert_allclose(recall_at_k(group, relevance, score, 10), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(average_precision(group, relevance, score, 10), [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(groups_with_positives(group, relevance), [True, False, True])


# --- recall, AP, coverage by hand ----------------------------------------------------------

# Group 0: relevance (1, 0, 1, 0), score (0.9, 0.8, 0.1, 0.5)
#   -> ranked relevances (1, 0, 0, 1); two relevant rows.
# Group 1: relevance (0, 2), score (0.2, 0.1) -> ranked (0, 2); one relevant row.
HAND_GROUP = np.array([0, 0, 0, 0, 1, 1])
HAND_REL = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 2.0])
HAND_SCORE = np.array([0.9, 0.8, 0.1, 0.5, 0.2, 0.1])


def test_recall_hand_worked() -> None:
    """Guards: recall = relevant in top k / all relevant of the group (not / min(k, n))."""
    # k=1: group 0 top (1) -> 1/2; group 1 top (0) -> 0/1.
    np.testing.assert_allclose(recall_at_k(HAND_GROUP, HAND_REL, HAND_SCORE, 1), [0.5, 0.0])
    # k=2: group 0 (1, 0) -> 1/2; group 1 (0, 2) -> 1/1.
    np.testing.assert_allclose(recall_at_k(HAND_GROUP, HAND_REL, HAND_SCORE, 2), [0.5, 1.0])
    # k=4: everything retrieved.
    np.testing.assert_allclose(recall_at_k(HAND_GROUP, HAND_REL, HAND_SCORE, 4), [1.0, 1.0])


def test_average_precision_hand_worked() -> None:
    """Guards: AP@k = sum of P@i at relevant ranks i <= k / min(k, n_relevant)."""
    # Full AP: group 0 hits at ranks 1 and 4: (1/1 + 2/4) / 2 = 0.75;
    #          group 1 hit at rank 2: (1/2) / 1 = 0.5.
    np.testing.assert_allclose(average_precision(HAND_GROUP, HAND_REL, HAND_SCORE), [0.75, 0.5])
    # k=2: group 0 (1/1) / min(2, 2) = 0.5; group 1 (1/2) / min(2, 1) = 0.5.
    np.testing.assert_allclose(average_precision(HAND_GROUP, HAND_REL, HAND_SCORE, k=2), [0.5, 0.5])
    # k=1: group 0 (1/1) / min(1, 2) = 1; group 1 nothing in top 1 -> 0.
    np.testing.assert_allclose(average_precision(HAND_GROUP, HAND_REL, HAND_SCORE, k=1), [1.0, 0.0])


def test_recall_and_ap_break_ties_by_row_order() -> None:
    """Guards: tied scores rank by original row order (deterministic, no randomness)."""
    # Tied pair, relevant row second -> ranked (0, 1): recall@1 = 0, AP = 1/2.
    assert recall_at_k([0, 0], [0.0, 1.0], [0.5, 0.5], 1)[0] == 0.0
    assert average_precision([0, 0], [0.0, 1.0], [0.5, 0.5])[0] == 0.5
    # Relevant row first -> ranked (1, 0): recall@1 = 1, AP = 1.
    assert recall_at_k([0, 0], [1.0, 0.0], [0.5, 0.5], 1)[0] == 1.0
    assert average_precision([0, 0], [1.0, 0.0], [0.5, 0.5])[0] == 1.0


def test_catalog_coverage_hand_worked() -> None:
    """Guards: coverage = distinct items in any top k / catalog size."""
    group = np.array([0, 0, 0, 1, 1, 1])
    item = np.array(["a", "b", "c", "b", "d", "e"])
    score = np.array([3.0, 2.0, 1.0, 1.0, 3.0, 2.0])
    # k=1: {a, d} -> 2/10; k=2: {a, b} | {d, e} -> 4/10; k=3: {a..e} -> 5/10.
    assert catalog_coverage(group, item, score, 1, 10) == pytest.approx(0.2)
    assert catalog_coverage(group, item, score, 2, 10) == pytest.approx(0.4)
    assert catalog_coverage(group, item, score, 3, 10) == pytest.approx(0.5)


def test_recall_and_ap_match_a_naive_reference() -> None:
    """Guards: the vectorized recall/AP equal a per-group loop on random data."""
    group, relevance, score = _random_groups(seed=3, min_size=1)
    for k in (1, 3, 10, None):
        want_recall, want_ap = [], []
        for _, (rel, sc) in _per_group(group, relevance, score):
            ranked = rel[np.argsort(-sc, kind="stable")] > 0
            n_rel = ranked.sum()
            top = ranked if k is None else ranked[:k]
            precision = np.cumsum(top) / np.arange(1, len(top) + 1)
            denominator = n_rel if k is None else min(k, n_rel)
            want_ap.append((precision * top).sum() / denominator if n_rel else 0.0)
            want_recall.append(top.sum() / n_rel if n_rel else 0.0)
        np.testing.assert_allclose(average_precision(group, relevance, score, k), want_ap)
        if k is not None:
            np.testing.assert_allclose(recall_at_k(group, relevance, score, k), want_recall)


# --- group layout --------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_shuffled_rows_give_the_same_answer(tied: bool) -> None:
    """Guards: rows of a group need not be contiguous or in any order."""
    group, relevance, score = _random_groups(seed=11, tied=tied)
    order = np.argsort(group, kind="stable")  # contiguous groups, same within-group order
    perm = np.random.default_rng(0).permutation(len(group))
    for k in (1, 5, 10):
        base = ndcg_at_k(group[order], relevance[order], score[order], k)
        # NDCG averages over ties, so any permutation of rows leaves it unchanged.
        np.testing.assert_allclose(ndcg_at_k(group[perm], relevance[perm], score[perm], k), base)
        np.testing.assert_allclose(ndcg_at_k(group, relevance, score, k), base)
        # Recall/AP break ties by row order; interleaving groups keeps within-group order.
        np.testing.assert_allclose(
            recall_at_k(group, relevance, score, k),
            recall_at_k(group[order], relevance[order], score[order], k),
        )
        np.testing.assert_allclose(
            average_precision(group, relevance, score, k),
            average_precision(group[order], relevance[order], score[order], k),
        )
        if not tied:
            np.testing.assert_allclose(
                recall_at_k(group[perm], relevance[perm], score[perm], k),
                recall_at_k(group, relevance, score, k),
            )


def test_output_follows_np_unique_order_for_string_groups() -> None:
    """Guards: per-group values come in np.unique(group) order, for any hashable ids."""
    group = np.array(["b", "a", "b", "a", "c"])
    relevance = np.array([1.0, 0.0, 0.0, 1.0, 0.0])
    score = np.array([0.9, 0.8, 0.1, 0.2, 0.5])
    # a: ranked (0, 1) -> recall@1 0; b: ranked (1, 0) -> 1; c: no positives -> 0.
    np.testing.assert_array_equal(recall_at_k(group, relevance, score, 1), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(
        groups_with_positives(list(group), relevance), [True, True, False]
    )


def test_empty_input_gives_empty_output() -> None:
    """Guards: no rows -> no groups, without errors."""
    empty = np.array([], dtype=float)
    assert ndcg_at_k(np.array([], dtype=int), empty, empty, 5).shape == (0,)
    assert recall_at_k(np.array([], dtype=int), empty, empty, 5).shape == (0,)


def test_summarize_means_exclude_groups_without_positives() -> None:
    """Guards: summarize equals the means of the per-group metrics over masked groups."""
    group, relevance, score = _random_groups(seed=5)
    keep = groups_with_positives(group, relevance)
    summary = summarize(group, relevance, score, ks=(5, 10))
    assert summary["n_groups"] == keep.sum() < len(keep)
    for k in (5, 10):
        assert summary[f"ndcg@{k}"] == pytest.approx(
            ndcg_at_k(group, relevance, score, k)[keep].mean()
        )
        assert summary[f"recall@{k}"] == pytest.approx(
            recall_at_k(group, relevance, score, k)[keep].mean()
        )
    assert summary["map"] == pytest.approx(average_precision(group, relevance, score)[keep].mean())
    everything = summarize(group, relevance, score, ks=(5,), exclude_empty=False)
    assert everything["n_groups"] == len(keep)
    assert everything["ndcg@5"] == pytest.approx(ndcg_at_k(group, relevance, score, 5).mean())


# --- bootstrap -----------------------------------------------------------------------------


def test_bootstrap_identical_inputs_give_zero() -> None:
    """Guards: no difference -> diff 0 and a degenerate [0, 0] interval."""
    a = np.random.default_rng(0).random(500)
    assert paired_bootstrap_ci(a, a.copy()) == {"diff": 0.0, "low": 0.0, "high": 0.0}


def test_bootstrap_constant_shift_excludes_zero() -> None:
    """Guards: a model better by 1 on every group has an interval excluding 0."""
    a = np.random.default_rng(1).random(500)
    result = paired_bootstrap_ci(a, a - 1.0)
    assert result["diff"] == pytest.approx(1.0)
    assert 0.0 < result["low"] <= result["diff"] <= result["high"]


def test_bootstrap_is_deterministic_and_matches_a_loop() -> None:
    """Guards: seeded results repeat, and equal a one-resample-at-a-time reference."""
    rng = np.random.default_rng(2)
    a, b = rng.random(300), rng.random(300)
    first = paired_bootstrap_ci(a, b, n_resamples=400, confidence=0.9, seed=42)
    assert first == paired_bootstrap_ci(a, b, n_resamples=400, confidence=0.9, seed=42)
    assert first != paired_bootstrap_ci(a, b, n_resamples=400, confidence=0.9, seed=43)
    assert first["low"] < first["diff"] < first["high"]

    diff = a - b
    reference = np.random.default_rng(42)
    means = [diff[reference.integers(0, len(diff), size=len(diff))].mean() for _ in range(400)]
    low, high = np.quantile(means, [0.05, 0.95])
    assert first["low"] == pytest.approx(low, abs=1e-12)
    assert first["high"] == pytest.approx(high, abs=1e-12)


def test_bootstrap_does_not_depend_on_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards: drawing resamples in chunks changes nothing (same random stream)."""
    rng = np.random.default_rng(3)
    a, b = rng.random(1000), rng.random(1000)
    whole = paired_bootstrap_ci(a, b, n_resamples=300)
    monkeypatch.setattr(metrics, "_BOOTSTRAP_CHUNK_ELEMENTS", 7 * 1000)
    assert paired_bootstrap_ci(a, b, n_resamples=300) == whole


def test_bootstrap_with_one_group_per_cluster_is_the_plain_bootstrap() -> None:
    """Guards: clusters of one group change nothing."""
    rng = np.random.default_rng(4)
    a, b = rng.random(400), rng.random(400)
    plain = paired_bootstrap_ci(a, b, n_resamples=300)
    assert paired_bootstrap_ci(a, b, n_resamples=300, clusters=np.arange(400) * 3) == plain


def test_bootstrap_resamples_whole_clusters() -> None:
    """Guards: a listener's repeated requests are not independent evidence. Seven copies
    of each of 200 groups give the plain interval of the 200 when clustered, and a
    falsely narrow one (about 1/sqrt(7)) when each copy counts on its own."""
    rng = np.random.default_rng(5)
    a, b = rng.random(200), rng.random(200)
    once = paired_bootstrap_ci(a, b, n_resamples=2000)
    copies = np.tile(np.arange(200), 7)
    clustered = paired_bootstrap_ci(a[copies], b[copies], n_resamples=2000, clusters=copies)
    naive = paired_bootstrap_ci(a[copies], b[copies], n_resamples=2000)
    width = {
        name: r["high"] - r["low"]
        for name, r in [("once", once), ("clustered", clustered), ("naive", naive)]
    }
    assert clustered["diff"] == pytest.approx(once["diff"])
    assert width["clustered"] == pytest.approx(width["once"], rel=0.15)
    assert width["naive"] == pytest.approx(width["once"] / np.sqrt(7), rel=0.15)
    with pytest.raises(ValueError, match="one label per group"):
        paired_bootstrap_ci(a, b, clusters=np.arange(3))


def test_bootstrap_gap_closed() -> None:
    """Guards: the ratio of mean lifts, its interval from the same resamples as a loop
    computes it, and None when the oracle does not beat the baseline."""
    rng = np.random.default_rng(6)
    baseline = rng.random(300)
    oracle = baseline + rng.random(300)
    model = baseline + 0.5 * (oracle - baseline)
    exact = bootstrap_gap_closed(model, baseline, oracle)
    assert exact == pytest.approx({"gap_closed": 0.5, "low": 0.5, "high": 0.5})

    model = baseline + rng.normal(0.3, 0.5, 300)
    clusters = rng.integers(0, 60, 300)
    result = bootstrap_gap_closed(
        model, baseline, oracle, n_resamples=200, seed=3, clusters=clusters
    )
    ratio = (model - baseline).mean() / (oracle - baseline).mean()
    assert result["gap_closed"] == pytest.approx(ratio)
    reference = np.random.default_rng(3)
    ratios = []
    for _ in range(200):
        drawn = reference.integers(0, 60, size=60)
        rows = np.concatenate([np.flatnonzero(clusters == c) for c in drawn])
        ratios.append((model - baseline)[rows].mean() / (oracle - baseline)[rows].mean())
    low, high = np.quantile(ratios, [0.025, 0.975])
    assert result["low"] == pytest.approx(low) and result["high"] == pytest.approx(high)
    assert result["low"] < ratio < result["high"]
    none = {"gap_closed": None, "low": None, "high": None}
    assert bootstrap_gap_closed(model, baseline, baseline) == none


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "relevance", "score", "match"),
    [
        ([0, 0], [1.0, 0.0], [0.5, np.nan], "score contains 1 NaN"),
        ([0, 0], [np.nan, 0.0], [0.5, 0.1], "relevance contains NaN"),
        ([0, 0], [-1.0, 0.0], [0.5, 0.1], "relevance must be >= 0"),
        ([0, 0, 1], [1.0, 0.0], [0.5, 0.1], "same length"),
        ([0, 0], [1.0, 0.0], [0.5, 0.1, 0.2], "same length"),
        ([0.0, np.nan], [1.0, 0.0], [0.5, 0.1], "group contains NaN"),
        ([[0, 0]], [[1.0, 0.0]], [[0.5, 0.1]], "one-dimensional"),
    ],
)
def test_bad_inputs_raise(group, relevance, score, match: str) -> None:
    """Guards: invalid input fails loudly with the problem named, never a silent NaN."""
    for metric in (ndcg_at_k, recall_at_k, average_precision):
        with pytest.raises(ValueError, match=match):
            metric(group, relevance, score, 3)


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3"])
def test_bad_k_raises(k) -> None:
    """Guards: k must be a positive integer."""
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ndcg_at_k([0, 0], [1.0, 0.0], [0.5, 0.1], k)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        recall_at_k([0, 0], [1.0, 0.0], [0.5, 0.1], k)


def test_catalog_coverage_bad_inputs_raise() -> None:
    """Guards: catalog size must be positive and cover every item shown."""
    with pytest.raises(ValueError, match="catalog_size"):
        catalog_coverage([0, 0], ["a", "b"], [1.0, 0.0], 2, 0)
    with pytest.raises(ValueError, match="catalog_size is 1"):
        catalog_coverage([0, 0], ["a", "b"], [1.0, 0.0], 2, 1)
    with pytest.raises(ValueError, match="same length"):
        catalog_coverage([0, 0], ["a"], [1.0, 0.0], 2, 5)
    with pytest.raises(ValueError, match="NaN"):
        catalog_coverage([0, 0], ["a", "b"], [1.0, np.nan], 2, 5)


def test_bootstrap_bad_inputs_raise() -> None:
    """Guards: paired inputs must align, be finite numbers, with sane parameters."""
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap_ci([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_ci([], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_ci([1.0], [0.0], confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap_ci([1.0], [0.0], n_resamples=0)
