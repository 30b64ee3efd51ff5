"""Settings shared by the API and the workers, from ``CAMDRIFT_*`` environment variables.

Lists (``api_tokens``, ``data_roots``) are comma-separated strings in the environment, so a
compose file can set them without JSON quoting.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GIB = 1024**3


class Settings(BaseSettings):
    """Everything a deployment changes; tests build ``Settings(...)`` directly.

    Every ``CAMDRIFT_*`` variable the API, the workers and the sweeper read is a field here
    (environment name = ``CAMDRIFT_`` + the field name in capitals); nothing else reads
    ``os.environ``. An empty variable counts as unset.
    """

    model_config = SettingsConfigDict(env_prefix="CAMDRIFT_", extra="ignore", env_ignore_empty=True)

    # -- where things are
    database_url: str = Field(
        default="sqlite:///./var/camdrift.db",
        description="SQLAlchemy URL of the database (SQLite file or Postgres)",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (Redis) URL; unset: the embedded runner, a thread of the API",
    )
    storage: str = Field(
        default="./var/storage",
        description="root folder of the artifact store (checkpoints, datasets, maps)",
    )
    # -- the API
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="comma-separated bearer tokens; when set, every route but health needs one",
    )
    data_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated server folders that datasets may be registered from",
    )
    max_upload_bytes: int = Field(default=2 * GIB, ge=1, description="largest upload body")
    max_zip_entries: int = Field(
        default=100_000, ge=1, description="most entries an uploaded dataset zip may have"
    )
    max_unzipped_bytes: int = Field(
        default=8 * GIB, ge=1, description="most bytes an uploaded dataset zip may extract to"
    )
    max_image_pixels: int = Field(
        default=50_000_000, ge=1, description="largest image (pixels) a dataset may hold"
    )
    max_zip_ratio: float = Field(
        default=100.0,
        ge=1,
        description="most bytes a dataset zip may extract to per byte of the zip (zip bombs)",
    )
    min_free_disk_bytes: int = Field(
        default=GIB,
        ge=0,
        description="free space the store keeps: an extraction that would go below it is refused",
    )
    tmp_max_age_s: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "staged uploads in store/tmp whose API process is gone are removed at start-up and "
            "every few minutes; untagged ones once older than this"
        ),
    )
    # -- jobs
    shard_size: int = Field(default=64, ge=1, description="samples per shard (one Celery task)")
    shard_time_limit_s: int = Field(
        default=1800, ge=1, description="seconds a shard may run before the job fails"
    )
    max_shard_attempts: int = Field(
        default=5,
        description="starts allowed per shard (redeliveries, sweeps) before the job fails; >= 1",
    )
    # -- workers
    device: str = Field(default="auto", description="torch device of a worker: auto, cpu, cuda")
    batch_size: int = Field(default=16, ge=1, description="samples per batch on a worker")
    model_cache: int = Field(
        default=16,
        ge=0,
        description="checkpoints a worker keeps loaded between shards (LRU)",
    )
    log_level: str = Field(default="info", description="log level of a worker")
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="port a Celery worker serves its Prometheus counters on; unset: none",
    )
    visibility_timeout_s: int | None = Field(
        default=None,
        description=(
            "seconds after which Redis hands an unacknowledged shard to another worker; "
            "default 2 x shard_time_limit_s + 60"
        ),
    )
    # -- the sweeper (in every worker and in the embedded runner)
    sweep_interval_s: float = Field(
        default=15.0, description="seconds between sweeps for stuck jobs; 0 = off"
    )
    sweep_queued_after_s: float = Field(
        default=300.0, description="a job still queued after this long gets its plan re-sent"
    )
    sweep_stale_after_s: float | None = Field(
        default=None,
        description=(
            "a running job without progress for this long gets its shards re-sent; "
            "default the visibility timeout"
        ),
    )
    shard_heartbeat_s: float = Field(
        default=5.0,
        ge=0,
        description="seconds between a running shard's heartbeats; 0 = only between batches",
    )
    sweep_lost_after_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "a pending shard whose heartbeat is this old (its worker is gone), or a job none "
            "of whose shards runs while no worker runs any, gets its shards re-sent"
        ),
    )

    @field_validator("api_tokens", "data_roots", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("broker_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("max_shard_attempts", "visibility_timeout_s", mode="after")
    @classmethod
    def _at_least_one(cls, value: int | None) -> int | None:
        return None if value is None else max(1, value)

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        """The defaults that follow other fields, computed once, here (``model_copy`` does not
        run it again: build a new ``Settings`` to change ``shard_time_limit_s``)."""
        if self.visibility_timeout_s is None:
            self.visibility_timeout_s = 2 * self.shard_time_limit_s + 60
        if self.sweep_stale_after_s is None:
            self.sweep_stale_after_s = float(self.visibility_timeout_s)
        return self

    @property
    def visibility_timeout(self) -> int:
        """The broker's visibility timeout in seconds (derived by ``_derived_defaults``)."""
        assert self.visibility_timeout_s is not None
        return self.visibility_timeout_s

    @property
    def sweep_stale_after(self) -> float:
        """Seconds without progress after which a running job counts as stalled."""
        assert self.sweep_stale_after_s is not None
        return self.sweep_stale_after_s


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
