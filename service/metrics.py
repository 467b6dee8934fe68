"""Prometheus metrics of the request path.

Labelled by served model name (a request for an unknown model counts as
`unknown`), never by raw path or image. Histograms, so that /metrics can be
aggregated across workers and replicas.

prometheus_client is imported on first use, not at import time: BentoML sets
PROMETHEUS_MULTIPROC_DIR in each worker after importing the service module, and
prometheus_client picks its storage when it is first imported. Imported earlier,
a worker's figures would never reach the aggregated /metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)


class Stage(StrEnum):
    """The request path's stages, as the stage histogram labels them."""

    DECODE = "decode"
    PREPROCESS = "preprocess"
    QUEUE_WAIT = "queue_wait"  # waiting for a batch slot
    INFERENCE = "inference"  # the batch's run
    POSTPROCESS = "postprocess"
    HEATMAP = "heatmap"  # only answers that ask for one


# The stages of every answered prediction.
STAGES = tuple(stage.value for stage in Stage if stage is not Stage.HEATMAP)
UNKNOWN_MODEL = "unknown"


@dataclass(frozen=True)
class InspectionMetrics:
    request_duration: Any
    stage_duration: Any
    batch_size: Any
    decisions: Any
    defects: Any
    reviews: Any
    errors: Any
    model_info: Any
    active_version: Any
    thresholds_revision: Any
    threshold_changes: Any
    shadow_frames: Any
    shadow_decisions: Any
    shadow_class_agreement: Any
    in_flight: Any
    queue_depth: Any
    refusals: Any
    shared_state_up: Any
    shared_state_synced: Any


@lru_cache(maxsize=1)
def inspection_metrics() -> InspectionMetrics:
    from prometheus_client import Counter, Gauge, Histogram

    return InspectionMetrics(
        request_duration=Histogram(
            "inspection_request_duration_seconds",
            "End-to-end prediction request duration, by HTTP status and protocol (v1, v2).",
            ["model", "status", "protocol"],
            buckets=LATENCY_BUCKETS,
        ),
        stage_duration=Histogram(
            "inspection_stage_duration_seconds",
            "Duration of one request-path stage: decode, preprocess, queue_wait, inference, postprocess.",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
        ),
        batch_size=Histogram(
            "inspection_batch_size", "Images per inference batch.", ["model"], buckets=BATCH_SIZE_BUCKETS
        ),
        decisions=Counter(
            "inspection_decisions", "Predictions by decision: accept, review, reject.", ["model", "decision"]
        ),
        defects=Counter(
            "inspection_defects", "Predictions in which a defect class crossed its threshold.", ["model", "class_name"]
        ),
        reviews=Counter(
            "inspection_reviews",
            "Predictions in which a defect class was in its review band (at or above its review threshold, below "
            "its reject threshold).",
            ["model", "class_name"],
        ),
        errors=Counter("inspection_errors", "Failed requests by error code.", ["model", "code"]),
        model_info=Gauge(
            "inspection_model_info",
            "Served model version and execution provider (value 1).",
            ["model", "version", "task", "provider"],
            multiprocess_mode="max",
        ),
        active_version=Gauge(
            "inspection_active_version",
            "The version of each model that answers requests naming none.",
            ["model"],
            multiprocess_mode="mostrecent",
        ),
        thresholds_revision=Gauge(
            "inspection_thresholds_revision",
            "Active thresholds revision.",
            ["model"],
            multiprocess_mode="max",
        ),
        threshold_changes=Counter(
            "inspection_threshold_changes", "Threshold revisions written, by kind.", ["model", "kind"]
        ),
        shadow_frames=Counter(
            "inspection_shadow_frames",
            "Frames of a shadow run: agreed or disagreed (with the active answer), shed under load, failed.",
            ["model", "candidate", "result"],
        ),
        shadow_decisions=Counter(
            "inspection_shadow_decisions",
            "Frames of a shadow run by the active version's decision and the candidate's.",
            ["model", "candidate", "active", "shadow"],
        ),
        shadow_class_agreement=Counter(
            "inspection_shadow_class_agreement",
            "Per defect class and frame of a shadow run: whether the candidate agreed on the decision or the label.",
            ["model", "candidate", "class_name", "on", "agrees"],
        ),
        # What an autoscaler scales on (docs/operations.md): summed over a server's live workers.
        in_flight=Gauge(
            "inspection_in_flight",
            "Predictions admitted and not yet answered (uploading, queued for a batch, running).",
            ["model"],
            multiprocess_mode="livesum",
        ),
        queue_depth=Gauge(
            "inspection_queue_depth",
            "Predictions waiting for admission: the model cannot yet answer them within their budget.",
            ["model"],
            multiprocess_mode="livesum",
        ),
        refusals=Counter(
            "inspection_refusals",
            "Predictions refused with 503 by admission control: latency_budget (not answerable in time) or "
            "worker_limit (INSPECTION_MAX_CONCURRENCY).",
            ["model", "reason"],
        ),
        # The lowest over the server's live workers: 0 when any of them cannot reach the database.
        shared_state_up=Gauge(
            "inspection_shared_state_up",
            "1 while the database of thresholds and model versions is reachable; 0 while the state last read "
            "is served.",
            multiprocess_mode="livemin",
        ),
        shared_state_synced=Gauge(
            "inspection_shared_state_synced_timestamp_seconds",
            "When the state served was last read whole from the database (Unix time; the oldest worker's).",
            multiprocess_mode="livemin",
        ),
    )
