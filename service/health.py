"""What a worker says of its health, and how it stops: `/readyz` and the drain on SIGTERM.

- `/livez`: 200 while the process runs (BentoML's). Before any worker is warm, when no worker
  listens yet (`service.listening`), the server process answers it itself (`service.warming`).
- `/readyz`: 200 when this server can take traffic: every worker has loaded and warmed every model,
  and it is not draining; 503 otherwise. Its body (JSON) says why, and whether the database of the
  shared state is reachable: a server that cannot reach it stays ready, serving the state it last
  read (`service.shared_state`), and says so here.
- Drain: on SIGTERM a worker reports not ready at once and goes on answering for
  `INSPECTION_DRAIN_DELAY_S` (long enough for a load balancer's health checks, or Kubernetes'
  endpoints, to stop sending it traffic), each answer closing its connection so that its client
  reconnects elsewhere; then it stops accepting connections and finishes the requests in flight, within
  `INSPECTION_DRAIN_TIMEOUT_S`, before it exits. A second SIGTERM ends the delay at once.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Warmth:
    """How many of the server's workers are warm (listening), where that can be known."""

    warm: int
    workers: int
    counted: bool = True  # False: the workers share one socket, so only this one is known to be warm
    # The server process still answers on the port (`service.warming`): every worker listens, but a new
    # connection may still get its 503 for a moment. Not ready until it stops.
    handing_over: bool = False


class Health:
    def __init__(self, warmth: Callable[[], Warmth | None]) -> None:
        """`warmth`: the server's workers that are warm, None before this worker has started its models."""
        self._warmth = warmth
        self.draining = False
        # The shared state's follower once started (`service.shared_state.StateFollower`): its `health`.
        self.shared_state: Callable[[], Any] | None = None

    def ready(self) -> bool:
        return self.readiness()[0]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        warmth = self._warmth()
        detail: dict[str, Any] = {}
        if warmth is None:
            reason = "this worker is loading its models"
        elif warmth.warm < warmth.workers:
            reason = f"{warmth.warm} of {warmth.workers} workers have warmed their models"
        elif warmth.handing_over:
            reason = "every worker is warm; the server process is handing the port over to them"
        elif self.draining:
            reason = "draining: shutting down"
        else:
            reason = ""
        if warmth is not None and warmth.counted:
            detail["workers"] = {"warm": warmth.warm, "of": warmth.workers}
        detail["draining"] = self.draining
        if self.shared_state is not None:
            state = self.shared_state()
            detail["shared_state"] = {"database": state.describe(), "reachable": state.connected}
        if reason:
            detail["reason"] = reason
        return not reason, {"ready": not reason, **detail}


class ProbeRoutes:
    """ASGI middleware: `GET /readyz` with its detail; while draining, every answer closes its connection."""

    def __init__(self, app: ASGIApp, health: Health) -> None:
        self.app = app
        self._health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"] == "/readyz" and scope["method"] in ("GET", "HEAD"):
            await self._readyz(scope, send)
        elif self._health.draining:
            await self.app(scope, receive, _closing(send))
        else:
            await self.app(scope, receive, send)

    async def _readyz(self, scope: Scope, send: Send) -> None:
        ready, detail = self._health.readiness()
        body = json.dumps(detail).encode() + b"\n"
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if self._health.draining:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 200 if ready else 503, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _closing(send: Send) -> Send:
    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing


def drain_on_sigterm(health: Health, delay_s: float, timeout_s: float) -> None:
    """Turn this worker's SIGTERM into the drain above. Call it from the service's start-up, once the
    HTTP server (uvicorn) has installed its own handler, which this one calls after the delay."""
    if threading.current_thread() is not threading.main_thread():
        return
    stop_serving = signal.getsignal(signal.SIGTERM)
    if not callable(stop_serving):
        log.warning("no HTTP server's SIGTERM handler to drain through; SIGTERM stops this worker at once")
        return
    server = getattr(stop_serving, "__self__", None)
    config = getattr(server, "config", None)
    if config is not None and hasattr(config, "timeout_graceful_shutdown"):
        # Requests still in flight this long after the server stopped accepting are cancelled.
        config.timeout_graceful_shutdown = timeout_s
    timer: list[threading.Timer] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        if health.draining:  # a second one: stop now
            for pending in timer:
                pending.cancel()
            stop_serving(signum, frame)
            return
        health.draining = True
        log.info("SIGTERM: not ready; answering for %.1f s more, then finishing what is in flight", delay_s)
        if delay_s <= 0:
            stop_serving(signum, frame)
            return
        timer.append(threading.Timer(delay_s, stop_serving, (signum, None)))
        timer[0].daemon = True
        timer[0].start()

    signal.signal(signal.SIGTERM, on_sigterm)
