"""``homerec drift``: training profile vs served features, per shelf, for a scheduler.

Register on the main app with ``app.command("drift")(drift_command)``; settings come from
the ``Settings`` the main app stores in ``ctx.obj``. Exit status: 0 no drift (every
distance printed), 1 drift (features named on stderr, report in ``<data_dir>/drift/
latest.json``, webhook POST when asked), 2 a user error (bad option or config, no
production model or reference profile, no served rows in the window).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from training.core.errors import ExitCode
from training.core.settings import Settings

if TYPE_CHECKING:  # the drift job (Feast, SciPy, pandas) loads when the command runs
    from evaluation.drift import DriftReport
    from evaluation.drift_job import DriftRun

__all__ = ["drift_command", "format_run"]

logger = logging.getLogger(__name__)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _report_lines(title: str, report: DriftReport) -> list[str]:
    """One line per feature: distance, threshold, null-rate change, worst bucket."""
    lines = [
        f"{title}: {report.current_rows} rows vs {report.reference_rows} reference rows",
        f"  {'feature':<36} {'kind':<11} {'distance':>8} {'threshold':>9} {'noise':>6} "
        f"{'null Δ':>7}  worst bucket",
    ]
    for f in sorted(report.features, key=lambda f: -f.distance):
        mark = "  DRIFT" if f.drifted else ""
        lines.append(
            f"  {f.name:<36} {f.kind:<11} {f.distance:>8.4f} {f.threshold:>9.3f} "
            f"{f.noise_floor:>6.3f} {_rate(f.null_rate_change):>7}  {f.worst_bucket or '-'}{mark}"
        )
    lines += [f"  {name:<36} MISSING from the current rows" for name in report.missing_features]
    return lines


def format_run(run: DriftRun) -> str:
    """The text output: every shelf's distances, drifted features marked."""
    from evaluation.drift_job import skipped_lines

    lines: list[str] = []
    for shelf, result in run.shelves.items():
        window = f"[{result.since.isoformat()}, {result.until.isoformat()})"
        title = f"{shelf} (production version {result.model_version}) served {window}"
        lines += _report_lines(title, result.report)
        for pair, report in result.training.items():
            lines += _report_lines(f"{shelf} training windows {pair}", report)
        lines += skipped_lines(shelf, result)
        lines.append("")
    if run.breach:
        lines.append("drift: BREACH")
    elif run.shelves:
        lines.append("drift: none over threshold")
    if run.errors:
        lines.append(f"not checked: {', '.join(run.errors)} (see errors)")
    return "\n".join(lines)


def _shelves(settings: Settings, shelf: str | None) -> list[str]:
    """The shelves to check: ``shelf``, else every shelf of the shelves file."""
    from evaluation.drift_job import DriftJobError
    from training.core.shelves import load_shelves

    names = [s.name for s in load_shelves(settings.shelves_file)]
    if shelf is not None and shelf not in names:
        raise DriftJobError(f"unknown shelf {shelf!r}; shelves: {names}")
    return [shelf] if shelf is not None else names


def drift_command(
    ctx: typer.Context,
    shelf: Annotated[
        str | None, typer.Option(help="Check one shelf (default: every shelf).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Window start, ISO 8601, inclusive (default: a day before --until)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Window end, ISO 8601, exclusive (default: now).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    webhook: Annotated[
        str | None, typer.Option(help="POST the JSON report to this http(s) URL on drift.")
    ] = None,
    compare_training: Annotated[
        bool,
        typer.Option(
            "--compare-training",
            help="Also compare consecutive windows of the saved training set.",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(help="Thresholds YAML (default: the built-in evaluation/drift.yaml)."),
    ] = None,
) -> None:
    """Compare each shelf's production training profile with its served features.

    Exit 0: no drift; 1: drift (report in DATA_DIR/drift/latest.json); 2: user error.
    """
    import pandas as pd

    from evaluation.drift import WebhookError, post_webhook, webhook_target
    from evaluation.drift_job import (
        DEFAULT_WINDOW,
        check_window,
        load_drift_config,
        run_drift,
        write_latest,
    )
    from training.core.instants import parse_instant

    settings: Settings = ctx.obj if ctx.obj is not None else Settings()
    thresholds = load_drift_config(config)
    end = pd.Timestamp(parse_instant(until, "--until") if until else datetime.now(UTC))
    start = pd.Timestamp(parse_instant(since, "--since")) if since else end - DEFAULT_WINDOW
    check_window(start, end)
    if webhook is not None:
        webhook_target(webhook)
    shelves = _shelves(settings, shelf)
    run = run_drift(settings, shelves, start, end, thresholds, compare_training)
    path = write_latest(settings, run)
    document = run.to_dict()
    typer.echo(json.dumps(document, allow_nan=False) if as_json else format_run(run))
    for name, message in run.errors.items():
        typer.echo(f"error: {name}: {message}", err=True)
    if run.breach:
        breached = [name for name, result in run.shelves.items() if result.breach]
        logger.warning("drift breach on %s; report in %s", ", ".join(breached), path)
        if webhook is not None:
            try:
                post_webhook(webhook, document)
            except WebhookError as err:
                typer.echo(f"error: {err}", err=True)
        raise typer.Exit(ExitCode.REFUSED)
    if run.errors:
        raise typer.Exit(ExitCode.USER_ERROR)
