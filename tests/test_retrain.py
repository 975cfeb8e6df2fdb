"""``homerec retrain``: steps in order, resumable after a failure, idempotent on unchanged
data, exit codes a scheduler can act on; the same steps as a Kubeflow pipeline compiled
to YAML and run end to end with ``kfp.local`` (subprocesses, no Docker).

One tiny world (shortcuts shelf only, to stay fast) goes through a history of runs in the
module fixture; the tests then check what each run did.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO_ROOT, SHORT_WINDOWS, project_settings
from training.cli.main import app
from training.core.settings import Settings
from training.jobs import retrain as retrain_module
from training.jobs.retrain import open_run, parse_as_of, step_record
from training.models.registry import PRODUCTION, ModelRegistry
from training.world.behaviour import WorldConfig
from training.world.generator import generate_world

TINY_WORLD = WorldConfig(listeners=200, days=40, seed=5)
SHELF = "shortcuts"
FIRST_AS_OF = "2026-02-07"
SECOND_AS_OF = "2026-02-09"
GATE = {"HOMEREC_GATE_MIN_LIFT": "-0.05"}
"""The tiny world has one training batch: its shortcuts model is near the heuristic
(0.583 vs 0.594 NDCG@8 in run 1). These tests are about running steps, not model quality
(tests/test_gate.py checks the gate on the trained world), so the lift may be negative."""
ENV = {
    "HOMEREC_FEATURE_REPO": str(REPO_ROOT / "feature_repo"),
    **GATE,
    **{f"HOMEREC_{key.upper()}": str(value) for key, value in SHORT_WINDOWS.items()},
}


@dataclass
class Invocation:
    exit_code: int
    output: str
    seconds: float


def homerec(settings: Settings, *args: str) -> Invocation:
    """Run ``homerec --data-dir D ARGS`` in-process with the tiny world's settings."""
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["--data-dir", str(settings.data_dir), *args], env=ENV)
    return Invocation(result.exit_code, result.output, time.perf_counter() - started)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """run 1 (as of FIRST_AS_OF); run 2 (SECOND_AS_OF) failing in its evaluate step, then
    resumed; run 2 again (nothing to do); run 2 with --force."""
    settings = project_settings(tmp_path_factory.mktemp("retrain") / "data", **SHORT_WINDOWS)
    generate_world(TINY_WORLD, settings.world_dir)
    runs: dict[str, Any] = {"settings": settings}
    runs["first"] = homerec(settings, "retrain", "--as-of", FIRST_AS_OF, "--shelf", SHELF)
    runs["after_first"] = ModelRegistry(settings.model_registry_dir).aliases(SHELF)

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation store unavailable")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(retrain_module, "evaluate_on_window", broken)
        runs["failed"] = homerec(settings, "retrain", "--as-of", SECOND_AS_OF, "--shelf", SHELF)
    run = open_run(settings, parse_as_of(SECOND_AS_OF))
    runs["records_after_failure"] = {
        step: step_record(run, step, None if step in ("window", "features") else SHELF)
        for step in ("window", "features", "training_set", "train", "evaluate")
    }
    runs["resumed"] = homerec(settings, "retrain", "--as-of", SECOND_AS_OF, "--shelf", SHELF)
    runs["versions_after_resume"] = ModelRegistry(settings.model_registry_dir).version_numbers(
        SHELF
    )
    runs["again"] = homerec(settings, "retrain", "--as-of", SECOND_AS_OF, "--shelf", SHELF)
    runs["forced"] = homerec(
        settings, "retrain", "--as-of", SECOND_AS_OF, "--shelf", SHELF, "--force"
    )
    return runs


def registry(history) -> ModelRegistry:
    return ModelRegistry(history["settings"].model_registry_dir)


def test_first_run_trains_gates_and_pushes(history):
    """The first run registers version 1, the gate passes it (nothing in production yet)
    and it becomes production; exit 0."""
    first = history["first"]
    assert first.exit_code == 0, first.output
    assert f"{SHELF}: v1 pushed" in first.output
    assert history["after_first"][PRODUCTION] == 1
    decision = registry(history).get(SHELF, 1).decision
    assert decision["passed"] is True and decision["run"] == "as-of-20260207T000000Z"


def test_a_failed_step_exits_3_and_keeps_the_finished_steps(history):
    """A step that raises exits with status 3 ("re-run to resume"); steps finished before
    it keep their records, the failed one has none."""
    failed, records = history["failed"], history["records_after_failure"]
    assert failed.exit_code == 3, failed.output
    assert "re-run to resume" in failed.output
    assert all(records[step] is not None for step in ("window", "features", "training_set"))
    assert records["train"] is not None and records["evaluate"] is None


def test_the_resumed_run_skips_finished_steps_and_registers_a_new_version(history):
    """Re-running resumes at the failed step (earlier ones are skipped, nothing retrained)
    and the later window's data gives version 2, gated against production v1 on the same
    window; pushed (exit 0) or refused with stored reasons (exit 1)."""
    resumed = history["resumed"]
    assert "4 skipped" in resumed.output, resumed.output
    assert history["versions_after_resume"] == [1, 2]
    decision = registry(history).get(SHELF, 2).decision
    assert decision is not None and decision["production_version"] == 1
    assert decision["production"] is not None, "production was not scored on the window"
    expected = 0 if decision["passed"] else 1
    assert resumed.exit_code == expected, resumed.output
    production = registry(history).alias(SHELF, PRODUCTION)
    assert production == (2 if decision["passed"] else 1)


