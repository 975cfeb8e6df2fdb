"""Drift detection: bucket semantics, the Chebyshev distance, comparisons, profile files and
the webhook. Each test names the property it guards; all data is small and synthetic."""

import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import distance as scipy_distance

from evaluation.drift import (
    Profile,
    WebhookError,
    build_profile,
    chebyshev,
    compare,
    histogram,
    load_profile,
    noise_floor,
    post_webhook,
    profile_on,
    save_profile,
)

MARKETS = ["SE", "US", "DE", "GB", "BR"]


def listener_features(rows: int, seed: int) -> pd.DataFrame:
    """A feature table like the rankers': minutes, counts, a flag, a market, an embedding."""
    rng = np.random.default_rng(seed)
    minutes = rng.gamma(2.0, 30.0, rows)
    minutes[rng.random(rows) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "minutes_28d": minutes,
            "plays_7d": rng.poisson(4.0, rows),
            "is_premium": rng.random(rows) < 0.3,
            "market": rng.choice(MARKETS[:4], size=rows, p=[0.4, 0.3, 0.2, 0.1]),
            "embedding": [np.zeros(2)] * rows,
        }
    )


@pytest.fixture(scope="module")
def reference_frame() -> pd.DataFrame:
    return listener_features(20_000, seed=1)


@pytest.fixture(scope="module")
def reference(reference_frame: pd.DataFrame) -> Profile:
    return build_profile(reference_frame)


def distances(report) -> dict[str, float]:
    return {feature.name: feature.distance for feature in report.features}


# --- the distance ---------------------------------------------------------------------------


def test_chebyshev_equals_scipy_on_normalized_random_histograms():
    rng = np.random.default_rng(0)
    for _ in range(200):
        size = int(rng.integers(1, 40))
        p = rng.integers(0, 1000, size) * (rng.random(size) < 0.8)
        q = rng.integers(0, 1000, size)
        p[0] += 1  # neither side empty
        expected = scipy_distance.chebyshev(p / p.sum(), q / q.sum())
        assert chebyshev(p, q) == pytest.approx(expected, abs=1e-12)
        assert chebyshev(p, q) == chebyshev(q, p)


