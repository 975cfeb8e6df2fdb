"""The drift job and ``homerec drift``: reference profiles stored with registry versions,
drift scenarios on a trained world's real features, exit codes, JSON shape and webhook.

Served traffic is synthesized by sampling rows of the production model's own train window
(the distribution it learned) and written where serving's feature log writes; scenarios
then change one thing and check that drift fires on exactly the features changed.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from evaluation.drift import build_profile, load_profile
from evaluation.drift_job import (
    DriftConfig,
    DriftConfigError,
    DriftJobError,
    check_shelf,
    latest_report_path,
    load_drift_config,
    reference_profile,
    save_reference_profile,
    training_set_dir,
)
from tests.conftest import TrainedWorld
from tests.test_drift import loopback  # noqa: F401  (the loopback webhook server fixture)
from training.candidates import audience_rows
from training.cli.drift import drift_command
from training.cli.errors import ReportingGroup
from training.core.settings import Settings
from training.core.shelves import load_shelves, shelf_by_name
from training.features.served_log import LOG_COLUMNS, FeatureLog, read_feature_log
from training.models.rankers import load_ranker
from training.models.registry import PROFILE_FILE, ModelRegistry, RegistryError
from training.training_sets import load_training_set

SHELF = "shows_you_might_like"
DAY = pd.Timestamp("2030-01-02T00:00:00Z")
"""The served window of most tests: [DAY, DAY + 1 day)."""
WINDOW = ["--since", "2030-01-02", "--until", "2030-01-03T00:00:00+00:00"]


@pytest.fixture(scope="module")
def world(trained_world: TrainedWorld, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A data dir whose registry holds every trained shelf as production version 1 with its
    reference profile, and a copy of the trained world's training sets."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("drift") / "data")
    registry = ModelRegistry(settings.model_registry_dir)
    for shelf in trained_world.trained:
        source = training_set_dir(trained_world.settings, shelf)
        shutil.copytree(source, training_set_dir(settings, shelf))
        ranker, metadata = load_ranker(trained_world.trained[shelf].version_dir)
        version = registry.register(shelf, ranker, metadata).version
        registry.promote(shelf, version, reason="drift test: no gate run", force=True)
        train = load_training_set(source).rows["train"]
        save_reference_profile(registry, shelf, version, train, ranker.feature_names_)
    return settings


@pytest.fixture(scope="module")
def train_rows(world: Settings) -> pd.DataFrame:
    return load_training_set(training_set_dir(world, SHELF)).rows["train"]


@pytest.fixture(scope="module")
def feature_names(world: Settings) -> list[str]:
    return ModelRegistry(world.model_registry_dir).get(SHELF, 1).feature_names


def served_sample(
    train_rows: pd.DataFrame, names: list[str], requests: int = 300, seed: int = 0
) -> pd.DataFrame:
    """``requests`` requests drawn (with replacement) from the train window, each with all
    its candidates: traffic from the distribution the model was trained on, as serving
    hands it to the log (one ``request_id`` per request)."""
    groups = train_rows["group"].unique()
    picked = np.random.default_rng(seed).choice(groups, requests)
    by_group = train_rows.set_index("group")[["listener_id", "item_id", *names]]
    return pd.concat(
        [by_group.loc[[group]].assign(request_id=f"r{k}") for k, group in enumerate(picked)],
        ignore_index=True,
    )


def write_log(
    settings: Settings, shelf: str, features: pd.DataFrame, served_at: pd.Timestamp
) -> Path:
    """Write ``features`` as one served-feature log file (serving's layout and columns)."""
    frame = features.assign(shelf=shelf, model="xgboost", model_version="1", served_at=served_at)
    if "request_id" not in frame:
        frame["request_id"] = "r"
    frame = frame[LOG_COLUMNS + [c for c in frame.columns if c not in LOG_COLUMNS]]
    folder = settings.served_features_dir / shelf
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"served-{served_at:%Y%m%dT%H%M%S%f}-{len(list(folder.iterdir())):06d}.parquet"
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture
def settings(world: Settings, tmp_path: Path) -> Settings:
    """``world``'s registry and training sets, with this test's own log and report folders."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("registry", "training_sets"):
        (data_dir / name).symlink_to(world.data_dir / name)
    return Settings(data_dir=data_dir)


def make_cli(settings: Settings):
    """``drift_command`` mounted as ``drift`` on a tiny app that puts ``settings`` in
    ctx.obj and reports errors, as the main app does; returns invoke(*args) -> Result
    (stdout/stderr apart)."""
    app = typer.Typer(cls=ReportingGroup)

    @app.callback()
    def main(ctx: typer.Context) -> None:
        ctx.obj = settings

    app.command("drift")(drift_command)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["drift", *args])


@pytest.fixture
def cli(settings: Settings):
    return make_cli(settings)


def drifted(settings: Settings, config: DriftConfig | None = None) -> set[str]:
    result = check_shelf(settings, SHELF, DAY, DAY + pd.Timedelta(days=1), config or DriftConfig())
    return set(result.report.drifted_features)


# --------------------------------------------------------------------------- reference profiles


def test_reference_profile_is_the_train_window_over_the_model_features(world, train_rows):
    registry = ModelRegistry(world.model_registry_dir)
    record = registry.get(SHELF, 1)
    stored = reference_profile(registry, SHELF)
    assert list(stored.features) == record.feature_names and not stored.skipped
    requests = train_rows["group"].nunique()
    expected = build_profile(train_rows, record.feature_names, requests=requests)
    assert stored.to_dict() == expected.to_dict()
    assert sorted(p.name for p in record.path.iterdir()) == [
        "model.ubj",
        "overrides.log",  # the fixture's forced promote
        "profile.json",
        "ranker.json",
        "version.json",
    ]


def test_profiles_are_written_once_as_json_objects(world, train_rows):
    registry = ModelRegistry(world.model_registry_dir)
    with pytest.raises(RegistryError, match="already recorded .* written once"):
        save_reference_profile(registry, SHELF, 1, train_rows)
    with pytest.raises(RegistryError, match="must be a JSON object"):
        registry.record_profile(SHELF, 1, "[1, 2]")
    with pytest.raises(RegistryError, match="no version 7"):
        registry.record_profile(SHELF, 7, "{}")
    with pytest.raises(DriftJobError, match="differ from the model's feature contract"):
        save_reference_profile(registry, SHELF, 1, train_rows, ["minutes_28d"])


def test_missing_profile_is_rebuilt_only_from_the_versions_own_training_set(
    trained_world, tmp_path, train_rows
):
    registry = ModelRegistry(tmp_path / "registry")
    ranker, metadata = load_ranker(trained_world.trained[SHELF].version_dir)
    version = registry.register(SHELF, ranker, metadata).version
    with pytest.raises(DriftJobError, match="has no reference profile .*save_reference_profile"):
        reference_profile(registry, SHELF, version)
    with pytest.raises(RegistryError, match="no production version"):
        reference_profile(registry, SHELF)
    with pytest.raises(DriftJobError, match="no saved training set"):
        reference_profile(registry, SHELF, version, tmp_path / "nowhere")

    other = registry.register(SHELF, ranker, metadata | {"data_hash": "0" * 64}).version
    source = training_set_dir(trained_world.settings, SHELF)
    with pytest.raises(DriftJobError, match="not the one it was trained on"):
        reference_profile(registry, SHELF, other, source)

    rebuilt = reference_profile(registry, SHELF, version, source)
    reference = load_training_set(source).reference_rows()
    expected = build_profile(reference, ranker.feature_names_, requests=reference.group.nunique())
    assert rebuilt.to_dict() == expected.to_dict()
    assert (registry.get(SHELF, version).path / "profile.json").exists()  # recorded
    assert reference_profile(registry, SHELF, version).to_dict() == rebuilt.to_dict()


# --------------------------------------------------------------------------- scenarios


def test_traffic_like_training_raises_no_alert(settings, train_rows, feature_names):
    write_log(settings, SHELF, served_sample(train_rows, feature_names), DAY)
    assert drifted(settings) == set()


def test_a_new_market_launch_drifts_the_market_features_only(settings, train_rows, feature_names):
    served = served_sample(train_rows, feature_names)
    launched = np.random.default_rng(1).random(len(served)) < 0.4
    # Listeners of a new market, served the existing catalog: never the same market.
    served.loc[launched, "market"] = "NEW"
    served.loc[launched, "same_market"] = 0
    write_log(settings, SHELF, served, DAY)
    assert drifted(settings) == {"market", "same_market"}


def test_a_unit_bug_drifts_that_feature_only(settings, train_rows, feature_names):
    served = served_sample(train_rows, feature_names)
    served["minutes_28d"] = served["minutes_28d"] * 60  # a pipeline now sends seconds
    write_log(settings, SHELF, served, DAY)
    assert drifted(settings) == {"minutes_28d"}
    # A per-feature threshold is honoured (here: tolerate anything).
    assert drifted(settings, DriftConfig(thresholds={"minutes_28d": 1.0})) == set()


def test_only_rows_inside_the_window_count(settings, train_rows, feature_names):
    served = served_sample(train_rows, feature_names)
    write_log(settings, SHELF, served, DAY)
    broken = served.assign(minutes_28d=served["minutes_28d"] * 60)
    write_log(settings, SHELF, broken, DAY - pd.Timedelta(microseconds=1))
    write_log(settings, SHELF, broken, DAY + pd.Timedelta(days=1))
    assert drifted(settings) == set()


def test_a_feature_missing_from_the_log_is_a_breach(settings, train_rows, feature_names):
    served = served_sample(train_rows, feature_names).drop(columns=["genre"])
    write_log(settings, SHELF, served, DAY)
    assert drifted(settings) == {"genre"}


def test_the_real_feature_log_is_read_with_the_default_window(
    cli, settings, train_rows, feature_names
):
    log = FeatureLog(settings.served_features_dir, sample_rate=1.0, flush_seconds=0.05)
    served = served_sample(train_rows, feature_names)
    for start in range(0, len(served), 500):
        log.record(f"r{start}", SHELF, "xgboost", "1", served.iloc[start : start + 500])
    log.close()
    assert len(read_feature_log(settings.served_features_dir, SHELF)) == len(served)
    result = cli("--shelf", SHELF)  # the day before now
    assert result.exit_code == 0, result.output
    assert all(name in result.stdout for name in feature_names)


# --------------------------------------------------------------------------- config


def test_config_file_thresholds_and_errors(tmp_path):
    built_in = load_drift_config()
    assert built_in.default_threshold == 0.1
    path = tmp_path / "drift.yaml"
    path.write_text("default_threshold: 0.2\nthresholds: {minutes_28d: 0.5}\n")
    assert load_drift_config(path).thresholds == {"minutes_28d": 0.5}
    bad = {
        "default_threshold: 1.5\n": "must be in \\[0, 1\\]",
        "thresholds: {minutes_28d: yes}\n": "'minutes_28d' must be a number",
        "threshold: 0.2\n": "unknown keys \\['threshold'\\]",
        "thresholds: [0.1]\n": "thresholds must map feature names",
        "default_threshold: [\n": "not valid YAML",
    }
    for text, message in bad.items():
        path.write_text(text)
        with pytest.raises(DriftConfigError, match=message):
            load_drift_config(path)
    with pytest.raises(DriftConfigError, match="cannot read"):
        load_drift_config(tmp_path / "absent.yaml")


# --------------------------------------------------------------------------- the command


def test_no_drift_exits_0_and_prints_every_distance(cli, settings, train_rows, feature_names):
    write_log(settings, SHELF, served_sample(train_rows, feature_names), DAY)
    result = cli("--shelf", SHELF, *WINDOW)
    assert result.exit_code == 0, result.output
    assert all(name in result.stdout for name in feature_names)
    assert "DRIFT" not in result.stdout
    latest = json.loads(latest_report_path(settings).read_text())
    assert latest["breach"] is False and list(latest["shelves"]) == [SHELF]


def test_a_torn_log_file_is_named_and_the_rest_is_checked(cli, settings, train_rows, feature_names):
    """A served-log file cut short (a killed writer) is skipped and named; the shelf is
    still checked on the other files, so the exit code is the drift verdict (0)."""
    first, second = (served_sample(train_rows, feature_names, seed=seed) for seed in (0, 1))
    write_log(settings, SHELF, first, DAY)
    whole = write_log(settings, SHELF, second, DAY)
    torn = whole.with_name(whole.name.replace(".parquet", "-torn.parquet"))
    torn.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    result = cli("--shelf", SHELF, *WINDOW)
    assert result.exit_code == 0, result.output
    name = f"{SHELF}/{torn.name}"
    assert f"skipped unreadable served-log file {name}" in result.stdout
    latest = json.loads(latest_report_path(settings).read_text())
    assert latest["shelves"][SHELF]["unreadable_files"] == [name]
    assert latest["shelves"][SHELF]["current_rows"] == len(first) + len(second)


def test_drift_exits_1_with_one_json_object(cli, settings, train_rows, feature_names, caplog):
    served = served_sample(train_rows, feature_names)
    served["minutes_28d"] *= 60
    write_log(settings, SHELF, served, DAY)
    result = cli("--shelf", SHELF, *WINDOW, "--json")
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert document["breach"] is True and document["errors"] == {}
    shelf = document["shelves"][SHELF]
    assert shelf["drifted_features"] == ["minutes_28d"] and shelf["breach"] is True
    assert shelf["model_version"] == 1
    assert shelf["window"] == {"since": "2030-01-02T00:00:00+00:00", "until": WINDOW[3]}
    assert [f["name"] for f in shelf["features"]] == feature_names
    minutes = next(f for f in shelf["features"] if f["name"] == "minutes_28d")
    assert minutes["drifted"] and minutes["distance"] > minutes["threshold"] == 0.1
    assert set(minutes) >= {"null_rate_change", "worst_bucket", "reference_null_rate"}
    assert json.loads(latest_report_path(settings).read_text()) == document
    assert any("minutes_28d" in r.getMessage() for r in caplog.records)


def test_compare_training_reports_consecutive_windows(cli, settings, train_rows, feature_names):
    write_log(settings, SHELF, served_sample(train_rows, feature_names), DAY)
    result = cli("--shelf", SHELF, *WINDOW, "--json", "--compare-training")
    document = json.loads(result.stdout)
    training = document["shelves"][SHELF]["training"]
    assert list(training) == ["train->valid", "valid->test"]
    rows = load_training_set(training_set_dir(settings, SHELF)).rows
    assert training["train->valid"]["reference_rows"] == len(rows["train"])
    assert training["valid->test"]["current_rows"] == len(rows["test"])
    breach = any(report["breach"] for report in training.values())
    assert result.exit_code == (1 if breach else 0) and document["breach"] == breach


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shelf", "nope"], "unknown shelf 'nope'"),
        (["--since", "yesterday-ish"], "--since 'yesterday-ish' is not an ISO 8601 date or time"),
        (["--since", "2030-01-03", "--until", "2030-01-02"], "empty window"),
        (["--webhook", "file:///etc/passwd"], "webhook url must be http"),
        (["--config", "absent.yaml"], "cannot read"),
    ],
)
def test_user_errors_exit_2_with_one_line(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.startswith("error: ")


def test_no_rows_in_the_window_and_no_production_model_exit_2(
    cli, settings, train_rows, feature_names, tmp_path
):
    result = cli("--shelf", SHELF, *WINDOW)
    assert result.exit_code == 2 and "no served features logged" in result.stderr
    result = make_cli(Settings(data_dir=tmp_path / "empty"))("--shelf", SHELF, *WINDOW)
    assert result.exit_code == 2 and "has no registered model" in result.stderr


def test_a_breach_is_reported_even_when_another_shelf_cannot_be_checked(
    cli, settings, train_rows, feature_names
):
    served = served_sample(train_rows, feature_names)
    served["minutes_28d"] *= 60
    write_log(settings, SHELF, served, DAY)
    result = cli(*WINDOW, "--json")  # every shelf; only SHELF has served rows
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert list(document["shelves"]) == [SHELF]
    assert set(document["errors"]) == {"shortcuts", "try_something_else"}
    assert "no served features logged" in result.stderr


def test_webhook_gets_the_report_on_breach_only(cli, settings, train_rows, feature_names, loopback):  # noqa: F811
    url, received, status = loopback
    served = served_sample(train_rows, feature_names)
    write_log(settings, SHELF, served, DAY)
    assert cli("--shelf", SHELF, *WINDOW, "--webhook", f"{url}/hook").exit_code == 0
    assert received == []

    write_log(settings, SHELF, served.assign(minutes_28d=served["minutes_28d"] * 60), DAY)
    result = cli("--shelf", SHELF, *WINDOW, "--webhook", f"{url}/hook/secret")
    assert result.exit_code == 1
    [(path, content_type, body)] = received
    assert path == "/hook/secret" and content_type == "application/json"
    posted = json.loads(body)
    assert posted == json.loads(latest_report_path(settings).read_text())
    assert posted["shelves"][SHELF]["drifted_features"] == ["minutes_28d"]

    status[0] = 500  # an undelivered alert is still a breach, and said so
    result = cli("--shelf", SHELF, *WINDOW, "--webhook", f"{url}/hook/secret")
    assert result.exit_code == 1 and "HTTP 500" in result.stderr
    assert "secret" not in result.stderr


def test_training_profiles_the_audience_it_serves(trained_world: TrainedWorld) -> None:
    """try_something_else trains on every listener but is served to new ones only: the
    reference profile recorded at registration covers its audience's train-window requests,
    all of them, not only those with a relevant candidate (the rows a ranker learns from
    are selected by what happened after the snapshot; serving cannot select so)."""
    settings = trained_world.settings
    shelf = shelf_by_name(load_shelves(), "try_something_else")
    registry = ModelRegistry(settings.model_registry_dir)
    record = registry.get(shelf.name, 1)
    training_set = load_training_set(training_set_dir(settings, shelf.name))
    assert training_set.data_hash == record.data_hash
    reference = training_set.reference_rows()
    profile = load_profile(record.path / PROFILE_FILE)
    assert profile.rows == len(reference) == len(audience_rows(shelf, reference))
    ages = profile.features["account_age_days"]
    assert ages.edges[-1] <= shelf.audience.max_account_age_days
    relevant = reference.groupby("group")["label"].transform("max") > 0
    assert not relevant.all(), "the reference keeps requests without a relevant candidate"
    assert set(reference["event_timestamp"]) <= set(training_set.split.train)
