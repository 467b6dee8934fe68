"""Service settings, read from `INSPECTION_*` environment variables at start-up."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Provider(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"
    AUTO = "auto"  # the best one present; falling back to CPU is accepted


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INSPECTION_", extra="ignore")

    model_store: Path = Field(default=PROJECT_ROOT / "model_store", description="Model store root folder.")
    models: list[str] = Field(
        default_factory=list, description="Models to serve (NAME or NAME:VERSION); empty means all, latest."
    )
    provider: Provider = Provider.AUTO
    workers: int = Field(default=2, ge=1, le=64, description="Worker processes; each loads every model.")
    inference_threads: int = Field(default=1, ge=1, le=64, description="onnxruntime intra-op threads per worker.")
    decode_threads: int = Field(default=2, ge=1, le=64, description="Threads per worker decoding images.")
    max_batch_size: int = Field(default=8, ge=1, le=256)
    batch_window_ms: float = Field(default=3.0, ge=0.0, le=1000.0, description="How long a batch waits to fill.")
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=64 * 64)
    max_concurrency: int = Field(default=64, ge=1, description="Requests in flight per worker before 503.")
    request_timeout_s: int = Field(default=30, ge=1)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
