"""Start-up configuration and overload, each on a server of its own."""

from __future__ import annotations

import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from export.synthetic import encode_image, generate_weld
from service.pipeline.providers import nvidia_device_present
from tests.conftest import BENTOML, MODEL_STORE, ROOT, running_server
from tests.service.clients import predict


def serve_expecting_failure(tmp_path, **settings) -> subprocess.CompletedProcess:
    env = {**os.environ, **{f"INSPECTION_{k.upper()}": str(v) for k, v in settings.items()}}
    return subprocess.run(
        [str(BENTOML), "serve", "service.inspection_service:InspectionService", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(nvidia_device_present(), reason="this host has a GPU: CUDA would really start")
def test_cuda_asked_for_without_a_gpu_stops_the_start_up_with_a_clear_message(tmp_path):
    result = serve_expecting_failure(tmp_path, provider="cuda", model_store=MODEL_STORE)
    assert result.returncode != 0
    assert "provider 'cuda' needs an NVIDIA GPU" in result.stderr + result.stdout


def test_empty_model_store_stops_the_start_up_with_a_clear_message(tmp_path):
    result = serve_expecting_failure(tmp_path, model_store=tmp_path)
    assert result.returncode != 0
    assert "no models in" in result.stderr + result.stdout


def test_only_the_configured_models_are_served(tmp_path):
    with running_server(tmp_path, models="weld-classifier") as server:
        names = [m["name"] for m in httpx.get(f"{server.url}/v1/models").json()["models"]]
        assert names == ["weld-classifier"]
        assert httpx.post(f"{server.url}/v1/models/weld-detector/predict", content=b"x").status_code == 404


def test_requests_over_the_concurrency_limit_answer_503_and_the_rest_succeed(tmp_path):
    frame = encode_image(generate_weld(71_000, 2448, 2048, label="crack").image)
    with running_server(tmp_path, max_concurrency=2, models="weld-segmenter") as server:

        def send(_):
            return httpx.post(
                f"{server.url}/v1/models/weld-segmenter/predict",
                content=frame,
                headers={"Content-Type": "image/jpeg"},
                timeout=120,
            )

        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(send, range(12)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    overloaded = next(r for r in responses if r.status_code == 503)
    assert overloaded.json()["error"]["code"] == "overloaded"
    assert overloaded.headers["retry-after"] == "1"


def test_a_line_per_request_is_logged_only_when_the_access_log_is_asked_for(tmp_path, server):
    frame = encode_image(generate_weld(71_001, 640, 480, label="no_defect").image)
    logged = "method=POST,path=/v1/models/weld-classifier/predict"

    def predict(url: str) -> None:
        response = httpx.post(
            f"{url}/v1/models/weld-classifier/predict", content=frame, headers={"Content-Type": "image/jpeg"}
        )
        assert response.status_code == 200

    predict(server.url)
    with running_server(tmp_path, access_log="true", models="weld-classifier") as logging_server:
        predict(logging_server.url)
        # The line is written after the answer is sent.
        deadline = time.monotonic() + 10
        while logged not in logging_server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert logged in logging_server.log()
    assert logged not in server.log()


def test_fixed_batch_shapes_are_warmed_up_before_ready_and_answer_as_any_size_does(tmp_path, server):
    frames = [
        encode_image(generate_weld(71_100 + i, 640, 480, label=label).image)
        for i, label in enumerate(["crack", "porosity", "undercut", "no_defect"] * 4)
    ]

    def scores(server) -> list[dict]:
        def send(frame: bytes) -> dict:
            return predict(server, "weld-classifier", frame)["scores"]

        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(send, frames))

    # A batch window, so that batches of several images form even on a busy machine.
    with running_server(
        tmp_path, fixed_batch_shapes="true", max_batch_size=4, batch_window_ms=50, models="weld-classifier"
    ) as fixed:
        # Warm-up runs in the worker's start-up, which /readyz waits for.
        assert re.search(
            r"serving weld-classifier:1 \(classification\) on CPUExecutionProvider, "
            r"batch sizes 1, 2, 4, warmed up in \d+\.\d+ s",
            fixed.log(),
        )
        described = httpx.get(f"{fixed.url}/v1/models/weld-classifier").json()
        assert described["batch_sizes"] == [1, 2, 4]
        padded = scores(fixed)
        text = httpx.get(f"{fixed.url}/metrics").text
    assert httpx.get(f"{server.url}/v1/models/weld-classifier").json()["batch_sizes"] is None
    plain = scores(server)
    for got, want in zip(padded, plain, strict=True):
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) <= 2e-6 for k in got), (got, want)
    batched = [
        s
        for f in text_string_to_metric_families(text)
        if f.name == "inspection_batch_size"
        for s in f.samples
        if s.name.endswith("_sum")
    ]
    counted = [
        s
        for f in text_string_to_metric_families(text)
        if f.name == "inspection_batch_size"
        for s in f.samples
        if s.name.endswith("_count")
    ]
    assert batched[0].value == 16 and counted[0].value < 16  # real batches of several images ran


def test_a_latency_budget_header_that_is_not_a_number_of_milliseconds_answers_422(server):
    for given in ("soon", "0", "nan", "1e9"):
        response = httpx.post(
            f"{server.url}/v1/models/weld-classifier/predict",
            content=b"x",
            headers={"Content-Type": "image/jpeg", "X-Latency-Budget-Ms": given},
        )
        assert response.status_code == 422 and "X-Latency-Budget-Ms" in response.json()["error"]["message"]


def test_a_body_timeout_as_long_as_the_request_timeout_stops_the_start_up(tmp_path):
    result = serve_expecting_failure(tmp_path, body_timeout_s=30, request_timeout_s=30, model_store=MODEL_STORE)
    assert result.returncode != 0
    assert "INSPECTION_BODY_TIMEOUT_S (30) must be shorter than INSPECTION_REQUEST_TIMEOUT_S (30)" in (
        result.stderr + result.stdout
    )
