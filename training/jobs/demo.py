"""``homerec demo``: the main job end to end on a synthetic world, step by step, timed.

world -> features -> Feast apply/materialize -> online sample -> train -> evaluate ->
gate -> sample traffic (features logged) -> drift. ``echo`` receives the lines a user
reads; :class:`~training.features.pipeline.StepTimer` the time (and memory) of each step.
"""

from collections.abc import Callable

import pandas as pd

from evaluation.drift_job import DEFAULT_WINDOW, load_drift_config, run_drift, summary_lines
from evaluation.drift_job import write_latest as write_drift_report
from evaluation.gate import describe, gate_candidates
from evaluation.report import evaluate_and_save, format_table
from serving.sample_traffic import serve_sample
from training.core.settings import Settings
from training.core.shelves import load_shelves
from training.features.pipeline import StepTimer, describe_sample, online_sample, prepare_features
from training.jobs.train import train_all
from training.training_sets import check_windows_fit
from training.world.behaviour import WorldConfig
from training.world.generator import generate_world

NEXT_STEPS = """
next (everything is in {data_dir}):
  homerec serve                   the Home ranker on http://127.0.0.1:8000
  curl http://127.0.0.1:8000/v1/home/L0000001   a listener's Home page (JSON)
  open http://127.0.0.1:8000/dashboard          the manual-evaluation dashboard
  homerec evaluate                NDCG@10 of each shelf's candidate vs its heuristic
  homerec models list             registered versions, aliases and gate decisions
  homerec drift                   served vs training features (Chebyshev distance)"""


def run_demo(
    settings: Settings,
    config: WorldConfig,
    traffic: int,
    echo: Callable[[str], None],
    timer: StepTimer | None = None,
) -> StepTimer:
    """Every step of the main job in order; a world too short for the shelves' windows is
    refused (WindowTooShortError) before anything is written. Returns the step timer."""
    timer = timer or StepTimer()
    check_windows_fit(settings, config.start, config.days)
    timer.run("world generate", generate_world, config, settings.world_dir)
    prepare_features(settings, timer)
    sample = timer.run("online sample", online_sample, settings)
    echo("online features (get_online_features) of the most active listener:")
    echo("  " + describe_sample(sample))
    for trained in timer.run("train", train_all, settings):
        seconds = {name: round(value, 1) for name, value in trained.seconds.items()}
        echo(f"trained {trained.shelf} in {seconds} -> {trained.version_dir}")
    report = timer.run("evaluate", evaluate_and_save, settings)
    echo("NDCG@10 on the held-out test window:")
    echo(format_table(report))
    echo("evaluation gate (candidates that pass become production):")
    for outcome in timer.run("gate", gate_candidates, settings):
        echo(describe(outcome))
    if traffic:
        _traffic_and_drift(settings, timer, traffic, echo)
    steps = ", ".join(f"{name} {seconds:.0f}" for name, seconds in timer.seconds.items())
    echo(f"step times (s): {steps}; total {sum(timer.seconds.values()):.0f}")
    echo(NEXT_STEPS.format(data_dir=settings.data_dir))
    return timer


def _traffic_and_drift(
    settings: Settings, timer: StepTimer, pages: int, echo: Callable[[str], None]
) -> None:
    """Serve ``pages`` sampled Home pages in process (features logged), then compare them
    with each production model's training profile, as ``homerec drift`` does."""
    served = timer.run("sample traffic", serve_sample, settings, pages)
    degraded = dict(served.degraded_shelves) or "none"
    echo(f"served {served.pages} Home pages in process; degraded shelves: {degraded}")
    until = pd.Timestamp.now(tz="UTC")  # the log is stamped with wall-clock time
    shelves = [shelf.name for shelf in load_shelves(settings.shelves_file)]
    run = timer.run(
        "drift", run_drift, settings, shelves, until - DEFAULT_WINDOW, until, load_drift_config()
    )
    echo(f"drift of served vs training features (report in {write_drift_report(settings, run)}):")
    echo("\n".join(summary_lines(run)))
