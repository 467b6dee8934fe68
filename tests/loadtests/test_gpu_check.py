"""`python -m loadtests.gpu_check`: what can be checked without a GPU. Where there is none it says why
and leaves no report; its phases are stopped at their budgets; its table reads the benchmark's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loadtests.gpu_check import module, run_phase, served_table
from loadtests.server import ROOT
from service.pipeline.providers import CUDA, probe_host_gpu, why_no_gpu


@pytest.mark.skipif(probe_host_gpu().runs(CUDA), reason="this host has a GPU: the check would measure it")
def test_on_a_host_without_a_gpu_the_check_says_why_exits_0_and_writes_no_report(tmp_path):
    out = tmp_path / "gpu-check"
    check = subprocess.run(
        module("loadtests.gpu_check", "--out", out), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stderr
    why = why_no_gpu(probe_host_gpu())
    assert f"gpu-check: found no GPU to check on this host: {why}. Nothing measured, no report written." in check.stdout
    assert not out.exists()


def test_a_phase_over_its_budget_is_interrupted_so_that_it_can_stop_what_it_started(tmp_path):
    lingering = "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('stopped my servers')\n"
    run = run_phase("slow", [sys.executable, "-c", lingering], 1.0, tmp_path / "slow.log")
    assert run.status == "timed out" and not run.ok
    assert 1.0 <= run.seconds < 10.0
    assert (tmp_path / "slow.log").read_text().strip() == "stopped my servers"


def test_the_checks_served_table_reads_the_benchmarks_report_with_the_workers_read_from_its_server(tmp_path):
    report = tmp_path / "benchmark.json"
    benchmark = subprocess.run(
        module(
            "loadtests.benchmark",
            "--case=weld-classifier@640x480",
            "--time-scale",
            0.05,
            "--concurrency",
            4,
            "--json",
            report,
        ),
        cwd=ROOT,
        env={**os.environ, "INSPECTION_PROVIDER": "cpu", "INSPECTION_WORKERS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert benchmark.returncode == 0, benchmark.stderr[-3000:]
    results = json.loads(report.read_text())
    assert results["variants"]["default"]["workers"] == 1
    header, rule, row = served_table(results).splitlines()
    assert header.startswith("| model | frames | provider | workers | served img/s |")
    assert row.startswith("| weld-classifier | 640x480 JPEG | CPUExecutionProvider | 1 | ")
    assert len(row.split("|")) == len(header.split("|"))
