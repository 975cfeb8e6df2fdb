"""``homerec models``: list, show, promote and roll back registered shelf rankers.

Thin commands over :class:`training.models.registry.ModelRegistry`. The registry root comes from
the ``Settings`` the main app stores in ``ctx.obj`` (``Settings.model_registry_dir``).
Errors a user can fix (unknown shelf or version, unset alias, nothing to roll back to, a
model failing its integrity check) are registry errors: the command line prints them as
one line and exits 2 (:mod:`training.cli.errors`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from training.core.constants import ALIASES, PRODUCTION
from training.core.errors import UserError
from training.core.settings import Settings

if TYPE_CHECKING:  # the registry (and XGBoost) load when a command runs, not for --help
    from training.models.registry import ModelRegistry, ModelVersion

models_app = typer.Typer(
    help="The model registry: versions, aliases, promotion and rollback.", no_args_is_help=True
)

Reason = Annotated[str, typer.Option(help="Why: recorded in the shelf's events.log.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

_COLUMNS = ("shelf", "version", "sha256", "registered_at", "ndcg", "aliases", "gate")


def _registry(ctx: typer.Context) -> ModelRegistry:
    """The registry of the command's settings (``ctx.obj``; ``Settings()`` when unset)."""
    from training.models.registry import ModelRegistry

    settings = ctx.obj if ctx.obj is not None else Settings()
    return ModelRegistry(settings.model_registry_dir)


