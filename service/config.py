"""Service settings, read from `INSPECTION_*` environment variables at start-up.

The process and thread layout (workers, threads, fixed batch shapes) is derived from the host when
left unset: its usable cores, and whether the models will run on a GPU (`host_defaults`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.pipeline.providers import CPU, Provider, choose_provider, probe_host_gpu

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Settings that default to None and are filled in from the host.
_HOST_DERIVED = ("workers", "inference_threads", "decode_threads", "fixed_batch_shapes")


def usable_cpus() -> int:
    """Cores this process may use: its CPU affinity, bounded by a cgroup v2 CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cpus


def host_defaults(cpus: int, gpu: bool) -> dict[str, int | bool]:
    """The process and thread layout for a host with `cpus` cores, on a GPU provider or on CPU.

    CPU: one worker per core, each with one onnxruntime thread (on 2 cores, 2 workers x 1 thread
    served 25% more than 1 x 2) and two decode threads (Pillow releases the GIL while decoding).
    GPU: a batch takes the model well under a millisecond and the CPU work around it (HTTP, decode,
    post-processing) sets the pace, so one worker per two cores with two decode threads each, one
    onnxruntime thread (it only launches kernels), and fixed batch shapes.
    """
    if gpu:
        workers = min(8, cpus // 2)
    else:
        workers = min(16, cpus)
    return {"workers": max(1, workers), "decode_threads": 2, "inference_threads": 1, "fixed_batch_shapes": gpu}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INSPECTION_", extra="ignore")

    model_store: Path = Field(default=PROJECT_ROOT / "model_store", description="Model store root folder.")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated models to serve (NAME or NAME:VERSION); empty means all, each at its latest. "
        "Several versions of a model load together, the first listed active.",
    )
    provider: Provider = Provider.AUTO
    workers: int | None = Field(
        default=None, ge=1, le=64, description="Worker processes; each loads every model. Default: from the host."
    )
    inference_threads: int | None = Field(
        default=None, ge=1, le=64, description="onnxruntime intra-op threads per worker. Default: 1."
    )
    decode_threads: int | None = Field(
        default=None, ge=1, le=64, description="Threads per worker decoding images. Default: 2."
    )
    max_batch_size: int = Field(default=8, ge=1, le=256)
    fixed_batch_shapes: bool | None = Field(
        default=None,
        description="Run every batch at one of the sizes 1, 2, 4, ... max_batch_size, padded up, each on a session "
        "of its own that ran it at start-up. Default: on for GPU providers (the CUDA provider redoes tens of ms "
        "of set-up whenever a run's input shape differs from the previous run's), off on CPU.",
    )
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
    cuda_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        default="EXHAUSTIVE",
        description="How the CUDA provider picks convolution kernels. With fixed batch shapes the search runs "
        "once per shape, at start-up.",
    )
    cuda_conv_max_workspace: bool = Field(default=True, description="Let cuDNN use its largest workspace.")
    cuda_prefer_nhwc: bool = Field(default=False, description="Channels-last kernels in the CUDA provider.")
    cuda_arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"
    cuda_mem_limit_mb: int | None = Field(
        default=None, ge=64, description="GPU memory arena limit per session, MiB; empty: no limit."
    )
    gpu_device: int = Field(default=0, ge=0, description="The CUDA device the sessions run on.")
    use_tf32: bool = Field(
        default=True,
        description="TF32 tensor-core math for float32 convolutions and matrix products in the CUDA provider "
        "(its default; Ampere and later GPUs): faster, with their inputs rounded to a 10-bit mantissa, so scores "
        "move slightly from the CPU's. Off: full float32. TensorRT engines keep TensorRT's own default (on).",
    )
    fp16: bool = Field(default=False, description="TensorRT builds FP16 engines (faster; scores move slightly).")
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=64 * 64)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, description="Request header lines, in all; 431 over it.")
    body_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        le=600.0,
        description="A body from which no byte arrives for this long answers 408 (before the request timeout).",
    )
    max_concurrency: int = Field(
        default=64,
        ge=1,
        description="Predictions admitted per worker, uploads in progress included (what a worker holds in "
        "memory), before a new one answers 503 at once.",
    )
    latency_budget_ms: float = Field(
        default=1000.0,
        gt=0.0,
        le=600_000.0,
        description="A prediction is admitted once it can be answered within this (by what is ahead of it at "
        "its model, the model's measured pace and the latency of recent answers), waiting unread until then, "
        "and answers 503 once even an idle model could no longer answer it in time; a request may send its "
        "own in X-Latency-Budget-Ms.",
    )
    request_timeout_s: int = Field(default=30, ge=1)
    access_log: bool = Field(
        default=False,
        description="BentoML's log line per request. Off: at hundreds of frames per second it costs ~10% of "
        "the throughput, and the metrics count the same requests.",
    )
    freeze_startup_heap: bool = Field(
        default=True, description="Keep the objects loaded at start-up out of Python's full garbage collections."
    )
    state_dir: Path = Field(
        default=PROJECT_ROOT / "state",
        description="Where the embedded thresholds database and TensorRT's engine cache live.",
    )
    thresholds_db: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the thresholds database (e.g. postgresql+psycopg://...); "
        "empty means SQLite at <state_dir>/thresholds.db, shared by the workers on this host.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for threshold and model version changes; without one, changes are refused.",
    )
    state_resync_s: float = Field(
        default=5.0,
        ge=0.1,
        le=3600,
        description="Every worker reads the shared state (thresholds, model versions) again this often, whatever "
        "the database's change notifications said: the safety net for a notification lost with a connection.",
    )
    drain_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=600,
        description="After SIGTERM, seconds a worker goes on answering, /readyz saying 503 and each answer closing "
        "its connection, before it stops accepting: long enough for load balancers to stop sending it traffic "
        "(5 on Kubernetes).",
    )
    drain_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Then, seconds it waits at most for the requests in flight before it exits.",
    )
    activate_new_versions: bool = Field(
        default=False,
        description="A version newer than any a model has had, appearing in the model store, goes live by itself "
        "once it loads and warms up (unless the model is pinned).",
    )
    kept_frames_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="Frames kept for review (a shadow run's disagreeing frames), all together, at most.",
    )
    keep_rejected_frames: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Keep the newest this many live frames each model rejected, with their answers, for review in the "
        "QA console (production images: off by default). Within INSPECTION_KEPT_FRAMES_MAX_BYTES.",
    )
    max_sweep_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1024, description="Largest sample archive for a threshold sweep, zipped or not."
    )
    max_sweep_images: int = Field(default=1000, ge=1, description="Most images in one threshold sweep.")
    sample_sets_dir: Path | None = Field(
        default=None,
        description="Labelled sample sets kept on the server (zips or folders in the layout of export.samples), "
        "which a sweep may name instead of uploading one. Default: <state_dir>/samples.",
    )

    @property
    def sample_sets(self) -> Path:
        return self.sample_sets_dir if self.sample_sets_dir is not None else Path(self.state_dir) / "samples"

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [ref.strip() for ref in value.split(",") if ref.strip()]
        return value

    @model_validator(mode="after")
    def _body_timeout_within_request_timeout(self) -> Settings:
        if self.body_timeout_s >= self.request_timeout_s:
            raise ValueError(
                f"INSPECTION_BODY_TIMEOUT_S ({self.body_timeout_s:g}) must be shorter than "
                f"INSPECTION_REQUEST_TIMEOUT_S ({self.request_timeout_s}): a stalled upload should answer 408 "
                "before the request times out"
            )
        return self

    @model_validator(mode="after")
    def _derive_from_host(self) -> Settings:
        unset = [name for name in _HOST_DERIVED if getattr(self, name) is None]
        if unset:
            # A GPU provider named but unusable gets the GPU layout too: the start-up then refuses it.
            gpu = self.provider in (Provider.CUDA, Provider.TENSORRT) or (
                self.provider is Provider.AUTO and choose_provider(self.provider, probe_host_gpu()) != CPU
            )
            derived = host_defaults(usable_cpus(), gpu)
            for name in unset:
                setattr(self, name, derived[name])
        return self

    @property
    def tensorrt_cache_dir(self) -> Path:
        """TensorRT's engines and timing cache: each engine built once, in a folder of its own
        (`service.pipeline.engine_cache`), then loaded at every start."""
        return self.state_dir / "tensorrt"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
