"""/metrics of a real 2-worker server after known traffic: exact counts, summed over both workers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from export.synthetic import CLASSES, encode_image, generate_weld
from service.metrics import STAGES
from tests.conftest import ROOT, running_server

CLASSIFIER, DETECTOR, SEGMENTER = "weld-classifier", "weld-detector", "weld-segmenter"
UNKNOWN = "weld-nothing"
MAX_BODY_BYTES = 1_000_000
GOOD_FRAMES = {CLASSIFIER: 12, DETECTOR: 6, SEGMENTER: 6}
# (model, query, content type, body) -> the status and error code it must answer with
BAD_REQUESTS = [
    (CLASSIFIER, {}, "image/jpeg", b"these bytes are no image", 400, "undecodable_image"),
    (CLASSIFIER, {}, "image/jpeg", b"\xff\xd8\xff\xe0 a truncated jpeg", 400, "undecodable_image"),
    (CLASSIFIER, {}, "text/plain", b"hello", 415, "unsupported_media_type"),
    (DETECTOR, {"thresholds": "crack:2"}, "image/jpeg", None, 422, "invalid_parameters"),
    (DETECTOR, {"nms_iou": "5"}, "image/jpeg", None, 422, "invalid_parameters"),
    (SEGMENTER, {}, "image/jpeg", b"\xff\xd8\xff" + bytes(MAX_BODY_BYTES), 413, "payload_too_large"),
    (UNKNOWN, {}, "image/jpeg", None, 404, "unknown_model"),
    (UNKNOWN, {}, "image/jpeg", None, 404, "unknown_model"),
]


def served_label(model: str) -> str:
    """The model label a request is counted under: requests for unknown models count as `unknown`."""
    return "unknown" if model == UNKNOWN else model


def frame(seed: int) -> bytes:
    return encode_image(generate_weld(seed, 640, 480, label=CLASSES[seed % len(CLASSES)]).image, quality=90)


def post(url: str, model: str, body: bytes, content_type: str = "image/jpeg", **params) -> httpx.Response:
    # A new connection per request, so that the kernel spreads them over both workers.
    return httpx.post(
        f"{url}/v1/models/{model}/predict",
        content=body,
        headers={"Content-Type": content_type, "Connection": "close"},
        params=params,
        timeout=60,
    )


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every inspection_* sample: (sample name, labels) -> value."""
    text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("inspection_")
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    """A 2-worker server that has answered known predictions and errors; (server, good answers, metrics text)."""
    # running_server waits until both workers have loaded: the traffic must find them all up.
    with running_server(tmp_path_factory.mktemp("metrics"), workers=2, max_body_bytes=MAX_BODY_BYTES) as server:
        good = [(model, frame(seed)) for model, count in GOOD_FRAMES.items() for seed in range(count)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda job: post(server.url, *job), good))
            bad = list(
                pool.map(
                    lambda job: post(server.url, job[0], job[3] or frame(0), job[2], **job[1]),
                    BAD_REQUESTS,
                )
            )
        assert [a.status_code for a in answers] == [200] * len(good), [a.text for a in answers if a.status_code != 200]
        assert [(r.status_code, r.json()["error"]["code"]) for r in bad] == [(s, c) for *_, s, c in BAD_REQUESTS]
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        yield server, [a.json() for a in answers], text


def test_both_workers_answered_predictions(traffic):
    server, _, _ = traffic
    assert len(server.worker_pids("counter")) == 2


def test_every_scrape_shows_the_same_totals_whichever_worker_answers(traffic):
    server, _, _ = traffic
    scrapes = [scrape(server.url) for _ in range(6)]
    assert all(s == scrapes[0] for s in scrapes[1:])


