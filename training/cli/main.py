"""The ``homerec`` command line: thin commands over typed functions."""

import json
import logging
import os
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer

from training.cli.drift import drift_command
from training.cli.errors import ReportingGroup, failed_steps
from training.cli.models import models_app
from training.cli.output import configure_output, logging_config
from training.core.constants import (
    DEFAULT_DAYS,
    DEFAULT_DEMO_TRAFFIC,
    DEFAULT_LISTENERS,
    DEFAULT_SEED,
)
from training.core.errors import ExitCode
from training.core.settings import Settings

app = typer.Typer(
    cls=ReportingGroup,
    help="homerec: a Home page recommender on Feast features.",
    no_args_is_help=True,
)
world_app = typer.Typer(
    help="Create the listening world (synthetic or imported).", no_args_is_help=True
)
features_app = typer.Typer(help="Feature tables and the Feast feature store.", no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(features_app, name="features")
pipeline_app = typer.Typer(help="The retraining pipeline for Kubeflow.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.command("drift")(drift_command)
app.add_typer(pipeline_app, name="pipeline")

Listeners = Annotated[int, typer.Option(min=10, help="Number of listeners.")]
Days = Annotated[int, typer.Option(min=14, help="Days of listening.")]
Seed = Annotated[int, typer.Option(help="Random seed: same seed, same files.")]


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj


Shelves = Annotated[list[str] | None, typer.Option("--shelf", help="Only this shelf (repeatable).")]
AsOf = Annotated[
    str | None,
    typer.Option(
        help="Cut the world window at this ISO 8601 date or time (UTC unless an offset is "
        "given): events before it."
    ),
]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"homerec {package_version('homerec')}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory (env HOMEREC_DATA_DIR; default ./data).")
    ] = None,
    online_store: Annotated[
        str | None,
        typer.Option(help="sqlite or redis (env HOMEREC_ONLINE_STORE; default sqlite)."),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Debug logging, library messages and error tracebacks."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version."
        ),
    ] = False,
) -> None:
    configure_output(verbose)
    overrides: dict[str, Any] = {"data_dir": data_dir, "online_store": online_store}
    ctx.obj = Settings(**{key: value for key, value in overrides.items() if value is not None})


@world_app.command("generate")
def world_generate(
    ctx: typer.Context,
    listeners: Listeners = DEFAULT_LISTENERS,
    days: Days = DEFAULT_DAYS,
    seed: Seed = DEFAULT_SEED,
) -> None:
    """Generate a synthetic listening world into DATA_DIR/world."""
    from training.world.behaviour import WorldConfig
    from training.world.generator import generate_world

    config = WorldConfig(listeners=listeners, days=days, seed=seed)
    meta = generate_world(config, _settings(ctx).world_dir)
    typer.echo(json.dumps(meta, indent=2, default=str))


@world_app.command("import")
def world_import(
    ctx: typer.Context,
    events: Annotated[Path, typer.Option(help="Listening log (CSV or parquet).")],
    items: Annotated[Path | None, typer.Option(help="Catalog attributes (optional).")] = None,
    listeners: Annotated[Path | None, typer.Option(help="Listener attributes (optional).")] = None,
) -> None:
    """Import a real listening log into DATA_DIR/world (validated before anything is written)."""
    from training.world.importer import import_world

    meta = import_world(events, _settings(ctx).world_dir, items=items, listeners=listeners)
    typer.echo(json.dumps(meta, indent=2, default=str))


@features_app.command("build")
def features_build(ctx: typer.Context) -> None:
    """Compute the daily snapshot tables (Feast offline sources) from the world."""
    from training.features.tables import build_features

    settings = _settings(ctx)
    typer.echo(json.dumps(build_features(settings.world_dir, settings.features_dir), indent=2))


@features_app.command("apply")
def features_apply(ctx: typer.Context) -> None:
    """Register feature_repo/ declarations (feast apply) in DATA_DIR/feast."""
    from training.features.store import apply_definitions

    apply_definitions(_settings(ctx))


@features_app.command("materialize")
def features_materialize(
    ctx: typer.Context,
    full: Annotated[
        bool,
        typer.Option(
            "--full", help="Reload the whole world window (after tables were rebuilt over it)."
        ),
    ] = False,
) -> None:
    """Load the online store up to the end of the world (incremental after the first run)."""
    from training.features.store import materialize

    end = materialize(_settings(ctx), incremental=not full)
    typer.echo(f"materialized up to {end.isoformat()}")


@features_app.command("sample")
def features_sample(
    ctx: typer.Context,
    listener: Annotated[
        str | None, typer.Option(help="Listener id (default: most active).")
    ] = None,
) -> None:
    """Print online features of a listener and of a few of their items."""
    from training.features.pipeline import online_sample

    typer.echo(json.dumps(online_sample(_settings(ctx), listener), indent=2, default=str))


@app.command()
def train(
    ctx: typer.Context,
    shelf: Annotated[list[str] | None, typer.Option(help="Only this shelf (repeatable).")] = None,
) -> None:
    """Build each shelf's training set from Feast, fit its XGBoost ranker and register it
    as the shelf's candidate (`homerec gate` pushes it to production if it passes)."""
    from training.jobs.train import train_all

    trained_shelves = train_all(_settings(ctx), shelf)
    for trained in trained_shelves:
        seconds = {name: round(value, 1) for name, value in trained.seconds.items()}
        typer.echo(
            f"{trained.shelf}: {trained.version_dir} sha256={trained.sha256[:12]} "
            f"candidate v{trained.version} {seconds}"
        )


