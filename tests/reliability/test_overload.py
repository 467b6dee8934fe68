"""Load a camera line cannot control: overload, stalled uploads, oversized headers."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from export.synthetic import encode_image, generate_weld
from tests.conftest import running_server


def test_under_overload_admitted_predictions_answer_within_their_latency_budget(tmp_path):
    frame = encode_image(generate_weld(71_200, 640, 480, label="crack").image)

    def overload(url: str, budget_ms: int, clients: int = 32, seconds: float = 6.0) -> tuple[list[float], int]:
        """Answer times of the admitted predictions, and how many were refused (each refused client
        waits 50 ms before it tries again)."""
        answered: list[float] = []
        refused: list[int] = []
        deadline = time.monotonic() + seconds

        def camera(_: int) -> None:
            headers = {"Content-Type": "image/jpeg", "X-Latency-Budget-Ms": str(budget_ms)}
            with httpx.Client(timeout=60) as client:
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    response = client.post(f"{url}/v1/models/weld-segmenter/predict", content=frame, headers=headers)
                    if response.status_code == 200:
                        answered.append(time.perf_counter() - started)
                    else:
                        assert response.status_code == 503 and response.headers["retry-after"] == "1"
                        assert "over the latency budget" in response.json()["error"]["message"]
                        refused.append(1)
                        time.sleep(0.05)

        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(camera, range(clients)))
        return answered, len(refused)

    with running_server(tmp_path, models="weld-segmenter", max_concurrency=256) as server:
        unbounded, none_refused = overload(server.url, budget_ms=600_000)
        bounded, refused = overload(server.url, budget_ms=150)
    assert none_refused == 0 and np.percentile(unbounded, 50) > 0.3  # a real overload: queued answers are late
    assert refused > 0
    assert np.percentile(bounded, 95) < 0.225  # within 1.5 x the budget
    assert len(bounded) >= 0.6 * len(unbounded)  # refusing at once keeps the model busy


def test_a_stalled_upload_answers_408_and_oversized_headers_431_in_the_error_contract(tmp_path):
    with running_server(tmp_path, body_timeout_s=1, models="weld-classifier") as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as camera:
            camera.sendall(
                b"POST /v1/models/weld-classifier/predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n" + b"\xff\xd8" + b"\0" * 998
            )
            started = time.monotonic()
            answer = camera.recv(65536).decode(errors="replace")
            waited = time.monotonic() - started
            while not answer.endswith("}"):  # headers and body may come in separate segments
                more = camera.recv(65536).decode(errors="replace")
                if not more:
                    break
                answer += more
        assert answer.startswith("HTTP/1.1 408"), answer
        assert '"code":"request_timeout"' in answer and "after 1000 bytes" in answer
        assert 0.8 < waited < 5
        response = httpx.get(f"{server.url}/v1/models", headers={"X-Padding": "p" * 20_000})
        assert response.status_code == 431
        assert response.json()["error"]["code"] == "headers_too_large"
        assert httpx.get(f"{server.url}/v1/models", headers={"X-Padding": "p" * 8_000}).status_code == 200
