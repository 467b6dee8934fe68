"""Short headless locust runs (seconds) against a real server: the profiles load the service the
way the line does, and the run's exit code is its verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, RunningServer

LOCUST = Path(sys.executable).parent / "locust"
CAMERA_FPS = 5
RUN_S = 4


def run_locust(server: RunningServer, tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    """One headless run with loadtests/locust.conf; returns the process and its stats by request name."""
    stats_file = tmp_path / "stats"
    env = {k: v for k, v in os.environ.items() if k != "LOCUST_ADMIN_TOKEN"}
    process = subprocess.run(
        [
            str(LOCUST),
            "--config",
            "loadtests/locust.conf",
            "--host",
            server.url,
            "--spawn-rate",
            "100",
            "--stop-timeout",
            "10",
            "--camera-fps",
            str(CAMERA_FPS),
            "--json-file",
            str(stats_file),
            *options,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    stats = json.loads(stats_file.with_suffix(".json").read_text())
    return process, {entry["name"]: entry for entry in stats}


def answered(server: RunningServer) -> dict[tuple[str, str], float]:
    """`/v1` prediction requests the server has counted so far, by (model, status)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        (sample.labels["model"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "inspection_request_duration_seconds"
        for sample in family.samples
        if sample.name.endswith("_count") and sample.labels["protocol"] == "v1"
    }


def test_cameras_and_qa_engineer_run_clean_and_the_server_counts_every_frame(server, tmp_path):
    before = answered(server)
    process, stats = run_locust(
        server,
        tmp_path,
        "--users",
        "3",
        "--run-time",
        f"{RUN_S}s",
        "--stations",
        "weld-classifier@640x480,weld-segmenter@640x480",
        "--max-p99-ms",
        "5000",
    )
    after = answered(server)
    assert process.returncode == 0, process.stderr[-3000:]
    for model in ("weld-classifier", "weld-segmenter"):
        camera = stats[f"predict {model} 640x480"]
        assert camera["num_failures"] == 0
        # One camera per station, at a fixed rate for the whole run.
        assert CAMERA_FPS * (RUN_S - 1) <= camera["num_requests"] <= CAMERA_FPS * RUN_S + 1
        counted = after.get((model, "200"), 0) - before.get((model, "200"), 0)
        assert counted == camera["num_requests"]
    qa = [entry for name, entry in stats.items() if name.startswith("/v1/models")]
    assert sum(entry["num_requests"] for entry in qa) >= 1
    assert sum(entry["num_failures"] for entry in qa) == 0


def test_a_run_whose_p99_passes_the_bound_exits_non_zero(server, tmp_path):
    process, stats = run_locust(
        server,
        tmp_path,
        "--users",
        "2",
        "--run-time",
        "2s",
        "--stations",
        "weld-classifier@640x480",
        "--max-p99-ms",
        "0.001",
    )
    assert process.returncode == 1
    assert "p99" in process.stderr and "over the bound" in process.stderr
    assert stats["predict weld-classifier 640x480"]["num_failures"] == 0


def test_a_failed_request_fails_the_run(server, tmp_path):
    process, stats = run_locust(
        server, tmp_path, "--users", "2", "--run-time", "2s", "--stations", "weld-nothing@640x480"
    )
    assert process.returncode == 1
    camera = stats["predict weld-nothing 640x480"]
    assert camera["num_requests"] >= 1 and camera["num_failures"] == camera["num_requests"]
    assert "requests failed" in process.stderr
