"""Shelf rankers: learning a known signal, the feature contract, persistence and integrity.

Every dataset is synthetic and made here: groups of 20 candidates whose graded relevance
(0..4) depends non-linearly on ``f1`` and ``f2`` and on a categorical ``genre``; ``noise``
carries no signal. Rankers train with ``n_jobs=1``: results do not depend on the thread
count, and one thread keeps the suite fast on a busy machine.
"""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.metrics import groups_with_positives, ndcg_at_k
from training.models.rankers import (
    CONTRACT_FILE,
    MODEL_FILE,
    HeuristicRanker,
    ModelIntegrityError,
    ShelfRanker,
    load_ranker,
    save_ranker,
)

FEATURES = ["f1", "f2", "genre", "noise"]
GENRES = ["jazz", "news", "pop", "rock", "talk"]
GENRE_EFFECT = {"jazz": -0.6, "news": 0.0, "pop": 0.9, "rock": 0.3, "talk": -0.3}
GROUP_SIZE = 20

Split = tuple[pd.DataFrame, np.ndarray, np.ndarray]


def true_utility(X: pd.DataFrame) -> np.ndarray:
    """The noiseless signal: linear in f1, a bump in f2, and a per-genre offset."""
    bump = np.exp(-(((X["f2"].to_numpy() - 0.5) / 0.15) ** 2))
    return 0.8 * X["f1"].to_numpy() + 1.5 * bump + X["genre"].map(GENRE_EFFECT).to_numpy()


def make_split(n_groups: int, seed: int, first_group: int = 0) -> Split:
    """``n_groups`` groups of 20 contiguous rows; about a third of the rows are relevant."""
    rng = np.random.default_rng(seed)
    n = n_groups * GROUP_SIZE
    X = pd.DataFrame(
        {
            "f1": rng.random(n),
            "f2": rng.random(n),
            "genre": rng.choice(GENRES, n),
            "noise": rng.normal(size=n),
        }
    )
    latent = true_utility(X) + rng.normal(0.0, 0.3, n)
    relevance = np.digitize(latent, [1.2, 1.7, 2.1, 2.5])
    group = np.repeat(np.arange(first_group, first_group + n_groups), GROUP_SIZE)
    return X, relevance, group


def mean_ndcg(split: Split, score: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over groups with a positive, as evaluation reports compute it."""
    _, relevance, group = split
    per_group = ndcg_at_k(group, relevance, score, k)
    return float(per_group[groups_with_positives(group, relevance)].mean())


def interleave(split: Split) -> Split:
    """Rows reordered so groups are interleaved, each group's rows keeping their order."""
    X, relevance, group = split
    position = np.arange(len(group)) % GROUP_SIZE
    order = np.lexsort((group, position))
    return X.iloc[order].reset_index(drop=True), relevance[order], group[order]


def small_ranker(**overrides) -> ShelfRanker:
    params = {"n_estimators": 30, "n_jobs": 1, "seed": 0, "log_every": 0}
    return ShelfRanker(FEATURES, **(params | overrides))


@pytest.fixture(scope="module")
def problem() -> dict[str, Split]:
    """~1000 train, 300 valid (later window), 300 test groups of the same world."""
    return {
        "train": make_split(1000, seed=1),
        "valid": make_split(300, seed=2, first_group=10_000),
        "test": make_split(300, seed=3, first_group=20_000),
    }


@pytest.fixture(scope="module")
def fitted(problem: dict[str, Split]) -> ShelfRanker:
    return ShelfRanker(FEATURES, n_jobs=1, seed=0).fit(*problem["train"], eval_set=problem["valid"])


@pytest.fixture
def saved(fitted: ShelfRanker, tmp_path: Path) -> Path:
    directory = tmp_path / "shows" / "v1"
    save_ranker(fitted, directory, {"shelf": "shows", "trained_on": "2024-01-01"})
    return directory


# --------------------------------------------------------------------------- learning


def test_ranker_beats_linear_heuristic_and_nears_oracle(problem, fitted):
    """Guards that the model learns the non-linear and categorical signal: measured gap
    over the f1 heuristic is ~0.46 (seeds 0-2), model within ~0.005 of the oracle."""
    test = problem["test"]
    heuristic = HeuristicRanker({"f1": 1.0}, name="popularity").fit(*problem["train"])
    model_ndcg = mean_ndcg(test, fitted.predict(test[0]))
    heuristic_ndcg = mean_ndcg(test, heuristic.predict(test[0]))
    oracle_ndcg = mean_ndcg(test, true_utility(test[0]))
    assert model_ndcg - heuristic_ndcg > 0.3
    assert model_ndcg > oracle_ndcg - 0.03
    assert fitted.booster_.get_score(importance_type="gain").get("genre", 0.0) > 0.0


def test_early_stopping_predicts_with_best_iteration(fitted, problem):
    """Guards that early stopping on the eval set happened and predict uses the best round."""
    scores = fitted.evals_result_["valid"]["ndcg@10"]
    rounds = fitted.booster_.num_boosted_rounds()
    assert len(scores) == rounds < fitted.n_estimators
    assert fitted.best_iteration_ == rounds - 1 - fitted.early_stopping_rounds
    assert fitted.best_score_ == max(scores) == scores[fitted.best_iteration_]
    X = problem["test"][0]
    expected = fitted.booster_.inplace_predict(
        X.assign(genre=pd.Categorical(X["genre"], categories=fitted.categories_["genre"]))[
            FEATURES
        ],
        iteration_range=(0, fitted.best_iteration_ + 1),
    )
    np.testing.assert_array_equal(fitted.predict(X), expected.astype(np.float64))


def test_same_seed_gives_identical_predictions(problem):
    """Guards determinism: subsampling is seeded, so a refit reproduces the model bit for bit."""
    train, test_X = problem["train"], problem["test"][0]
    first = small_ranker(seed=7).fit(*train, eval_set=problem["valid"]).predict(test_X)
    second = small_ranker(seed=7).fit(*train, eval_set=problem["valid"]).predict(test_X)
    other_seed = small_ranker(seed=8).fit(*train, eval_set=problem["valid"]).predict(test_X)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other_seed)


