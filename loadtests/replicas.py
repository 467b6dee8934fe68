"""Several servers on one PostgreSQL behind a round-robin load balancer (HAProxy), with cameras sending
frames at a steady rate through it: what operators need to know before they run replicas.

    python -m loadtests.replicas [--servers 3] [--changes 100] [--cameras 6] [--fps 4] [--out FILE]

It measures, in one run, and reports as JSON (and a table on stdout):
- database: the queries the servers send the database while frames go through (counted on the wire);
- propagation: threshold changes, each through the next server in turn; from the moment a change is
  sent until each server answers with its revision (`GET /v1/models/{model}`, which reads nothing
  from the database), p50, p99 and max over every change and server;
- outage: one server's database connection cut for a while, changes made through the others
  meanwhile, then restored: how long it took that server to serve the newest revision, and how many
  of its answers failed meanwhile (none should: it serves the state it holds);
- rolling restart: each server in turn stopped with SIGTERM, waited for, started and waited ready,
  with the cameras sending throughout: failed camera requests (none should fail);
- killed server: one server SIGKILLed under the cameras: the requests that failed (at most those in
  flight on it), and that the load balancer routes around it.

Each server reaches the database through a relay of its own (`DatabaseLink`), so that its connection
can be cut and restored while the others keep theirs. Needs `haproxy` on PATH and a PostgreSQL
(`--postgres URL`, default `$INSPECTION_TEST_POSTGRES_URL`) on which it may create a database for the
run; it drops it afterwards. Every process it starts binds to 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from loadtests.frames import line_frames
from loadtests.server import ROOT, RunningServer, free_port, kill_tree, running_server

MODEL = "weld-classifier"
ADMIN_TOKEN = "replicas-admin"
DRAIN_DELAY_S = 1.0  # the servers' INSPECTION_DRAIN_DELAY_S: several health checks of the balancer
CHECK_INTERVAL_MS = 100  # the balancer's health checks of /readyz


# --- the database, and each server's link to it --------------------------------------------------


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A database of its own on the PostgreSQL of `admin_url`, dropped afterwards."""
    name = f"replicas_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class RoundTrips:
    """Counts a PostgreSQL client's round trips to the server in the bytes it sends: its simple queries
    (`Q`) and the ends of its extended-protocol batches (`Sync`, `S`); a connection's first messages
    (SSL request, start-up) have no type byte."""

    _PROTOCOL_3 = 196608

    def __init__(self) -> None:
        self.count = 0
        self._buffer = b""
        self._started = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if not self._started:
                if len(self._buffer) < 8:
                    return
                length, code = int.from_bytes(self._buffer[:4], "big"), int.from_bytes(self._buffer[4:8], "big")
                if len(self._buffer) < length:
                    return
                self._buffer = self._buffer[length:]
                self._started = code == self._PROTOCOL_3
                continue
            if len(self._buffer) < 5:
                return
            kind, length = self._buffer[:1], int.from_bytes(self._buffer[1:5], "big")
            if len(self._buffer) < 1 + length:
                return
            self._buffer = self._buffer[1 + length :]
            if kind in (b"Q", b"S"):
                self.count += 1