def _ndcg(metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    """The model's validation NDCG metric (not the baseline's), if recorded."""
    names = [name for name in metrics if "ndcg" in name and "baseline" not in name]
    preferred = [name for name in names if name.startswith("valid_")] or names
    for name in preferred:
        value = metrics[name]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return name, float(value)
    return None


def _row(record: ModelVersion) -> dict[str, str]:
    ndcg = _ndcg(record.metrics)
    return {
        "shelf": record.shelf,
        "version": str(record.version),
        "sha256": record.sha256[:12],
        "registered_at": record.registered_at[:19].replace("T", " "),
        "ndcg": f"{ndcg[1]:.4f}" if ndcg else "-",
        "aliases": ",".join(record.aliases) or "-",
        "gate": record.gate if record.override is None else f"{record.gate}+override",
    }


def _table(rows: list[dict[str, str]]) -> str:
    widths = {col: max([len(col)] + [len(row[col]) for row in rows]) for col in _COLUMNS}
    lines = ["  ".join(col.ljust(widths[col]) for col in _COLUMNS)]
    lines.append("  ".join("-" * widths[col] for col in _COLUMNS))
    lines += ["  ".join(row[col].ljust(widths[col]) for col in _COLUMNS) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _window(values: Any) -> str:
    """A window of snapshot times as ``first .. last (n snapshots)``."""
    if isinstance(values, list) and values:
        return f"{str(values[0])[:10]} .. {str(values[-1])[:10]} ({len(values)} snapshots)"
    return json.dumps(values, default=str)


def _describe(record: ModelVersion) -> str:
    """The full record of a version as text."""
    lines = [
        f"shelf:           {record.shelf}",
        f"version:         {record.version}",
        f"aliases:         {', '.join(record.aliases) or '-'}",
        f"sha256:          {record.sha256}",
        f"registered_at:   {record.registered_at}",
        f"trained_at:      {record.trained_at or '-'}",
        f"feature_service: {record.feature_service or '-'}",
        f"features ({len(record.feature_names)}):   {', '.join(record.feature_names)}",
        f"data_hash:       {record.data_hash or '-'}",
        f"best_iteration:  {record.best_iteration}",
        f"path:            {record.path}",
        "data window:",
    ]
    lines += [f"  {name}: {_window(values)}" for name, values in record.split.items()] or ["  -"]
    lines.append("metrics:")
    lines += [f"  {name}: {value}" for name, value in record.metrics.items()] or ["  -"]
    lines.append(f"gate:            {record.gate}")
    lines += [
        f"  override: {item.get('timestamp', '-')} {item.get('reason', '')}"
        for item in record.overrides
    ]
    if record.decision is not None:
        for key, value in record.decision.items():
            if key in ("passed", "reasons"):
                continue
            lines.append(f"  {key}: {json.dumps(value, default=str)}")
        reasons = record.decision.get("reasons") or []
        if isinstance(reasons, str):
            reasons = [reasons]
        if reasons:
            lines.append("  reasons:")
            lines += [f"    - {reason}" for reason in reasons]
    return "\n".join(lines)


@models_app.command("list")
def list_models(
    ctx: typer.Context,
    shelf: Annotated[str | None, typer.Option(help="Only this shelf.")] = None,
    as_json: AsJson = False,
) -> None:
    """Registered versions of every shelf (or one): checksum, NDCG, aliases, gate."""
    from training.models.registry import RegistryError

    registry = _registry(ctx)
    records: list[dict[str, Any]] = []
    rows: list[dict[str, str]] = []
    shelves = [shelf] if shelf is not None else registry.shelves()
    for name in shelves:
        registry.aliases(name)  # unknown shelf or corrupt aliases.json: exit 2
        for number in registry.version_numbers(name):
            try:
                record = registry.get(name, number)
            except RegistryError as err:
                typer.echo(f"warning: {err}", err=True)
                records.append({"shelf": name, "version": number, "error": str(err)})
                corrupt = {"shelf": name, "version": str(number), "gate": "corrupt"}
                rows.append(dict.fromkeys(_COLUMNS, "-") | corrupt)
                continue
            records.append(record.to_dict())
            rows.append(_row(record))
    if as_json:
        typer.echo(json.dumps(records, indent=2, default=str))
    elif rows:
        typer.echo(_table(rows))
    else:
        typer.echo(f"no models registered in {registry.root}")


@models_app.command("show")
def show(
    ctx: typer.Context,
    shelf: Annotated[str, typer.Argument(help="The shelf.")],
    ref: Annotated[
        str, typer.Argument(metavar="[VERSION|ALIAS]", help=f"A version or {' / '.join(ALIASES)}.")
    ] = PRODUCTION,
    as_json: AsJson = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Also load the model: checksum and feature contract.")
    ] = False,
) -> None:
    """The full record of one version (default: production), with the gate's reasons."""
    registry = _registry(ctx)
    version = registry.resolve(shelf, ref)
    record = registry.verify(shelf, version)[2] if verify else registry.get(shelf, version)
    if as_json:
        typer.echo(json.dumps(record.to_dict() | {"verified": verify}, indent=2, default=str))
        return
    typer.echo(_describe(record))
    if verify:
        typer.echo("integrity:       ok (checksum and feature contract verified)")


@models_app.command("promote")
def promote(
    ctx: typer.Context,
    shelf: Annotated[str, typer.Argument(help="The shelf.")],
    version: Annotated[
        int | None, typer.Argument(min=1, help="Version to promote (default: the candidate).")
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(help="Why: recorded in the shelf's events.log (required with --force)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Promote a version the gate did not pass; recorded as an override, served "
            "as blessed=false.",
        ),
    ] = False,
) -> None:
    """Make a blessed version (default: the candidate) production, after verifying it."""
    registry = _registry(ctx)
    if force and not (reason or "").strip():
        raise UserError("--force needs --reason TEXT (recorded as the override)")
    before = registry.aliases(shelf)[PRODUCTION]
    promoted = registry.promote(
        shelf, version, reason=reason or "manual promote (homerec models promote)", force=force
    )
    record = registry.get(shelf, promoted)
    forced = "" if record.blessed else f" (override: gate {record.gate}, not blessed)"
    typer.echo(f"{shelf}: production {before if before is not None else '-'} -> {promoted}{forced}")


@models_app.command("rollback")
def rollback(
    ctx: typer.Context,
    shelf: Annotated[str, typer.Argument(help="The shelf.")],
    reason: Reason = "manual rollback (homerec models rollback)",
) -> None:
    """Restore the previous production version of a shelf."""
    registry = _registry(ctx)
    before = registry.aliases(shelf)[PRODUCTION]
    restored = registry.rollback(shelf, reason=reason)
    typer.echo(f"{shelf}: production {before if before is not None else '-'} -> {restored}")