def test_rows_out_of_group_order_train_the_same_model(problem):
    """Guards the internal stable sort by group: interleaved groups give the same model."""
    contiguous = small_ranker().fit(*problem["train"], eval_set=problem["valid"])
    shuffled = small_ranker().fit(
        *interleave(problem["train"]), eval_set=interleave(problem["valid"])
    )
    X_test, _, _ = problem["test"]
    np.testing.assert_array_equal(contiguous.predict(X_test), shuffled.predict(X_test))
    # Scores are per row: permuting the rows permutes the scores.
    order = np.random.default_rng(0).permutation(len(X_test))
    np.testing.assert_array_equal(
        contiguous.predict(X_test.iloc[order]), contiguous.predict(X_test)[order]
    )


# --------------------------------------------------------------------------- feature contract


def test_missing_feature_column_raises_naming_it(problem, fitted):
    X, relevance, group = problem["train"]
    with pytest.raises(ValueError, match="'f2'"):
        small_ranker().fit(X.drop(columns="f2"), relevance, group)
    with pytest.raises(ValueError, match="'genre'"):
        fitted.predict(problem["test"][0].drop(columns="genre"))


def test_extra_and_reordered_columns_are_ignored(problem, fitted):
    X = problem["test"][0]
    messy = X[list(reversed(FEATURES))].assign(unused=1.0)
    np.testing.assert_array_equal(fitted.predict(messy), fitted.predict(X))


def test_categories_are_sorted_training_values(fitted):
    assert fitted.categories_ == {"genre": sorted(GENRES)}


def test_unseen_category_is_treated_as_missing(problem, fitted):
    X = problem["test"][0].head(40).copy()
    unseen = X.assign(genre="polka")
    missing = X.assign(genre=None)
    scores = fitted.predict(unseen)
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, fitted.predict(missing))


def test_numeric_missing_values_are_accepted(problem, fitted):
    X = problem["test"][0].head(40).copy()
    X.loc[::3, "f2"] = np.nan
    assert np.isfinite(fitted.predict(X)).all()


# --------------------------------------------------------------------------- heuristic


def test_heuristic_is_a_linear_score_with_nan_as_zero():
    X = pd.DataFrame(
        {
            "plays_28d": [3.0, np.nan, 10.0, 0.5],
            "days_since": [1.0, 2.0, np.nan, np.nan],
            "ignored": ["a", "b", "c", "d"],
        }
    )
    heuristic = HeuristicRanker({"plays_28d": 2.0, "days_since": -0.5})
    assert heuristic.fit(X) is heuristic
    expected = np.array([2.0 * 3.0 - 0.5 * 1.0, -0.5 * 2.0, 2.0 * 10.0, 2.0 * 0.5])
    np.testing.assert_array_equal(heuristic.predict(X), expected)
    with pytest.raises(ValueError, match="'days_since'"):
        heuristic.predict(X.drop(columns="days_since"))


# --------------------------------------------------------------------------- persistence