class DatabaseLink:
    """A TCP relay from 127.0.0.1:`port` to the database: `cut` closes every connection through it and
    refuses new ones (as a database restart or a network partition that resets would), `restore`
    accepts again. `round_trips` counts the queries the server sent through it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._counters: list[RoundTrips] = []
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            for end in pair:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def close(self) -> None:
        self.cut()

    @property
    def round_trips(self) -> int:
        with self._lock:
            return sum(counter.count for counter in self._counters)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = (client, upstream)
            counter = RoundTrips()
            with self._lock:
                self._pairs.add(pair)
                self._counters.append(counter)
            threading.Thread(target=self._pump, args=(client, upstream, pair, counter), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, pair, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair: tuple, counter: RoundTrips | None) -> None:
        try:
            while data := source.recv(65536):
                if counter is not None:
                    with self._lock:
                        counter.feed(data)
                sink.sendall(data)
        except OSError:
            pass
        for end in pair:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            self._pairs.discard(pair)


# --- the servers and the balancer ------------------------------------------------------------------


class Replica:
    """One server on the shared database, through its own link; started, stopped and killed by PID."""

    def __init__(self, index: int, database_url: str, log_dir: Path, workers: int) -> None:
        self.index = index
        url = make_url(database_url)
        assert url.host and url.port
        self.link = DatabaseLink((url.host, url.port))
        self.database_url = url.set(host="127.0.0.1", port=self.link.port).render_as_string(hide_password=False)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir / f"server-{index}"
        self.workers = workers
        self.server: RunningServer | None = None
        self._running: ExitStack | None = None

    def start(self) -> None:
        stack = ExitStack()
        self.server = stack.enter_context(
            running_server(
                self.log_dir,
                port=self.port,
                workers=self.workers,
                models=MODEL,
                thresholds_db=self.database_url,
                admin_token=ADMIN_TOKEN,
                drain_delay_s=DRAIN_DELAY_S,
                drain_timeout_s=10,
                state_dir=self.log_dir / "state",
            )
        )
        self._running = stack

    def stop(self) -> None:
        """SIGTERM, and wait until it has exited."""
        if self._running is not None:
            self._running.close()
        self._running = self.server = None

    def kill(self) -> None:
        assert self.server is not None
        kill_tree(self.server.process)
        self.stop()

    def revision(self, client: httpx.Client) -> int:
        """The thresholds revision this server answers with now."""
        return client.get(f"{self.url}/v1/models/{MODEL}", timeout=5).json()["thresholds"]["revision"]


class Balancer:
    """HAProxy, round robin over the servers, health-checking `/readyz`; requests it could not deliver
    (connection refused or reset before an answer) are sent again to another server."""

    def __init__(self, replicas: list[Replica], log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = log_dir / "haproxy.cfg"
        servers = "\n".join(
            f"    server s{r.index} 127.0.0.1:{r.port} check inter {CHECK_INTERVAL_MS} fall 1 rise 2" for r in replicas
        )
        self.config.write_text(
            f"""global
    maxconn 2000
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    option http-keep-alive
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
frontend cameras
    bind 127.0.0.1:{self.port}
    default_backend inspection
