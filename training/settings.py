"""One settings object for every homerec command, read from ``HOMEREC_*`` variables.

Nothing reads the environment at import: callers build ``Settings()`` once and pass it on.
"""

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where homerec keeps its data and which Feast online store it uses."""

    model_config = SettingsConfigDict(env_prefix="HOMEREC_", extra="ignore")

    data_dir: Path = Path("data")
    """Root of every generated file: world/, features/, feast/ (registry, SQLite store)."""
    feature_repo: Path = Path("feature_repo")
    """The Feast feature repository (declarations and feature_store*.yaml)."""
    online_store: Literal["sqlite", "redis"] = "sqlite"
    """sqlite: embedded, no server. redis: Feast's Redis online store (production)."""
    redis_connection: str = "localhost:6379"
    """Feast Redis connection string (``host:port[,db=N][,password=...]``)."""
    shelves_file: Path | None = None
    """The shelves declaration (default: the built-in training/shelves.yaml)."""

    warmup_days: int = 14
    """Days at the world's start no training snapshot uses (features need history)."""
    train_every_days: int = 1
    """Stride between training snapshots."""
    valid_days: int = 4
    """Daily snapshots of the validation window (early stopping)."""
    test_days: int = 7
    """Daily snapshots of the held-out test window (evaluation)."""
    max_requests_per_snapshot: int = 5000
    """Listeners sampled per snapshot into training sets (all of them when fewer)."""

    @property
    def world_dir(self) -> Path:
        return self.data_dir / "world"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def feast_dir(self) -> Path:
        return self.data_dir / "feast"