def test_request_durations_count_every_request_by_model_status_and_protocol(traffic):
    server, _, _ = traffic
    samples = scrape(server.url)
    expected = Counter({(model, "200"): count for model, count in GOOD_FRAMES.items()})
    expected.update((served_label(model), str(status)) for model, *_, status, _ in BAD_REQUESTS)
    counted = {
        (labels["model"], labels["status"]): v
        for (name, key), v in samples.items()
        if name == "inspection_request_duration_seconds_count"
        for labels in [dict(key)]
        if labels["protocol"] == "v1"  # every request here is one of /v1
    }
    assert counted == expected
    for model, status in expected:
        labels = {"model": model, "status": status, "protocol": "v1"}
        infinite = value(samples, "inspection_request_duration_seconds_bucket", **labels, le="+Inf")
        assert infinite == expected[(model, status)]
        assert value(samples, "inspection_request_duration_seconds_sum", **labels) > 0


def test_errors_are_counted_by_model_and_code(traffic):
    server, _, _ = traffic
    samples = scrape(server.url)
    expected = Counter((served_label(model), code) for model, *_, code in BAD_REQUESTS)
    counted = {
        (dict(key)["model"], dict(key)["code"]): v
        for (name, key), v in samples.items()
        if name == "inspection_errors_total"
    }
    assert counted == expected


def test_every_stage_is_timed_once_per_answered_prediction(traffic):
    server, _, _ = traffic
    samples = scrape(server.url)
    for model, count in GOOD_FRAMES.items():
        for stage in STAGES:
            assert value(samples, "inspection_stage_duration_seconds_count", model=model, stage=stage) == count
        # Inference is the model's real work: never zero, and it shows in the stage sums.
        assert value(samples, "inspection_stage_duration_seconds_sum", model=model, stage="inference") > 0


def test_batch_sizes_add_up_to_the_images_inferred(traffic):
    server, _, _ = traffic
    samples = scrape(server.url)
    for model, count in GOOD_FRAMES.items():
        assert value(samples, "inspection_batch_size_sum", model=model) == count
        batches = value(samples, "inspection_batch_size_count", model=model)
        assert 1 <= batches <= count


def test_decisions_and_defects_match_the_answers(traffic):
    server, answers, _ = traffic
    samples = scrape(server.url)
    decisions = Counter((a["model"], a["decision"]) for a in answers)
    defects = Counter((a["model"], d) for a in answers for d in a["defects"])
    assert {
        (dict(key)["model"], dict(key)["decision"]): v
        for (name, key), v in samples.items()
        if name == "inspection_decisions_total"
    } == decisions
    assert {
        (dict(key)["model"], dict(key)["class_name"]): v
        for (name, key), v in samples.items()
        if name == "inspection_defects_total"
    } == defects
    assert decisions[(CLASSIFIER, "reject")] > 0 and decisions[(CLASSIFIER, "accept")] > 0


def test_model_info_and_thresholds_revision_describe_each_served_model(traffic):
    server, _, _ = traffic
    samples = scrape(server.url)
    described = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]
    info = {dict(key)["model"]: (dict(key), v) for (name, key), v in samples.items() if name == "inspection_model_info"}
    assert set(info) == {m["name"] for m in described}
    for model in described:
        labels, gauge = info[model["name"]]
        assert gauge == 1
        assert labels == {
            "model": model["name"],
            "version": str(model["version"]),
            "task": model["task"],
            "provider": "CPUExecutionProvider",
        }
        revision = value(samples, "inspection_thresholds_revision", model=model["name"])
        assert revision == model["thresholds"]["revision"]


def test_promtool_accepts_the_metrics_and_the_scrape_config(traffic):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (Debian: apt-get install --no-install-recommends prometheus)")
    _, _, text = traffic
    metrics = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert metrics.returncode == 0, metrics.stdout + metrics.stderr
    config = subprocess.run(
        [promtool, "check", "config", str(ROOT / "monitoring" / "prometheus.yml")], capture_output=True, text=True
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_dashboard_panels_query_only_metrics_the_service_exports(traffic):
    _, _, text = traffic
    exported = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    dashboard = json.loads((ROOT / "monitoring" / "grafana-dashboard.json").read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "Throughput",
        "Latency p50 / p95 / p99",
        "Stage breakdown (mean per request)",
        "Batch size",
        "Defect rate by class",
        "Errors by code",
    } <= titles
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\binspection_[a-z_]+", target["expr"])
    }
    assert queried and queried <= exported, queried - exported
