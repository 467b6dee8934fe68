"""A real `bentoml serve` on 127.0.0.1, in the background: ready with every worker, stopped by PID.

The benchmark and the test suite both start servers this way. How many workers a server runs is read
from the server itself (the worker processes under it), never derived here: the code served may be
another commit's, whose defaults differ from this checkout's (the benchmark's `ref=` and `code=`
variants), and the host's defaults depend on its cores and GPU.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

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

    def workers(self) -> list[psutil.Process]:
        """The worker processes the server runs now."""
        return worker_processes(psutil.Process(self.process.pid))

    def worker_pids(self, kind: str) -> set[str]:
        """PIDs of the workers that wrote a prometheus_client file of this kind (one file per kind and PID).

        `gauge_max`: the worker has loaded its models (it set the model-info gauge);
        `counter`: it has answered a prediction.
        """
        folder = self.bentoml_home / "prometheus_multiproc_dir"
        return {re.sub(r"\D", "", path.stem) for path in folder.glob(f"{kind}_*.db")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(
    log_dir: Path,
    timeout_s: float = 120.0,
    env: Mapping[str, str] | None = None,
    root: Path = ROOT,
    port: int | None = None,
    **settings: object,
) -> Iterator[RunningServer]:
    """Serve the service in `root` (this checkout unless told) on `port` (a free one unless told) with
    `env` and INSPECTION_* `settings` on top of this environment; stop by PID afterwards."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    bentoml_home = log_dir / f"bentoml-{port}"
    env = {
        **os.environ,
        **(env or {}),
        **{f"INSPECTION_{k.upper()}": str(v) for k, v in settings.items()},
        # Its own BentoML home: the Prometheus multiprocess folder lives there, and a server starting
        # with the same home would wipe it (and mix in its own figures).
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    # A thresholds database of its own: never the project's state/, never another server's.
    env.setdefault("INSPECTION_STATE_DIR", str(log_dir / f"state-{port}"))
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(BENTOML), "serve", service_target(root), "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
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


async def model_samples(url: str, model: str, *families: str) -> list[Sample]:
    """The samples of these metric families that are labelled with `model`, from the server's /metrics."""
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{url}/metrics") as response:
            text = await response.text()
    return [
        sample
        for family in text_string_to_metric_families(text)
        if family.name in families
        for sample in family.samples
        if sample.labels.get("model") == model
    ]


def service_target(root: Path) -> str:
    """What `bentoml serve` serves in `root`: the BentoML service's module, which an earlier commit
    (a benchmark's `ref=` variant) may have kept at its former place."""
    if (root / "service" / "inspection_service.py").exists():
        return "service.inspection_service:InspectionService"
    return "service.service:InspectionService"


def worker_processes(server: psutil.Process) -> list[psutil.Process]:
    """The processes under `bentoml serve` that serve requests: circus starts each one with a
    `--worker-id`, whatever the version of the service's code."""
    workers = []
    for child in server.children(recursive=True):
        try:
            if "--worker-id" in child.cmdline():
                workers.append(child)
        except psutil.NoSuchProcess:  # a worker that exited (a crash; circus starts another)
            continue
    return sorted(workers, key=lambda worker: worker.pid)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
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
    if alive:
        raise RuntimeError(f"processes survived SIGKILL: {alive}")
    process.wait()


def _wait_ready(server: RunningServer, timeout_s: float) -> None:
    """/readyz can answer as soon as one worker is up, and clients connecting then could all stay on
    that worker for as long as they keep their connections: wait until every worker has loaded.

    Circus starts all the workers at once, long before the first one has loaded its models and
    /readyz answers; so once it does, the workers under the server are all the server will run."""
    deadline = time.monotonic() + timeout_s
    workers: list[psutil.Process] = []
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()[-4000:]}")
        try:
            ready = httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ready = False
        if ready:
            workers = server.workers()
            loaded = server.worker_pids("gauge_max")
            if workers and all(str(worker.pid) in loaded for worker in workers):
                return
        time.sleep(0.2)
    raise RuntimeError(
        f"server not ready after {timeout_s:.0f}s ({len(workers)} workers under it, "
        f"{len(server.worker_pids('gauge_max'))} of them loaded):\n{server.log()[-4000:]}"
    )
