"""Model versions go live at run time on a real server of two workers: activated, rolled back, pinned,
with cameras posting all along; versions that cannot go live are refused while the active one serves."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from export.samples import write_sample_set
from export.synthetic import encode_image, generate_weld
from service.lifecycle.cli import main as versions_cli
from tests.conftest import postgres_url, running_server
from tests.service.api.test_thresholds import zipped
from tests.service.test_versions import CLASSIFIER, add_version

TOKEN = "lifecycle-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    for version in (1, 2, 3):
        add_version(root, version)
    broken = root / CLASSIFIER / "3" / "model.onnx"
    broken.write_bytes(broken.read_bytes()[:5000])  # a graph cut short: it cannot load
    add_version(root, 4, rename={"crack": "fissure"})  # classes the thresholds cannot follow
    return root


class Cameras:
    """`count` cameras posting the same frame, each on its own keep-alive connection: back to back, or
    at `rate` frames per second each, on time whatever the answers (as a line camera sends them)."""

    def __init__(self, url: str, frame: bytes, count: int = 2, rate: float | None = None) -> None:
        self.answers: list[dict] = []
        self.timed: list[tuple[float, float]] = []  # (sent, latency s) of each answer, from when it was due
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url, frame, i, count, rate)) for i in range(count)]

    def _run(self, url: str, frame: bytes, index: int, count: int, rate: float | None) -> None:
        period = 0.0 if rate is None else 1.0 / rate
        due = time.monotonic() + index * period / count
        with httpx.Client(base_url=url, timeout=30) as client:
            while not self._stop.is_set():
                time.sleep(max(0.0, due - time.monotonic()))
                sent = max(due, time.monotonic()) if rate is None else due
                response = client.post(
                    f"/v1/models/{CLASSIFIER}/predict", content=frame, headers={"Content-Type": "image/jpeg"}
                )
                if response.status_code == 200:
                    self.answers.append(response.json())
                    self.timed.append((sent, time.monotonic() - sent))
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                due += period

    def p99_ms(self, start: float, end: float) -> float:
        """The p99 of the answers to frames sent from `start` to `end` (time.monotonic)."""
        return 1000 * float(np.percentile([latency for sent, latency in self.timed if start <= sent < end], 99))

    def __enter__(self) -> Cameras:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_versions_switch_on_every_worker_under_load_and_broken_ones_are_refused(store, tmp_path):
    frame = encode_image(generate_weld(4_200, 640, 480, label="crack").image)
    with running_server(tmp_path, workers=2, admin_token=TOKEN, model_store=store, models=f"{CLASSIFIER}:1") as server:
        url = f"{server.url}/v1/models/{CLASSIFIER}/versions"

        def answered_versions(count: int = 12) -> set[int]:
            """The versions that answer `count` requests, each on a new connection (so both workers answer)."""
            return {
                httpx.post(
                    f"{server.url}/v1/models/{CLASSIFIER}/predict",
                    content=frame,
                    headers={"Content-Type": "image/jpeg"},
                ).json()["model_version"]
                for _ in range(count)
            }

        def change(route: str, **body) -> httpx.Response:
            revision = httpx.get(url).json()["revision"]
            return httpx.post(
                f"{url}/{route}",
                json={"author": "a.lindqvist", "reason": f"{route} in a test", "expected_revision": revision, **body},
                headers=AUTH,
                timeout=60,
            )

        state = httpx.get(url).json()
        assert (state["active"], state["loaded"], state["in_store"]) == (1, [1], [1, 2, 3, 4])
        with Cameras(server.url, frame) as cameras:
            time.sleep(0.5)
            for cycle in range(5):
                started = time.monotonic()
                activated = change("activate", version=2)
                assert activated.status_code == 200, activated.text
                body = activated.json()
                assert body["kind"] == "activate" and body["version"] == 2
                assert len(body["workers_switched"]) == 2 and body["all_switched_at"] is not None
                assert time.monotonic() - started < 1.0 or cycle == 0  # the first pays for loading version 2
                assert answered_versions() == {2}
                rolled = change("rollback")
                assert rolled.status_code == 200, rolled.text
                assert rolled.json()["version"] == 1 and rolled.json()["all_switched_at"] is not None
                assert answered_versions() == {1}
            for version, says in ((3, "failed to load"), (4, "thresholds would not follow")):
                refused = change("activate", version=version)
                assert refused.status_code == 422, refused.text
                assert (
                    refused.json()["error"]["code"] == "version_refused" and says in refused.json()["error"]["message"]
                )
                assert answered_versions() == {1}
            time.sleep(0.3)
        assert cameras.failures == []
        assert len(cameras.answers) > 20
        # Same graph and thresholds in both versions: every answer is the same but for the version it names
        # and the thresholds revision (the values carried over to each version are new revisions).
        moving = ("model_version", "thresholds_revision")
        reference = {key: value for key, value in cameras.answers[0].items() if key not in moving}
        assert {a["model_version"] for a in cameras.answers} == {1, 2}
        assert all({k: v for k, v in a.items() if k not in moving} == reference for a in cameras.answers)

        history = httpx.get(f"{url}/history").json()["revisions"]
        assert [(r["kind"], r["version"]) for r in history[:2]] == [("rollback", 1), ("activate", 2)]
        assert history[-1]["kind"] == "initial" and len(history) == 11
        # The thresholds followed each version, recorded as revisions of their own.
        thresholds = httpx.get(f"{server.url}/v1/models/{CLASSIFIER}/thresholds/history").json()["revisions"]
        assert [(r["kind"], r["model_version"]) for r in thresholds[:2]] == [("carried", 1), ("carried", 2)]
        assert thresholds[0]["reason"] == "version 1 rolled back to: rollback in a test"
        assert len({json.dumps(r["thresholds"], sort_keys=True) for r in thresholds}) == 1  # the values never moved
        pinned = change("pin", pinned=True)
        assert pinned.status_code == 200 and pinned.json()["pinned"] is True
        assert httpx.get(url).json()["pinned"] is True
        stale = httpx.post(
            f"{url}/activate",
            json={"version": 2, "author": "b", "reason": "stale", "expected_revision": 1},
            headers=AUTH,
        )
        assert stale.status_code == 409 and stale.json()["error"]["code"] == "conflict"
        unauthorised = httpx.post(
            f"{url}/activate", json={"version": 2, "author": "b", "reason": "r", "expected_revision": 12}
        )
        assert unauthorised.status_code == 401
        metrics = httpx.get(f"{server.url}/metrics").text
    assert f'inspection_active_version{{model="{CLASSIFIER}"}} 1.0' in metrics


def test_a_new_export_goes_live_by_itself_when_asked_unless_the_model_is_pinned(tmp_path, capsys):
    store = tmp_path / "store"
    add_version(store, 1)
    frame = encode_image(generate_weld(4_300, 640, 480, label="crack").image)

    def publish(version: int) -> None:
        """A version written whole, then moved into the store at once, as an export writes one."""
        staging = tmp_path / "staging"
        add_version(staging, version)
        (staging / CLASSIFIER / str(version)).rename(store / CLASSIFIER / str(version))

    def served_version() -> int:
        answer = httpx.post(
            f"{server.url}/v1/models/{CLASSIFIER}/predict", content=frame, headers={"Content-Type": "image/jpeg"}
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["model_version"]

    def wait_for(version: int, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if {served_version() for _ in range(6)} == {version}:
                return True
            time.sleep(0.1)
        return False

    with running_server(
        tmp_path / "logs", workers=2, admin_token=TOKEN, model_store=store, activate_new_versions=True
    ) as server:
        url = f"{server.url}/v1/models/{CLASSIFIER}/versions"
        assert served_version() == 1
        publish(2)
        assert wait_for(2, within_s=10)
        newest = httpx.get(f"{url}/history").json()["revisions"][0]
        assert (newest["kind"], newest["version"], newest["author"]) == ("activate", 2, "model store")
        revision = httpx.get(url).json()["revision"]
        pinned = httpx.post(
            f"{url}/pin",
            json={"pinned": True, "author": "a.lindqvist", "reason": "line 3 audit", "expected_revision": revision},
            headers=AUTH,
        )
        assert pinned.status_code == 200, pinned.text
        publish(3)
        assert not wait_for(3, within_s=2)
        assert httpx.get(url).json()["active"] == 2 and httpx.get(url).json()["in_store"] == [1, 2, 3]

        # The same from the command line: pinned, a version activated by hand all the same, and a refusal.
        def cli(*args: str) -> int:
            return versions_cli(["--url", server.url, *args])

        assert cli("status", CLASSIFIER) == 0
        assert "version 2 active (revision 3, pinned); loaded [2]; in the store [1, 2, 3]" in capsys.readouterr().out
        who = ("--author", "a.lindqvist", "--reason", "by hand", "--token", TOKEN)
        assert cli("activate", CLASSIFIER, "3", *who) == 0
        shown = capsys.readouterr().out
        assert "revision 4 activate: version 3, pinned by a.lindqvist" in shown and "2 worker(s) switched" in shown
        assert cli("activate", CLASSIFIER, "3", *who) == 1
        assert "422, invalid_parameters: version 3 of weld-classifier is already active" in capsys.readouterr().err


def test_a_sweep_under_way_when_its_version_is_replaced_finishes_on_it_and_then_releases_it(store, tmp_path):
    archive = zipped(
        write_sample_set(tmp_path / "samples", "classification", count=12, seed=4_500, width=320, height=240)
    )
    half_sent, activated = threading.Event(), threading.Event()

    def slow_upload() -> Iterator[bytes]:  # half the samples, then the rest once version 2 is active
        yield archive[: len(archive) // 2]
        half_sent.set()
        activated.wait(30)
        yield archive[len(archive) // 2 :]

    with running_server(tmp_path / "logs", admin_token=TOKEN, model_store=store, models=f"{CLASSIFIER}:1") as server:
        url = f"{server.url}/v1/models/{CLASSIFIER}"
        swept: list[httpx.Response] = []
        sweep = threading.Thread(
            target=lambda: swept.append(
                httpx.post(
                    f"{url}/thresholds/sweep",
                    content=slow_upload(),
                    headers={"Content-Type": "application/zip"},
                    timeout=60,
                )
            )
        )
        sweep.start()
        assert half_sent.wait(30)
        revision = httpx.get(f"{url}/versions").json()["revision"]
        switch = {"version": 2, "author": "qa", "reason": "during a sweep", "expected_revision": revision}
        switched = httpx.post(f"{url}/versions/activate", json=switch, headers=AUTH, timeout=60)
        assert switched.status_code == 200, switched.text
        assert httpx.get(f"{url}/versions").json()["loaded"] == [2]
        assert f"released {CLASSIFIER}:1" not in server.log()  # the sweep holds it
        activated.set()
        sweep.join()
        (report,) = swept
        assert report.status_code == 200, report.text
        assert (report.json()["model_version"], report.json()["images"]) == (1, 12)
        deadline = time.monotonic() + 10
        while f"released {CLASSIFIER}:1" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"released {CLASSIFIER}:1" in server.log()


def test_two_servers_on_one_postgresql_follow_each_others_changes_within_a_second(store, tmp_path):
    url = postgres_url()
    frame = encode_image(generate_weld(4_400, 640, 480, label="crack").image)
    settings = {"admin_token": TOKEN, "model_store": store, "models": f"{CLASSIFIER}:1", "thresholds_db": url}
    with running_server(tmp_path / "a", **settings) as a, running_server(tmp_path / "b", **settings) as b:

        def version_of(server) -> int:
            return httpx.post(
                f"{server.url}/v1/models/{CLASSIFIER}/predict", content=frame, headers={"Content-Type": "image/jpeg"}
            ).json()["model_version"]

        def change(server, route: str, **body) -> httpx.Response:
            versions = f"{server.url}/v1/models/{CLASSIFIER}/versions"
            revision = httpx.get(versions).json()["revision"]
            return httpx.post(
                f"{versions}/{route}",
                json={"author": "a.lindqvist", "reason": "two servers", "expected_revision": revision, **body},
                headers=AUTH,
                timeout=60,
            )

        def followed(server, version: int) -> float:
            """Seconds until `server` answers with `version` (inf after 5 s)."""
            started = time.monotonic()
            while time.monotonic() - started < 5:
                if version_of(server) == version:
                    return time.monotonic() - started
                time.sleep(0.02)
            return float("inf")

        assert version_of(a) == version_of(b) == 1
        assert change(a, "activate", version=2).status_code == 200
        assert version_of(a) == 2
        assert followed(b, 2) < 2.0  # b loads version 2 first, then switches
        assert change(b, "rollback").status_code == 200
        assert followed(a, 1) < 1.0  # version 1 is loaded already: a switch