@app.command()
def evaluate(
    ctx: typer.Context,
    shelf: Annotated[list[str] | None, typer.Option(help="Only this shelf (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Model vs heuristic baseline (and oracle) on the held-out test window."""
    from evaluation.report import evaluate_and_save, format_table

    report = evaluate_and_save(_settings(ctx), shelf)
    typer.echo(json.dumps(report, indent=2) if as_json else format_table(report))


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes (uvicorn workers); each holds its own snapshot and models."
        ),
    ] = 1,
) -> None:
    """Serve the Home ranker API (FastAPI) on the online store and trained models."""
    from serving.app import serve as run_server

    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    run_server(
        _settings(ctx), host=host, port=port, workers=workers, log_config=logging_config(verbose)
    )


@app.command()
def demo(
    ctx: typer.Context,
    listeners: Listeners = DEFAULT_LISTENERS,
    days: Days = DEFAULT_DAYS,
    seed: Seed = DEFAULT_SEED,
    traffic: Annotated[
        int, typer.Option(min=0, help="Home pages served in process at the end (0: none).")
    ] = DEFAULT_DEMO_TRAFFIC,
) -> None:
    """The main job end to end: world, features, Feast, training, evaluation, gate, then
    sample traffic with every request's features logged and a drift check against it."""
    from training.jobs.demo import run_demo
    from training.world.behaviour import WorldConfig

    config = WorldConfig(listeners=listeners, days=days, seed=seed)
    run_demo(_settings(ctx), config, traffic, typer.echo)


@app.command()
def gate(ctx: typer.Context, shelf: Shelves = None) -> None:
    """Evaluation gate: each shelf's candidate vs floor, production and heuristic on its
    test window, plus a fresh-process load-and-score check; push those that pass.
    Exit 0 all passed (or no candidate), 1 a candidate refused."""
    from evaluation.gate import describe, gate_candidates

    with failed_steps("gate"):
        outcomes = gate_candidates(_settings(ctx), shelf)
    for outcome in outcomes:
        typer.echo(describe(outcome))
    if any(outcome.passed is False for outcome in outcomes):
        raise typer.Exit(ExitCode.REFUSED)


@app.command()
def retrain(
    ctx: typer.Context,
    as_of: AsOf = None,
    shelf: Shelves = None,
    force: Annotated[
        bool, typer.Option("--force", help="Run every step again, finished or not.")
    ] = False,
) -> None:
    """World window -> features -> training sets -> train -> evaluate -> gate -> push.

    Resumable: finished steps of the same as-of are skipped. Exit 0: pushed, already
    production or nothing to do; 1: a gate refused a version; 2: bad input; 3: a step
    failed (re-run to resume)."""
    from training.jobs.retrain import parse_as_of
    from training.jobs.retrain import retrain as run_retrain

    settings = _settings(ctx)
    with failed_steps("retrain"):
        result = run_retrain(settings, parse_as_of(as_of), shelf, force)
    ran = [name for name in result.seconds if name not in result.skipped]
    typer.echo(f"run {result.run_id}: {len(ran)} steps ran, {len(result.skipped)} skipped")
    for name, outcome in result.shelves.items():
        reasons = outcome.get("reasons") or []
        detail = f": {'; '.join(reasons)}" if reasons else ""
        typer.echo(f"{name}: v{outcome['version']} {outcome['status']}{detail}")
    raise typer.Exit(result.exit_code)


@app.command()
def sweep(
    ctx: typer.Context,
    grid: Annotated[
        Path | None, typer.Option(help="Sweep file (default: built-in training/jobs/sweep.yaml).")
    ] = None,
    shelf: Shelves = None,
    as_of: AsOf = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Hyperparameter grid per shelf: valid NDCG@k of each point; the best is registered
    as the shelf's candidate (`homerec gate` decides whether it ships)."""
    from training.jobs.retrain import parse_as_of
    from training.jobs.sweep import format_trials
    from training.jobs.sweep import sweep as run_sweep

    with failed_steps("sweep"):
        result = run_sweep(_settings(ctx), grid, shelf, parse_as_of(as_of))
    typer.echo(json.dumps(result, indent=2, default=str) if as_json else format_trials(result))


@pipeline_app.command("compile")
def pipeline_compile(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option(help="Where to write the pipeline YAML.")] = Path(
        "homerec_retrain_pipeline.yaml"
    ),
    shelf: Shelves = None,
    image: Annotated[
        str, typer.Option(help="Container image with homerec[kfp] installed.")
    ] = "homerec:latest",
    sweep_grid: Annotated[
        Path | None,
        typer.Option("--sweep", help="Compile the sweep pipeline over this grid file instead."),
    ] = None,
) -> None:
    """Compile `homerec retrain` (or a sweep) into a Kubeflow Pipelines v2 YAML file."""
    try:
        import kfp  # noqa: F401
    except ImportError as error:
        typer.echo("error: kfp is not installed: pip install -e '.[kfp]'", err=True)
        raise typer.Exit(ExitCode.USER_ERROR) from error
    with failed_steps("pipeline compile"):
        from training.jobs.kfp_pipeline import compile_pipeline
        from training.jobs.retrain import shelf_names
        from training.jobs.sweep import load_grid

        grid = load_grid(sweep_grid) if sweep_grid is not None else None
        names = shelf_names(_settings(ctx), shelf)
        written = compile_pipeline(output, names, image, grid)
    typer.echo(f"wrote {written}")


def run() -> None:
    """Console entry point. Errors are reported by :mod:`training.cli.errors` (a user
    mistake: one line, exit 2). Nothing heavy is imported before a command runs
    (``homerec --help`` stays fast)."""
    # XGBoost's OpenMP threads otherwise spin while waiting; on a busy 2-core machine that
    # makes training many times slower for identical models.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()