backend inspection
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise RuntimeError("haproxy is not on PATH (Debian's haproxy package)")
        log = open(self.config.with_suffix(".log"), "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen([haproxy, "-db", "-f", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"haproxy did not listen on {self.port}: {self.config.with_suffix('.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class Cluster:
    replicas: list[Replica]
    balancer: Balancer
    database_url: str


@contextmanager
def cluster(admin_url: str, servers: int, log_dir: Path, workers: int = 1) -> Iterator[Cluster]:
    """`servers` servers on a fresh database behind HAProxy, every one ready."""
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_database(admin_url))
        replicas = [Replica(i, database_url, log_dir, workers) for i in range(servers)]
        for replica in replicas:
            stack.callback(replica.link.close)
            stack.callback(replica.stop)
        starting = [threading.Thread(target=replica.start) for replica in replicas]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        missing = [r.index for r in replicas if r.server is None]
        if missing:
            raise RuntimeError(f"servers {missing} did not start; see their logs under {log_dir}")
        balancer = Balancer(replicas, log_dir)
        balancer.start()
        stack.callback(balancer.stop)
        wait_until(lambda: _answers(balancer.url), 20, "the balancer answers")
        yield Cluster(replicas, balancer, database_url)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(condition, timeout_s: float, what: str, every_s: float = 0.02) -> float:
    """Seconds until `condition()` held; raises after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(every_s)
    return time.monotonic() - started


# --- cameras ----------------------------------------------------------------------------------------


@dataclass
class Shot:
    sent: float  # time.monotonic()
    status: int | None  # None: no answer (the error says why)
    error: str = ""
    revision: int | None = None


@dataclass
class Cameras:
    """`count` cameras, each sending a frame every 1/`fps` s through `url` on a connection it keeps."""

    url: str
    count: int
    fps: float
    shots: list[Shot] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Cameras:
        frames = line_frames(128, 128)
        for index in range(self.count):
            thread = threading.Thread(target=self._run, args=(index, frames), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def failed(self, since: float = 0.0, until: float = float("inf")) -> list[Shot]:
        return [s for s in list(self.shots) if since <= s.sent <= until and s.status != 200]

    def answered(self, since: float = 0.0) -> int:
        return sum(1 for s in list(self.shots) if s.sent >= since and s.status == 200)

    def _run(self, index: int, frames: list[bytes]) -> None:
        period = 1.0 / self.fps
        next_at = time.monotonic() + index * period / self.count
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += period
                sent = time.monotonic()
                try:
                    response = client.post(
                        f"{self.url}/v1/models/{MODEL}/predict",
                        content=frames[index % len(frames)],
                        headers={"content-type": "image/jpeg"},
                    )
                    ok = response.status_code == 200
                    revision = response.json().get("thresholds_revision") if ok else None
                    self.shots.append(Shot(sent, response.status_code, "" if ok else response.text[:200], revision))
                except httpx.HTTPError as exc:
                    self.shots.append(Shot(sent, None, f"{type(exc).__name__}: {exc}"))


# --- the measurements ------------------------------------------------------------------------------


def change_thresholds(url: str, value: float, expected_revision: int, reason: str) -> int:
    """A thresholds change through the server at `url`; its revision."""
    response = httpx.put(
        f"{url}/v1/models/{MODEL}/thresholds",
        json={
            "thresholds": {"crack": value},
            "author": "replicas",
            "reason": reason,
            "expected_revision": expected_revision,
        },
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["revision"]


def current_revision(url: str) -> int:
    return httpx.get(f"{url}/v1/models/{MODEL}/thresholds", timeout=10).json()["revision"]


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"count": len(ordered), "p50_ms": 1000 * at(0.5), "p99_ms": 1000 * at(0.99), "max_ms": 1000 * ordered[-1]}


def propagation(replicas: list[Replica], changes: int) -> dict[str, object]:
    """`changes` threshold changes, each through the next server: seconds from sending it until each
    server answers with its revision (`from_sending`), and from its answer, the commit acknowledged,
    until then (`from_commit`, 0 for a server that had it already)."""
    from_sending: list[float] = []
    from_commit: list[float] = []
    revision = current_revision(replicas[0].url)
    with httpx.Client() as client:
        for i in range(changes):
            through = replicas[i % len(replicas)]
            sent = time.monotonic()
            revision = change_thresholds(through.url, 0.3 + 0.4 * (i % 2), revision, f"propagation {i}")
            committed = time.monotonic()
            waiting = set(range(len(replicas)))
            while waiting:
                for index in sorted(waiting):
                    if replicas[index].revision(client) >= revision:
                        now = time.monotonic()
                        from_sending.append(now - sent)
                        from_commit.append(0.0 if now - committed < 0.002 else now - committed)
                        waiting.discard(index)
                if waiting and time.monotonic() - sent > 10:
                    raise TimeoutError(f"servers {sorted(waiting)} did not take revision {revision} within 10 s")
    return {"from_sending": quantiles(from_sending), "from_commit": quantiles(from_commit)}


def outage(replicas: list[Replica], cut_s: float, changes: int) -> dict[str, object]:
    """Cut the last server's database link for `cut_s`, change the thresholds `changes` times through the
    others meanwhile, restore it: how long until it serves the newest revision, and its answers meanwhile."""
    cut, others = replicas[-1], replicas[:-1]
    assert cut.server is not None
    frame = line_frames(128, 128)[2]
    answers: list[int] = []
    with httpx.Client(timeout=10) as client:
        before = cut.revision(client)
        cut.link.cut()
        cut_at = time.monotonic()
        revision = current_revision(others[0].url)
        for i in range(changes):
            revision = change_thresholds(others[i % len(others)].url, 0.2 + 0.05 * i, revision, f"outage {i}")
        readiness = history_while_cut = up_while_cut = None
        while time.monotonic() - cut_at < cut_s:
            response = client.post(
                f"{cut.url}/v1/models/{MODEL}/predict", content=frame, headers={"content-type": "image/jpeg"}
            )
            answers.append(response.status_code)
            if readiness is None and time.monotonic() - cut_at > 1.5:
                ready = client.get(f"{cut.url}/readyz")
                readiness = {"status": ready.status_code, **ready.json()}
                history = client.get(f"{cut.url}/v1/models/{MODEL}/thresholds/history")
                history_while_cut = {"status": history.status_code, **history.json()}
                up_while_cut = shared_state_up(client.get(f"{cut.url}/metrics").text)
            time.sleep(0.05)
        held = cut.revision(client)
        cut.link.restore()
        cut_for_s = time.monotonic() - cut_at
        caught_up_s = wait_until(lambda: cut.revision(client) >= revision, 30, "the cut server catches up")
        values = client.get(f"{cut.url}/v1/models/{MODEL}").json()["thresholds"]["values"]
        newest = client.get(f"{others[0].url}/v1/models/{MODEL}/thresholds").json()
    return {
        "cut_s": round(cut_for_s, 2),
        "changes_while_cut": changes,
        "revision_before": before,
        "revision_held_while_cut": held,
        "newest_revision": revision,
        "caught_up_after_restore_s": round(caught_up_s, 3),
        "values_equal_the_database": values == newest["thresholds"],
        "answers_while_cut": len(answers),
        "failed_while_cut": sum(1 for status in answers if status != 200),
        "readiness_while_cut": readiness,
        "history_while_cut": history_while_cut,
        "shared_state_up_while_cut": up_while_cut,
        "shared_state_up_after": shared_state_up(httpx.get(f"{cut.url}/metrics", timeout=10).text),
    }


def shared_state_up(metrics: str) -> float | None:
    """`inspection_shared_state_up` in a server's /metrics."""
    for family in text_string_to_metric_families(metrics):
        if family.name == "inspection_shared_state_up":
            return family.samples[0].value
    return None


def rolling_restart(cluster: Cluster, cameras: Cameras) -> dict[str, object]:
    """Each server in turn: SIGTERM, wait for it to exit, start it, wait until the balancer sends it
    traffic again. The cameras send throughout."""
    started = time.monotonic()
    restarts = []
    for replica in cluster.replicas:
        began = time.monotonic()
        replica.stop()
        stopped = time.monotonic()
        replica.start()
        ready = time.monotonic()
        # Up in the balancer again: `rise` health checks after it is ready.
        time.sleep(3 * CHECK_INTERVAL_MS / 1000)
        restarts.append(
            {"server": replica.index, "stop_s": round(stopped - began, 2), "start_s": round(ready - stopped, 2)}
        )
    return {
        "restarts": restarts,
        "camera_requests": len([s for s in cameras.shots if s.sent >= started]),
        "failed": len(cameras.failed(since=started)),
        "failures": [asdict(s) for s in cameras.failed(since=started)][:10],
    }


def killed_server(cluster: Cluster, cameras: Cameras) -> dict[str, object]:
    """SIGKILL one server under the cameras; then start it again."""
    victim = cluster.replicas[0]
    time.sleep(1.0)
    killed_at = time.monotonic()
    victim.kill()
    time.sleep(2.0)
    after = time.monotonic()
    time.sleep(2.0)
    result = {
        "camera_requests_after_kill": len([s for s in cameras.shots if s.sent >= killed_at]),
        "failed": len(cameras.failed(since=killed_at - 10)),
        "failed_later_than_1s_after_kill": len(cameras.failed(since=killed_at + 1.0)),
        "answered_after_2s": cameras.answered(since=after),
        "failures": [asdict(s) for s in cameras.failed(since=killed_at - 10)][:10],
    }
    victim.start()
    return result


@dataclass
class Probe:
    at: float  # time.monotonic()
    livez: int | None  # None: no answer (connection refused)
    readyz: int | None
    readyz_body: dict | None


def probes_through_restart(replica: Replica, every_s: float = 0.02) -> tuple[list[Probe], float, float]:
    """`/livez` and `/readyz` of one server, asked every `every_s` while it is stopped (SIGTERM) and
    started again; with the moments it exited and was ready again."""
    probes: list[Probe] = []
    stop = threading.Event()

    def ask() -> None:
        with httpx.Client(timeout=1) as client:
            while not stop.is_set():
                at = time.monotonic()
                try:
                    livez = client.get(f"{replica.url}/livez").status_code
                except httpx.HTTPError:
                    livez = None
                try:
                    answer = client.get(f"{replica.url}/readyz")
                    readyz, body = answer.status_code, answer.json()
                except (httpx.HTTPError, ValueError):
                    readyz, body = None, None
                probes.append(Probe(at, livez, readyz, body))
                time.sleep(every_s)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    time.sleep(0.2)
    replica.stop()
    exited = time.monotonic()
    replica.start()
    ready = time.monotonic()
    time.sleep(0.2)
    stop.set()
    asking.join()
    return probes, exited, ready


def database_queries(cluster: Cluster, predictions: int, at_least_s: float = 0.0) -> dict[str, object]:
    """The queries the servers sent the database (round trips, counted on their links) while
    `predictions` frames, and more until `at_least_s` had passed, went through the balancer, one at a
    time."""
    frame = line_frames(128, 128)[2]
    with httpx.Client(timeout=10) as client:
        started, before = time.monotonic(), sum(r.link.round_trips for r in cluster.replicas)
        sent = 0
        while sent < predictions or time.monotonic() - started < at_least_s:
            sent += 1
            response = client.post(
                f"{cluster.balancer.url}/v1/models/{MODEL}/predict",
                content=frame,
                headers={"content-type": "image/jpeg"},
            )
            response.raise_for_status()
        queries, seconds = sum(r.link.round_trips for r in cluster.replicas) - before, time.monotonic() - started
    return {
        "predictions": sent,
        "seconds": round(seconds, 2),
        "servers": len(cluster.replicas),
        "queries": queries,
        "per_prediction": round(queries / sent, 4),
        "per_second": round(queries / seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=os.environ.get("INSPECTION_TEST_POSTGRES_URL"))
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="workers per server")
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--fps", type=float, default=4.0, help="frames per second per camera")
    parser.add_argument("--cut-s", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "replicas.json")
    args = parser.parse_args(argv)
    if not args.postgres:
        parser.error("no PostgreSQL: give --postgres URL or set INSPECTION_TEST_POSTGRES_URL")
    report: dict[str, object] = {
        "servers": args.servers,
        "workers_per_server": args.workers,
        "cameras": args.cameras,
        "fps_per_camera": args.fps,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="replicas-") as folder:
        with cluster(args.postgres, args.servers, Path(folder), args.workers) as running:
            with Cameras(running.balancer.url, args.cameras, args.fps) as cameras:
                print("database queries per prediction ...", file=sys.stderr)
                report["database"] = database_queries(running, 500, at_least_s=15)
                print(f"propagation of {args.changes} changes ...", file=sys.stderr)
                report["propagation"] = propagation(running.replicas, args.changes)
                print("database outage of one server ...", file=sys.stderr)
                report["outage"] = outage(running.replicas, args.cut_s, 5)
                print("rolling restart ...", file=sys.stderr)
                report["rolling_restart"] = rolling_restart(running, cameras)
                print("one server killed ...", file=sys.stderr)
                report["killed_server"] = killed_server(running, cameras)
            report["camera_requests"] = len(cameras.shots)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
