"""Settings for every Atelier process, read from ``ATELIER_*`` environment variables.

Build them in a factory (``Settings()``) and pass them down; nothing reads them at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the system; defaults give the embedded laptop mode."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_", extra="ignore")

    # where things live
    home: Path = Field(default=Path("var"), description="Folder for the embedded database, artifacts and models.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite file in home.")
    broker_url: str | None = Field(default=None, description="Celery broker (redis://...); unset = embedded in-process worker.")
    storage: Literal["local", "s3"] = "local"
    storage_root: Path | None = Field(default=None, description="Local artifact folder; default home/artifacts.")
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: str = "minioadmin"
    s3_bucket: str = "atelier"
    s3_secure: bool = False
    s3_region: str = "us-east-1"

    # models
    models_dir: Path | None = Field(default=None, description="Folder of local model folders; default home/models.")
    models_file: Path | None = Field(default=None, description="models.yaml; default models_dir/models.yaml.")
    default_model: str = "sdxl-tiny"
    gen_max_side: int = Field(default=1024, ge=32, le=4096, description="Longest side generated; renderer scales up to the target.")
    gen_steps: int | None = Field(default=None, ge=1, le=200, description="Override the model preset's step count.")
    model_cache_size: int = Field(default=2, ge=1, description="Warm pipelines kept resident per worker.")

    # orchestration
    stage_max_attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff_s: float = Field(default=2.0, ge=0)
    visibility_timeout_s: int = Field(default=3600, ge=1)
    unacked_restore_interval_s: float = Field(default=60.0, gt=0)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    stall_after_s: float = Field(default=60.0, gt=0, description="A running stage with no heartbeat for this long is re-driven.")
    queued_stall_s: float = Field(default=900.0, gt=0, description="A queued stage no worker has touched for this long is re-sent.")
    start_stall_s: float = Field(default=30.0, gt=0, description="A job still queued this long after submission is started again.")
    reconcile_interval_s: float = Field(default=10.0, gt=0)
    worker_name: str | None = None

    # api
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    upload_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    upload_max_pixels: int = Field(default=40_000_000, ge=1)
    sse_poll_s: float = Field(default=0.25, gt=0)

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: one process runs API, orchestrator and workers."""
        return not self.broker_url

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'atelier.db').resolve()}"

    def resolved_storage_root(self) -> Path:
        return (self.storage_root or self.home / "artifacts").resolve()

    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.home / "models").resolve()

    def resolved_models_file(self) -> Path:
        return (self.models_file or self.resolved_models_dir() / "models.yaml").resolve()
