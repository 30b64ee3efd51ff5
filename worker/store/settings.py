"""Settings shared by the API and the workers, from ``CAMDRIFT_*`` environment variables.

Lists (``api_tokens``, ``data_roots``) are comma-separated strings in the environment, so a
compose file can set them without JSON quoting.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GIB = 1024**3


class Settings(BaseSettings):
    """Everything a deployment changes; tests build ``Settings(...)`` directly."""

    model_config = SettingsConfigDict(env_prefix="CAMDRIFT_", extra="ignore")

    database_url: str = "sqlite:///./var/camdrift.db"
    broker_url: str | None = None  # None: the embedded runner (a thread in the API process)
    storage: str = "./var/storage"
    api_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    data_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_upload_bytes: int = Field(default=2 * GIB, ge=1)
    max_zip_entries: int = Field(default=100_000, ge=1)
    max_unzipped_bytes: int = Field(default=8 * GIB, ge=1)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    shard_size: int = Field(default=64, ge=1)
    shard_time_limit_s: int = Field(default=1800, ge=1)

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
