"""The server process: workers that die with it, connections spread over them, a port not shared."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import httpx
import psutil
import pytest

from loadtests.server import free_port
from tests.conftest import BENTOML, MODEL_STORE, ROOT, running_server


def test_workers_exit_when_their_server_is_killed_and_a_restart_gets_the_port(tmp_path):
    port = free_port()
    with running_server(tmp_path / "first", port=port, workers=2, models="weld-classifier") as server:
        workers = psutil.Process(server.process.pid).children(recursive=True)
        assert len(workers) >= 2
        # What a supervisor does: SIGKILL to the server's process group, which holds the server alone.
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        started = time.monotonic()
        _, alive = psutil.wait_procs(workers, timeout=10)
        waited = time.monotonic() - started
        for survivor in alive:  # stopped here, so that a failure leaves nothing serving
            survivor.kill()
        assert alive == [] and waited < 3
    with running_server(tmp_path / "second", port=port, models="weld-classifier") as restarted:
        assert httpx.get(f"{restarted.url}/readyz").status_code == 200


@pytest.mark.parametrize("connections", [8, 32])
def test_long_lived_connections_opened_at_once_spread_over_the_workers(tmp_path, connections):
    with running_server(tmp_path, workers=2, models="weld-classifier") as server:
        port = int(server.url.rsplit(":", 1)[1])
        workers = psutil.Process(server.process.pid).children(recursive=True)
        # Cameras connecting in one burst, then each sending a request on its connection and keeping it.
        cameras = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(connections)]
        try:
            for camera in cameras:
                camera.sendall(b"GET /livez HTTP/1.1\r\nHost: line\r\n\r\n")
            assert all(camera.recv(4096).startswith(b"HTTP/1.1 200") for camera in cameras)
            held = [
                sum(c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in w.net_connections())
                for w in workers
            ]
        finally:
            for camera in cameras:
                camera.close()
    assert sum(held) == connections
    assert min(held) >= connections // 4, held  # the kernel spreads them; one shared socket gave 8/0


def test_a_second_server_on_a_port_in_use_stops_instead_of_sharing_it(tmp_path):
    with running_server(tmp_path / "first", models="weld-classifier") as server:
        port = server.url.rsplit(":", 1)[1]
        env = {**os.environ, "INSPECTION_MODEL_STORE": str(MODEL_STORE), "INSPECTION_MODELS": "weld-classifier",
               "BENTOML_HOME": str(tmp_path / "second-home")}
        second = subprocess.run(
            [str(BENTOML), "serve", "service.service:InspectionService", "--host", "127.0.0.1", "--port", port],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert second.returncode != 0
        assert "in use by another server" in second.stderr + second.stdout
        assert httpx.get(f"{server.url}/readyz").status_code == 200
