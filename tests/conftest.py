"""Shared test fixtures: a real BentoML server on 127.0.0.1, started and stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_STORE = ROOT / "model_store"
BENTOML = Path(sys.executable).parent / "bentoml"


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    bentoml_home: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(log_dir: Path, timeout_s: float = 120.0, **settings: object) -> Iterator[RunningServer]:
    """Run `bentoml serve` with INSPECTION_* settings; stop its whole process group by PID afterwards."""
    port = free_port()
    env = {**os.environ, **{f"INSPECTION_{k.upper()}": str(v) for k, v in settings.items()}}
    env.setdefault("INSPECTION_WORKERS", "1")
    env.setdefault("INSPECTION_MODEL_STORE", str(MODEL_STORE))
    env.setdefault("INSPECTION_STATE_DIR", str(log_dir / f"state-{port}"))  # never the project's state/
    env["BENTOML_DO_NOT_TRACK"] = "true"
    # BentoML keeps the Prometheus multiprocess folder in its home and wipes it when a server starts:
    # servers sharing a home would mix (and erase) each other's metrics.
    bentoml_home = log_dir / f"bentoml-{port}"
    env["BENTOML_HOME"] = str(bentoml_home)
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(BENTOML), "serve", "service.service:InspectionService", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(
        url=f"http://127.0.0.1:{port}", process=process, log_path=log_path, bentoml_home=bentoml_home
    )
    try:
        _wait_ready(server, timeout_s)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_tree(process)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL `bentoml serve` and every process under it at once. Its workers lead process
    groups of their own, so a signal to the server's group alone would leave them serving."""
    root = psutil.Process(process.pid)
    processes = [root, *root.children(recursive=True)]
    for p in processes:
        p.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(processes, timeout=20)
    assert not alive, alive
    process.wait()


def _wait_ready(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not ready after {timeout_s}s:\n{server.log()[-4000:]}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server on the committed demo models, shared by the end-to-end tests."""
    with running_server(tmp_path_factory.mktemp("server"), max_body_bytes=4_000_000, max_pixels=12_000_000) as s:
        yield s