def test_a_finished_run_is_nothing_to_do(history):
    """The same as-of again: every step is skipped, no version is added."""
    again = history["again"]
    assert "0 steps ran" in again.output and "7 skipped" in again.output, again.output
    assert again.exit_code in (0, 1)
    assert again.exit_code == history["resumed"].exit_code


def test_force_reruns_every_step_without_a_duplicate_version(history):
    """--force runs every step again; the data hash is unchanged, so the existing version
    is reused (not retrained, not re-registered) and its decision is kept."""
    forced = history["forced"]
    assert "7 steps ran, 0 skipped" in forced.output, forced.output
    assert registry(history).version_numbers(SHELF) == [1, 2]
    run = open_run(history["settings"], parse_as_of(SECOND_AS_OF))
    assert step_record(run, "train", SHELF)["result"]["registered"] is False
    assert step_record(run, "features")["result"]["rebuilt"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--as-of", "2025-01-01"], "outside the world window"),
        (["--as-of", "not-a-date"], "is not an ISO 8601 date"),
        (["--shelf", "nope"], "unknown shelves"),
        (["--as-of", "2026-01-10"], "too short"),
    ],
)
def test_user_errors_exit_2_before_any_step(history, args, message):
    """Bad input exits 2 with a message naming it, and writes no run."""
    settings = history["settings"]
    runs_before = sorted((settings.data_dir / "runs").iterdir())
    result = homerec(settings, "retrain", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert sorted((settings.data_dir / "runs").iterdir()) == runs_before


def test_retrain_without_a_world_exits_2(tmp_path: Path):
    result = homerec(project_settings(tmp_path / "data"), "retrain")
    assert result.exit_code == 2 and "no world" in result.output


def test_pipeline_compile_writes_the_kfp_yaml(history, tmp_path: Path):
    """`homerec pipeline compile` writes a KFP v2 pipeline: window, features, then the
    five steps per shelf, every task calling the one retrain step component."""
    output = tmp_path / "retrain.yaml"
    result = homerec(history["settings"], "pipeline", "compile", "--output", str(output))
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load(output.read_text())
    assert spec["pipelineInfo"]["name"] == "homerec-retrain"
    tasks = spec["root"]["dag"]["tasks"]
    assert len(tasks) == 2 + 5 * 3
    assert all(t["componentRef"]["name"].startswith("comp-retrain-step") for t in tasks.values())
    executors = spec["deploymentSpec"]["executors"].values()
    assert all("def retrain_step(" in " ".join(e["container"]["command"]) for e in executors)
    display = {task["taskInfo"]["name"] for task in tasks.values()}
    assert {"window", "features", f"train {SHELF}", f"push {SHELF}"} <= display
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {
        "data_dir",
        "as_of",
        "force",
        "settings_json",
    }


def test_sweep_pipeline_compiles_with_a_parallel_for(history, tmp_path: Path):
    output = tmp_path / "sweep.yaml"
    grid = REPO_ROOT / "training" / "jobs" / "sweep.yaml"
    result = homerec(
        history["settings"], "pipeline", "compile", "--output", str(output), "--sweep", str(grid)
    )
    assert result.exit_code == 0, result.output
    text = output.read_text()
    assert "for-loop" in text and "comp-sweep-trial" in text and "comp-sweep-best" in text


def test_sweep_prints_a_table_and_registers_the_best_as_candidate(history, tmp_path: Path):
    """`homerec sweep` fits every grid point on a run's training set (built by run 1, so
    reused), prints params and validation NDCG@k, and registers the best as candidate."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  max_depth: [2, 4]\n  n_estimators: [15]\n")
    settings = history["settings"]
    before = registry(history).version_numbers(SHELF)
    result = homerec(
        settings, "sweep", "--grid", str(grid), "--shelf", SHELF, "--as-of", FIRST_AS_OF
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(f"{SHELF} ")]
    assert len(lines) == 2 and "max_depth=2" in lines[0] and "max_depth=4" in lines[1]
    assert sum(line.rstrip().endswith("*") for line in lines) == 1, "one best point"
    candidate = registry(history).alias(SHELF, "candidate")
    assert candidate == max(before) + 1
    sweep = registry(history).get(SHELF, candidate).metadata["sweep"]
    assert sweep["trials"] == 2 and sweep["params"]["n_estimators"] == 15


def test_a_sweep_file_with_an_unknown_parameter_exits_2(history, tmp_path: Path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  depth: [2]\n")
    result = homerec(history["settings"], "sweep", "--grid", str(grid))
    assert result.exit_code == 2 and "grid.depth is not a parameter" in result.output


def test_kfp_local_runs_the_pipeline_end_to_end(history, tmp_path: Path, monkeypatch):
    """kfp.local (SubprocessRunner, no Docker) runs the compiled steps for the world's end
    on the same data directory: a third version is trained, gated and its push recorded,
    through the same run_step as `homerec retrain`."""
    from kfp import local

    from training.jobs.kfp_pipeline import retrain_pipeline

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    settings = history["settings"]
    before = registry(history).version_numbers(SHELF)
    pipeline = retrain_pipeline([SHELF])
    pipeline(data_dir=str(settings.data_dir), settings_json=json.dumps(SHORT_WINDOWS))
    run = open_run(settings)
    pushed = step_record(run, "push", SHELF)
    assert pushed is not None, "the push task did not record its step"
    assert registry(history).version_numbers(SHELF) == [*before, max(before) + 1]
    assert pushed["result"]["version"] == max(before) + 1
    assert registry(history).get(SHELF, max(before) + 1).decision is not None
    assert step_record(run, "features")["result"]["rebuilt"] is False, "world unchanged"
