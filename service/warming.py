"""Until its workers are warm, the server process itself answers on the service's port.

A worker listens only once it has loaded and warmed its models (`service.listening`): seconds on a
CPU, minutes on a GPU building engines. Without this, nothing would answer on the port meanwhile, and
a liveness probe, which cannot tell a server warming up from a dead one, would restart it. So the
`bentoml serve` process listens on the same address (SO_REUSEPORT, as the workers do) from the start
and answers, one request per connection:

- `GET /livez`: 200, the process is alive;
- `GET /readyz`: 503, with how many workers are warm;
- anything else: 503 `warming_up` with `Retry-After`.

It stops listening as soon as every worker listens, answering first what it had accepted; from then
on the workers take every connection. For the moment in between, a client may still get a 503
`warming_up`, as it would have been refused before.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from service.health import Health, Warmth
from service.listening import listeners_at

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 1.0
_MOST_HEAD_BYTES = 16 * 1024


def answer_while_warming(family: socket.AddressFamily, address: tuple, workers: int) -> None:
    """Listen on `address` and answer as above in a thread, until `workers` other sockets listen there."""
    host, port = address[:2]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        log.warning("nothing answers on %s:%d while the workers warm up (%s)", host, port, exc)
        return
    sock.settimeout(0.1)
    threading.Thread(target=_serve, args=(sock, family, host, port, workers), name="warming", daemon=True).start()


def _serve(sock: socket.socket, family: int, host: str, port: int, workers: int) -> None:
    started = time.monotonic()
    own = {str(os.fstat(sock.fileno()).st_ino)}
    with sock:
        while True:
            warm = listeners_at(family, host, port, excluding=own) or 0
            if warm >= workers:
                break
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            _answer(conn, warm, workers)
        sock.setblocking(False)
        while True:  # those already accepted by the kernel
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                break
            _answer(conn, warm, workers)
    log.info("every worker is warm, %.1f s after start-up began", time.monotonic() - started)


def _answer(conn: socket.socket, warm: int, workers: int) -> None:
    with conn:
        conn.setblocking(True)
        conn.settimeout(_READ_TIMEOUT_S)
        try:
            head = _read_head(conn)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            method, path = (request_line + ["", ""])[:2]
            status, body, extra = _response(method, path.split("?", 1)[0], warm, workers)
            lines = [
                f"HTTP/1.1 {status}",
                f"content-length: {len(body)}",
                "connection: close",
                *extra,
            ]
            conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if method == "HEAD" else body))
            conn.shutdown(socket.SHUT_WR)
            # Read what the client still sends (a frame's body) so that closing does not reset the
            # connection before the answer is read.
            deadline = time.monotonic() + _READ_TIMEOUT_S
            while time.monotonic() < deadline and conn.recv(65536):
                pass
        except OSError:
            pass


def _read_head(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < _MOST_HEAD_BYTES:
        part = conn.recv(4096)
        if not part:
            break
        head += part
    return head


def _response(method: str, path: str, warm: int, workers: int) -> tuple[str, bytes, list[str]]:
    # What a worker's /readyz says at this point (`service.health`): once every worker listens, the
    # connections this process had already accepted are answered as the hand-over goes on.
    _, detail = Health(lambda: Warmth(warm, workers, handing_over=warm >= workers)).readiness()
    reason = detail["reason"]
    if path == "/livez" and method in ("GET", "HEAD"):
        return "200 OK", b"\n", ["content-type: text/plain; charset=utf-8"]
    if path == "/readyz" and method in ("GET", "HEAD"):
        return "503 Service Unavailable", json.dumps(detail).encode() + b"\n", ["content-type: application/json"]
    error = {"error": {"code": "warming_up", "message": f"the server is starting: {reason}; retry shortly"}}
    return "503 Service Unavailable", json.dumps(error).encode(), ["content-type: application/json", "retry-after: 1"]
