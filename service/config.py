"""Service settings, read from `INSPECTION_*` environment variables at start-up."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Provider(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"
    AUTO = "auto"  # the best one present; falling back to CPU is accepted


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INSPECTION_", extra="ignore")

    model_store: Path = Field(default=PROJECT_ROOT / "model_store", description="Model store root folder.")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated models to serve (NAME or NAME:VERSION); empty means all, each at its latest.",
    )
    provider: Provider = Provider.AUTO
    workers: int = Field(default=2, ge=1, le=64, description="Worker processes; each loads every model.")
    inference_threads: int = Field(default=1, ge=1, le=64, description="onnxruntime intra-op threads per worker.")
    decode_threads: int = Field(default=2, ge=1, le=64, description="Threads per worker decoding images.")
    max_batch_size: int = Field(default=8, ge=1, le=256)
    max_batch_ms: float = Field(
        default=50.0,
        gt=0.0,
        description="Longest a batch may run, by the model's measured time per image: fewer images per batch "
        "for slow models, since a request arriving as a batch starts waits for all of it.",
    )
    batch_window_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description="How long an idle model waits for a batch to fill. 0: what is queued runs at once, and batches "
        "form from the requests that arrive while one runs. On CPU a batch costs the same per image as one image, "
        "so waiting only adds latency; on a GPU a few ms can pay.",
    )
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=64 * 64)
    max_concurrency: int = Field(default=64, ge=1, description="Requests in flight per worker before 503.")
    request_timeout_s: int = Field(default=30, ge=1)
    access_log: bool = Field(
        default=False,
        description="BentoML's log line per request. Off: at hundreds of frames per second it costs ~10% of "
        "the throughput, and the metrics count the same requests.",
    )
    freeze_startup_heap: bool = Field(
        default=True, description="Keep the objects loaded at start-up out of Python's full garbage collections."
    )
    state_dir: Path = Field(default=PROJECT_ROOT / "state", description="Where the embedded thresholds database lives.")
    thresholds_db: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the thresholds database (e.g. postgresql+psycopg://...); "
        "empty means SQLite at <state_dir>/thresholds.db, shared by the workers on this host.",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for threshold changes; without one, changes are refused."
    )
    max_sweep_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1024, description="Largest sample archive for a threshold sweep, zipped or not."
    )
    max_sweep_images: int = Field(default=1000, ge=1, description="Most images in one threshold sweep.")

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [ref.strip() for ref in value.split(",") if ref.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
