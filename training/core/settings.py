"""One settings object for every homerec command, read from ``HOMEREC_*`` variables.

Nothing reads the environment at import: callers build ``Settings()`` once and pass it on.
"""

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "HOMEREC_"
"""Every setting is the variable ``HOMEREC_<NAME>`` (``data_dir``: ``HOMEREC_DATA_DIR``)."""
DEFAULT_FEATURE_REPO = Path(__file__).resolve().parents[2] / "feature_repo"
"""homerec's Feast repository: beside its packages, in a checkout and in a wheel alike."""


class Settings(BaseSettings):
    """Where homerec keeps its data and which Feast online store it uses."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    env: Literal["development", "production"] = "development"
    """production: the dashboard (listener data) is off unless ``dashboard_token`` is set."""

    data_dir: Path = Path("data")
    """Root of every generated file: world/, features/, feast/ (registry, SQLite store)."""
    feature_repo: Path = DEFAULT_FEATURE_REPO
    """The Feast feature repository (declarations and feature_store*.yaml); the default is
    homerec's own, found from any working directory."""
    online_store: Literal["sqlite", "redis"] = "sqlite"
    """sqlite: embedded, no server. redis: Feast's Redis online store (production)."""
    redis_connection: str = "localhost:6379"
    """Feast Redis connection string (``host:port[,db=N][,password=...]``)."""
    shelves_file: Path | None = None
    """The shelves declaration (default: the built-in training/core/shelves.yaml)."""

    warmup_days: int = 28
    """Days at the world's start no training snapshot uses: features look back 28 days, so
    an earlier snapshot would see less history than serving does."""
    train_every_days: int | None = Field(default=None, gt=0)
    """Days between training snapshots for every shelf; None: each shelf's own
    ``train_every_days`` (shelves file; default 1)."""
    valid_days: int = 4
    """Daily snapshots of the validation window (early stopping)."""
    test_days: int = 7
    """Daily snapshots of the held-out test window (evaluation)."""
    max_requests_per_snapshot: int = 5000
    """Listeners sampled per snapshot into training sets (all of them when fewer)."""

    registry_dir: Path | None = None
    """Model registry root (default: <data_dir>/registry)."""

    gate_min_ndcg: float = Field(default=0.2, ge=0, le=1)
    """Evaluation gate (a): a new version's NDCG@k on the test window must reach this floor."""
    gate_tolerance: float = Field(default=0.01, ge=0, le=1)
    """Evaluation gate (b): it may trail the production model on the same window by this."""
    gate_min_lift: float = Field(default=0.0, ge=-1, le=1)
    """Evaluation gate (c): it must beat the shelf's heuristic by at least this NDCG@k."""
    gate_overrides: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Per-shelf gate thresholds, e.g. ``{"shortcuts": {"min_ndcg": 0.5}}`` (JSON in
    ``HOMEREC_GATE_OVERRIDES``); keys ``min_ndcg``, ``tolerance``, ``min_lift``."""
    gate_infra_timeout_seconds: float = Field(default=300.0, gt=0)
    """Evaluation gate (d): bound on the fresh process that loads and scores the model."""

    serve_admin_token: SecretStr | None = None
    """Bearer token of ``POST /admin/reload``; unset disables the endpoint."""
    dashboard_token: SecretStr | None = None
    """Bearer token of ``/dashboard`` and its API; unset: open in development, off in
    production (``env``)."""
    serve_feature_timeout_seconds: float = Field(default=0.25, gt=0)
    """Bound on one Redis online read while serving; slower reads degrade the shelf."""
    serve_refresh_seconds: float = Field(default=30.0, ge=0)
    """How often serving checks for a new materialization or production model (0: never)."""
    serve_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request body accepted (413 above)."""
    serve_max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    """Most bytes of request headers accepted, names and values together (431 above)."""
    serve_max_headers: int = Field(default=100, ge=8)
    """Most request headers accepted (431 above)."""
    feature_log_dir: Path | None = None
    """Where served feature vectors are logged (default: <data_dir>/served_features)."""
    feature_log_sample_rate: float = Field(default=0.1, ge=0, le=1)
    """Share of requests whose feature vectors are logged (0 turns logging off)."""
    feature_log_batch_rows: int = Field(default=5000, ge=1)
    """Rows per parquet file of the served-feature log."""
    feature_log_max_rows: int = Field(default=100_000, ge=1)
    """Rows the log holds in memory before it drops new samples (and counts them)."""

    def as_environment(self) -> dict[str, str | None]:
        """The ``HOMEREC_*`` variables from which ``Settings()`` in another process (a
        serving worker) rebuilds these settings; None: the variable must be unset."""
        return {
            f"{ENV_PREFIX}{name.upper()}": _environment_value(getattr(self, name))
            for name in type(self).model_fields
        }

    @property
    def world_dir(self) -> Path:
        return self.data_dir / "world"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def feast_dir(self) -> Path:
        return self.data_dir / "feast"

    @property
    def model_registry_dir(self) -> Path:
        return self.registry_dir or self.data_dir / "registry"

    @property
    def served_features_dir(self) -> Path:
        return self.feature_log_dir or self.data_dir / "served_features"


def _environment_value(value: Any) -> str | None:
    """A setting as pydantic-settings reads it back: secrets in clear, dicts as JSON."""
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)