def test_save_load_gives_identical_predictions(problem, fitted, saved):
    loaded, metadata = load_ranker(saved)
    X = problem["test"][0]
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    assert metadata == {"shelf": "shows", "trained_on": "2024-01-01"}
    assert loaded.get_params() == fitted.get_params()
    assert loaded.best_iteration_ == fitted.best_iteration_
    assert loaded.categories_ == fitted.categories_


def test_saved_contract_holds_the_feature_contract(fitted, saved):
    assert sorted(path.name for path in saved.iterdir()) == [MODEL_FILE, CONTRACT_FILE]
    contract = json.loads((saved / CONTRACT_FILE).read_text())
    digest = hashlib.sha256((saved / MODEL_FILE).read_bytes()).hexdigest()
    assert contract["format"] == 1
    assert contract["model_file"] == MODEL_FILE
    assert contract["sha256"] == digest
    assert contract["feature_names"] == FEATURES
    assert contract["categories"] == {"genre": sorted(GENRES)}
    assert contract["best_iteration"] == fitted.best_iteration_
    assert contract["params"]["n_estimators"] == 400
    assert "feature_names" not in contract["params"]


def test_save_returns_checksum_and_overwrites(fitted, saved):
    digest = save_ranker(fitted, saved, {"shelf": "shows", "attempt": 2})
    assert digest == hashlib.sha256((saved / MODEL_FILE).read_bytes()).hexdigest()
    assert sorted(path.name for path in saved.iterdir()) == [MODEL_FILE, CONTRACT_FILE]
    assert load_ranker(saved)[1] == {"shelf": "shows", "attempt": 2}


def test_flipped_byte_in_model_is_a_checksum_error(saved):
    model = saved / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"model\.ubj.*sha256"):
        load_ranker(saved)


def _edit_contract(directory: Path, edit) -> None:
    path = directory / CONTRACT_FILE
    contract = json.loads(path.read_text())
    edit(contract)
    path.write_text(json.dumps(contract))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["feature_names"].reverse(), "feature_names"),
        (lambda c: c.update(feature_names=["f1", "f2", "genre"]), "feature_names"),
        (lambda c: c.update(categories={}), "categorical features"),
        (lambda c: c["categories"]["genre"].reverse(), "categories"),
        (lambda c: c.update(best_iteration=10_000), "best_iteration"),
        (lambda c: c.update(format=2), "format"),
        (lambda c: c.pop("sha256"), "sha256"),
        (lambda c: c.update(model_file="../model.ubj"), "model_file"),
        (lambda c: c["params"].update(not_a_param=1), "params"),
    ],
)
def test_contract_disagreeing_with_model_is_rejected(saved, edit, message):
    _edit_contract(saved, edit)
    with pytest.raises(ModelIntegrityError, match=rf"ranker\.json.*{message}"):
        load_ranker(saved)


@pytest.mark.parametrize("name", [MODEL_FILE, CONTRACT_FILE])
def test_missing_file_is_named(saved, name):
    (saved / name).unlink()
    with pytest.raises(ModelIntegrityError, match=re.escape(f"{name}: missing")):
        load_ranker(saved)


def test_metadata_must_be_json(fitted, tmp_path):
    with pytest.raises(ValueError, match="metadata"):
        save_ranker(fitted, tmp_path / "bad", {"when": object()})
    assert not (tmp_path / "bad").exists()


def test_fit_without_eval_set_uses_every_round_and_logs_progress(problem, caplog):
    """Guards the no-validation path and the INFO progress log (rounds, best iteration)."""
    caplog.set_level("DEBUG", logger="training.models.rankers")
    ranker = small_ranker(n_estimators=20, log_every=10).fit(*problem["train"])
    assert ranker.best_iteration_ == 19
    assert ranker.best_score_ is None
    assert ranker.evals_result_ == {}
    assert "round 10/20" in caplog.text
    assert "best iteration 19" in caplog.text


def test_predict_columns_equals_predict(problem, fitted):
    """Serving's path (arrays in, a float32 matrix, inplace_predict) scores every row as
    ``predict`` on the DataFrame does, with missing numbers, missing and unseen
    categories among the rows."""
    X = problem["test"][0].copy()
    X.loc[X.index[::7], "genre"] = None
    X.loc[X.index[1::7], "genre"] = "never-seen-genre"
    for name in fitted.feature_names_:
        if name not in fitted.categories_:
            X.loc[X.index[2::5], name] = np.nan
    columns = {
        name: X[name].to_numpy(dtype=object if name in fitted.categories_ else np.float64)
        for name in fitted.feature_names_
    }
    np.testing.assert_array_equal(fitted.predict_columns(columns, len(X)), fitted.predict(X))