def test_chebyshev_counts_the_null_bucket_and_an_empty_side_is_maximal():
    # Identical non-null shapes, but q has half its rows in the (last) null bucket.
    assert chebyshev([5, 5, 0], [5, 5, 10]) == pytest.approx(0.5)
    assert chebyshev([0, 0, 0], [1, 2, 3]) == 1.0
    assert chebyshev([3, 1], [6, 2]) == 0.0  # scale-free
    with pytest.raises(ValueError, match="equally long"):
        chebyshev([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match=">= 0"):
        chebyshev([1, -1], [1, 1])


# --- buckets ---------------------------------------------------------------------------------


def test_numeric_buckets_on_a_hand_made_example():
    frame = pd.DataFrame({"x": [0, 1, 2, 3, 4, 5, 6, 7, 8, np.nan]})
    feature = build_profile(frame, bins=4).features["x"]
    # "lower" quartiles of 0..8 are observed values: 0, 2, 4, 6, 8.
    assert feature.edges == (0.0, 2.0, 4.0, 6.0, 8.0)
    # under | [0,2) [2,4) [4,6) [6,8) | =8 | over | null
    assert feature.counts.tolist() == [0, 2, 2, 2, 2, 1, 0, 1]
    new = [-np.inf, -1, 0, 1.999, 2, 7.5, 8, 8.0001, np.inf, np.nan, None]
    # -inf,-1 under; 0,1.999 in [0,2); 2 in [2,4); 7.5 in [6,8); 8 is the point bin;
    # 8.0001,+inf over; NaN,None null.
    assert histogram(feature, new).tolist() == [2, 2, 1, 0, 1, 1, 2, 2]
    assert feature.labels() == [
        "< 0", "[0, 2)", "[2, 4)", "[4, 6)", "[6, 8)", "= 8", "> 8", "<null>",
    ]  # fmt: skip


def test_low_cardinality_values_keep_their_own_buckets():
    frame = pd.DataFrame(
        {
            "flag": [True, False, False, True, True],
            "nullable_flag": pd.array([True, None, False, False, True], dtype="boolean"),
            "constant": [7, 7, 7, 7, 7],
            "all_null": [np.nan] * 5,
        }
    )
    features = build_profile(frame).features
    # False and True are [0, 1) and the point bin {1}, never merged.
    assert features["flag"].counts.tolist() == [0, 2, 3, 0, 0]
    assert features["nullable_flag"].counts.tolist() == [0, 2, 2, 0, 1]
    assert histogram(features["constant"], [6, 7, 8, None]).tolist() == [1, 1, 1, 1]
    assert features["all_null"].edges == ()
    assert histogram(features["all_null"], [1.0, np.inf, None]).tolist() == [2, 1]


def test_categorical_buckets_top_values_other_and_null():
    values = ["b", "a", "b", "a", "e", "d", None, np.nan, "c", "b"]
    feature = build_profile(pd.DataFrame({"m": values}), top_values=3).features["m"]
    # b:3, a:2, then e, d, c tie at 1: ties go by value, so c is kept, d and e are other.
    assert feature.values == ("b", "a", "c")
    assert feature.counts.tolist() == [3, 2, 1, 2, 2]
    assert histogram(feature, ["a", "z", None, "b", "a"]).tolist() == [1, 2, 0, 1, 1]
    category = pd.Series(["a", "a", None], dtype="category")
    assert histogram(feature, category).tolist() == [0, 2, 0, 0, 1]
    mixed = build_profile(pd.DataFrame({"k": pd.Series([1, "1", 2], dtype=object)}))
    assert mixed.features["k"].values == ("1", "2")  # compared as strings
    assert mixed.features["k"].counts.tolist() == [2, 1, 0, 0]


def test_array_valued_columns_are_skipped_and_logged(reference, caplog):
    assert "embedding" not in reference.features
    assert "array" in reference.skipped["embedding"]
    with caplog.at_level(logging.INFO, logger="evaluation.drift"):
        build_profile(pd.DataFrame({"v": [[1, 2], None, [3]]}))
    assert "skips 'v'" in caplog.text


def test_numeric_histogram_matches_a_mask_per_bucket_on_100k_rows():
    rng = np.random.default_rng(3)
    feature = build_profile(pd.DataFrame({"x": rng.lognormal(size=5_000)})).features["x"]
    x = rng.lognormal(mean=0.3, size=100_000) - 0.05
    x[rng.random(x.size) < 0.03] = np.nan
    x[:20] = np.inf
    x[20:40] = -np.inf
    x[40:60] = feature.edges[-1]  # exactly the maximum
    edges = np.asarray(feature.edges)
    masks = [x < edges[0]]
    masks += [(x >= lo) & (x < hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    masks += [x == edges[-1], x > edges[-1], np.isnan(x)]
    expected = [int(mask.sum()) for mask in masks]
    counts = histogram(feature, x)
    assert counts.tolist() == expected
    assert counts.sum() == x.size
    # np.histogram's last bin is right-closed: it equals our last inner bin plus the point bin.
    inside = x[(x >= edges[0]) & (x <= edges[-1])]
    numpy_counts, _ = np.histogram(inside, bins=edges)
    assert numpy_counts[:-1].tolist() == counts[1:-4].tolist()
    assert numpy_counts[-1] == counts[-4] + counts[-3]


def test_categorical_histogram_matches_a_counter_on_100k_rows():
    rng = np.random.default_rng(4)
    names = np.array([f"show-{i}" for i in range(60)], dtype=object)
    feature = build_profile(pd.DataFrame({"s": rng.choice(names, 3_000)})).features["s"]
    values = rng.choice(np.append(names, [None, "brand-new"]), 100_000)
    tally = Counter(values.tolist())
    nulls = tally.pop(None)
    expected = [tally.pop(value, 0) for value in feature.values]
    expected += [sum(tally.values()), nulls]
    assert histogram(feature, values).tolist() == expected


# --- comparisons -----------------------------------------------------------------------------


def test_a_frame_against_its_own_profile_has_zero_distance(reference, reference_frame):
    report = compare(reference, reference_frame)
    assert set(distances(report)) == {"minutes_28d", "plays_7d", "is_premium", "market"}
    assert all(value == 0.0 for value in distances(report).values())
    assert not report.breach and report.drifted_features == ()
    assert report.missing_features == () and report.extra_features == ()
    # Drift is distance strictly above the threshold: 0 is not above 0.
    assert not compare(reference, reference_frame, default_threshold=0.0).breach


def test_a_unit_change_drifts_while_untouched_features_do_not(reference):
    current = listener_features(20_000, seed=2)  # a fresh sample, same distributions
    current["minutes_28d"] = current["minutes_28d"] * 60  # minutes logged as seconds
    report = compare(reference, current)
    by_name = {feature.name: feature for feature in report.features}
    assert report.drifted_features == ("minutes_28d",) and report.breach
    assert by_name["minutes_28d"].distance > 0.5
    assert by_name["minutes_28d"].worst_bucket.startswith(">")  # mass moved to overflow
    for name in ("plays_7d", "is_premium", "market"):
        assert by_name[name].distance < 0.05, name


def test_a_new_dominant_market_drifts(reference):
    current = listener_features(5_000, seed=5)
    current.loc[:2_999, "market"] = "BR"  # a launch: 60% of traffic from a new market
    report = compare(reference, current)
    market = next(feature for feature in report.features if feature.name == "market")
    assert market.drifted and market.worst_bucket == "<other>"
    assert market.distance == pytest.approx(0.6, abs=0.05)


def test_null_rate_change_is_reported(reference):
    current = listener_features(20_000, seed=6)
    current.loc[current.index % 4 == 0, "plays_7d"] = np.nan  # +25% nulls
    report = compare(reference, current)
    plays = next(feature for feature in report.features if feature.name == "plays_7d")
    assert plays.reference_null_rate == 0.0
    assert plays.current_null_rate == pytest.approx(0.25)
    assert plays.null_rate_change == pytest.approx(0.25)
    assert plays.drifted and plays.worst_bucket == "<null>"


def test_missing_features_breach_and_extra_features_are_listed(reference, reference_frame):
    current = reference_frame.drop(columns=["market"]).assign(new_feature=1.0)
    report = compare(reference, current)
    assert report.missing_features == ("market",)
    assert report.drifted_features == ("market",) and report.breach
    assert report.extra_features == ("new_feature",)  # the skipped embedding is not "extra"


def test_thresholds_are_per_feature_and_checked(reference):
    current = listener_features(20_000, seed=7)
    current["minutes_28d"] = current["minutes_28d"] * 60
    assert not compare(reference, current, thresholds={"minutes_28d": 1.0}).breach
    assert compare(reference, current, default_threshold=0.0).breach  # sampling noise > 0
    with pytest.raises(ValueError, match="not in the reference profile"):
        compare(reference, current, thresholds={"minutes": 0.2})
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        compare(reference, current, default_threshold=-0.1)


def test_an_empty_window_breaches_with_json_ready_report(reference, reference_frame):
    report = compare(reference, reference_frame.iloc[:0])
    assert report.breach and report.current_rows == 0
    assert all(feature.distance == 1.0 for feature in report.features)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["features"][0]["current_null_rate"] is None


def test_values_of_the_wrong_type_are_a_clear_error(reference, reference_frame):
    current = reference_frame.assign(plays_7d="many")
    with pytest.raises(ValueError, match="'plays_7d' is numeric in the reference"):
        compare(reference, current)


# --- profiles as files and profile-to-profile comparison -------------------------------------


# --- sampling noise ---------------------------------------------------------------------------


def test_the_noise_floor_bounds_chance_differences_at_its_alpha():
    """Two samples of one 12-bucket distribution exceed the floor in about 5% of pairs, at
    every sample size, while the floor shrinks as 1/sqrt(requests); unknown counts: 0."""
    rng = np.random.default_rng(0)
    shares = rng.dirichlet(np.ones(12))
    for requests in (30, 300, 3000):
        pairs = [rng.multinomial(requests, shares, size=2) for _ in range(1000)]
        exceeded = np.mean(
            [chebyshev(a, b) > noise_floor(a, b, requests, requests) for a, b in pairs]
        )
        assert exceeded < 0.08, (requests, exceeded)
    floors = [noise_floor(shares, shares, n, n) for n in (100, 400)]
    assert floors[1] == pytest.approx(floors[0] / 2)
    assert noise_floor(shares, shares, None, 400) == noise_floor(shares, shares, 400, 0) == 0.0


def test_a_few_requests_of_unshifted_traffic_do_not_alarm_but_a_shift_does(reference):
    """Forty requests of the reference distribution differ from it by more than the 0.1
    threshold by chance; the noise floor keeps that quiet, and a real shift of the same
    forty requests still drifts."""
    known = Profile(reference.features, reference.rows, reference.skipped, requests=reference.rows)
    few = listener_features(40, seed=11)
    unshifted = compare(known, few, current_requests=40)
    assert max(distances(unshifted).values()) > 0.1
    assert not unshifted.breach
    assert compare(reference, few).breach  # without request counts, chance alarms
    few["market"] = "BR"
    shifted = compare(known, few, current_requests=40)
    assert shifted.drifted_features == ("market",)


def test_profile_json_round_trip_gives_identical_histograms(reference, tmp_path: Path):
    path = tmp_path / "profiles" / "reference.json"
    save_profile(reference, path)
    loaded = load_profile(path)
    assert loaded.to_dict() == reference.to_dict()
    assert loaded.skipped == reference.skipped
    for name, feature in reference.features.items():
        assert loaded.features[name].same_buckets(feature)
        np.testing.assert_array_equal(loaded.features[name].counts, feature.counts)
    assert [p.name for p in path.parent.iterdir()] == ["reference.json"]  # no temp left


def test_two_profiles_compare_like_profile_and_frame(reference):
    window = listener_features(8_000, seed=8)
    window["minutes_28d"] = window["minutes_28d"] * 2
    from_frame = compare(reference, window)
    from_profile = compare(reference, profile_on(reference, window))
    assert from_profile.to_dict() == {**from_frame.to_dict(), "extra_features": []}
    with pytest.raises(ValueError, match="buckets differ.*profile_on"):
        compare(reference, build_profile(window))  # its own quantiles, not the reference's


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda text: text[: len(text) // 2], "Expecting|Unterminated"),
        (lambda text: text.replace('"homerec-drift-profile"', '"other"'), "not a drift profile"),
        (lambda text: json.dumps({**json.loads(text), "rows": 3}), "counts 20000 rows, not 3"),
        (lambda text: text.replace('"kind": "numeric"', '"kind": "ordinal"', 1), "unknown kind"),
        (lambda text: _edit_feature(text, "edges", lambda e: e[::-1]), "strictly increasing"),
        (lambda text: _edit_feature(text, "counts", lambda c: c[:-1]), "counts for"),
        (lambda text: _edit_feature(text, "counts", lambda c: [-1, *c[1:]]), ">= 0"),
        (lambda text: _edit_feature(text, "counts", lambda c: None), "integers"),
        (lambda text: _edit_feature(text, "nulls", lambda n: n + 1), "disagree"),
    ],
)
def test_a_corrupt_profile_file_is_a_value_error_naming_the_file(
    reference, tmp_path: Path, mutate, problem
):
    path = tmp_path / "reference.json"
    save_profile(reference, path)
    path.write_text(mutate(path.read_text()))
    with pytest.raises(ValueError, match=problem) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def _edit_feature(text: str, key: str, edit) -> str:
    data = json.loads(text)
    feature = data["features"]["minutes_28d"]
    feature[key] = edit(feature[key])
    return json.dumps(data)


# --- webhook (loopback only) -----------------------------------------------------------------


@pytest.fixture
def loopback(monkeypatch) -> Iterator[tuple[str, list, list[int]]]:
    """An HTTP server on 127.0.0.1 (free port) recording requests; answers ``status[0]``."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    received: list[tuple[str, str, bytes]] = []
    status = [204]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received, status
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_webhook_posts_the_report_json(loopback, reference, reference_frame):
    url, received, _ = loopback
    report = compare(reference, reference_frame.drop(columns=["market"]))
    post_webhook(f"{url}/hooks/drift", report)
    [(path, content_type, body)] = received
    assert path == "/hooks/drift" and content_type == "application/json"
    assert json.loads(body) == report.to_dict()


def test_webhook_failures_are_clear_errors_without_the_secret_path(loopback, reference):
    url, _, status = loopback
    report = compare(reference, pd.DataFrame())  # every feature missing
    status[0] = 500
    with pytest.raises(WebhookError, match="HTTP 500") as info:
        post_webhook(f"{url}/secret-token", report, timeout=2.0)
    assert "secret-token" not in str(info.value)
    with pytest.raises(ValueError, match="http"):
        post_webhook("file:///etc/passwd", report)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with pytest.raises(WebhookError, match="unreachable"):
        post_webhook(f"http://127.0.0.1:{port}/hook", report, timeout=2.0)
