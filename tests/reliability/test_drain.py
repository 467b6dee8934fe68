"""SIGTERM drains a server: requests in flight are answered, new connections go elsewhere, and the
drain is bounded by INSPECTION_DRAIN_TIMEOUT_S whatever a client does."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import httpx

from loadtests.frames import line_frames
from tests.conftest import running_server

CLASSIFIER, SEGMENTER = "weld-classifier", "weld-segmenter"


def sigterm(server) -> float:
    """SIGTERM to `bentoml serve`, as Kubernetes or a supervisor sends it; the moment it was sent."""
    sent = time.monotonic()
    os.kill(server.process.pid, signal.SIGTERM)
    return sent


def test_a_request_in_flight_at_sigterm_is_answered_and_the_server_then_exits(tmp_path):
    frames = line_frames(640, 480) * 16  # 64 frames for the segmenter in one request: seconds of work here
    with running_server(tmp_path, models=SEGMENTER, workers=1, drain_delay_s=0.5, drain_timeout_s=30) as server:
        answer: list[httpx.Response] = []
        body = v2_body(frames)

        def long_request() -> None:
            answer.append(
                httpx.post(
                    f"{server.url}/v2/models/{SEGMENTER}/infer",
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=120,
                )
            )

        request = threading.Thread(target=long_request)
        started = time.monotonic()
        request.start()
        time.sleep(0.3)  # under way
        sent = sigterm(server)
        # Draining: not ready, still answering, for the delay.
        ready = httpx.get(f"{server.url}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["draining"] is True
        request.join(timeout=120)
        answered = time.monotonic()
        server.process.wait(timeout=60)
        exited = time.monotonic()
    assert answer and answer[0].status_code == 200, answer and answer[0].text[:300]
    assert {output["shape"][0] for output in answer[0].json()["outputs"]} == {len(frames)}  # every frame answered
    print(
        f"\nanswered {answered - started:.2f} s after it was sent, {answered - sent:.2f} s after SIGTERM; exited after"
    )
    assert answered - sent > 0.5  # it was still in flight when the drain began
    assert exited >= answered


def test_the_drain_is_bounded_by_its_timeout_whatever_a_client_does(tmp_path):
    # An upload that never finishes, in flight when the server stops accepting: it would hold the
    # drain for the body timeout (60 s here), but the drain timeout (1 s) ends it.
    head = (
        f"POST /v1/models/{CLASSIFIER}/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode() + line_frames(640, 480)[2][:64]
    with running_server(
        tmp_path,
        models=CLASSIFIER,
        workers=1,
        drain_delay_s=0.2,
        drain_timeout_s=1,
        body_timeout_s=60,
        request_timeout_s=120,
    ) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as stalled:
            stalled.sendall(head)
            time.sleep(0.3)
            sent = sigterm(server)
            server.process.wait(timeout=30)
            exited = time.monotonic()
            stalled.settimeout(5)
            try:
                leftover = stalled.recv(4096)
            except OSError:
                leftover = b""
    print(f"\nexited {exited - sent:.2f} s after SIGTERM with an upload stalled in flight")
    assert exited - sent < 6  # delay 0.2 + timeout 1, and the process's own exit; not the 60 s body timeout
    assert not leftover.startswith(b"HTTP/1.1 200")


def v2_body(frames: list[bytes]) -> str:
    """An Open Inference Protocol request of `frames`, each a BYTES element in base64 JSON."""
    import base64
    import json

    return json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [len(frames)],
                    "data": [base64.b64encode(f).decode() for f in frames],
                    "parameters": {"content_type": "base64"},
                }
            ]
        }
    )
