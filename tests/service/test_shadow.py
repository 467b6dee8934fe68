"""Shadow runs on a real server: a candidate identical to the active version agrees on every frame; one
built to disagree (porosity and crack swapped) is reported at exactly the share of frames where that
changes something, class by class, across two workers; one that fails, or is slow, never changes or
delays the active answers; the report, the metrics, the kept frames and promotion."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from export.synthetic import encode_image, generate_weld
from tests.conftest import running_server
from tests.service.lifecycle.graphs import SWAPPED, derive_version, fail_on_real_frames, slow_down, swap_classes
from tests.service.test_lifecycle import AUTH, TOKEN
from tests.service.test_versions import CLASSIFIER

CLASSES = ["no_defect", "porosity", "crack", "undercut"]
DEFECTS = CLASSES[1:]
THRESHOLDS = {"porosity": 0.5, "crack": 0.3, "undercut": 0.5}  # the demo classifier's manifest


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    derive_version(root, 1)
    derive_version(root, 2)  # the same graph
    derive_version(root, 3, swap_classes)
    derive_version(root, 4, fail_on_real_frames)
    derive_version(root, 5, slow_down)
    return root


def frames(count: int) -> list[bytes]:
    """Welds of every kind, in turn."""
    labels = ["no_defect", "crack", "porosity", "undercut"]
    return [encode_image(generate_weld(7_000 + i, 320, 240, label=labels[i % len(labels)]).image) for i in range(count)]


class Client:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=60)

    def predict(self, frame: bytes, **params: str) -> tuple[dict, float]:
        started = time.perf_counter()
        answer = self.http.post(
            f"/v1/models/{CLASSIFIER}/predict", content=frame, headers={"Content-Type": "image/jpeg"}, params=params
        )
        assert answer.status_code == 200, answer.text
        return answer.json(), time.perf_counter() - started

    def change(self, path: str, **body) -> dict:
        revision = self.http.get(f"/v1/models/{CLASSIFIER}/versions").json()["revision"]
        answer = self.http.post(
            f"/v1/models/{CLASSIFIER}{path}",
            json={"author": "a.lindqvist", "reason": "shadow test", "expected_revision": revision, **body},
            headers=AUTH,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    def report(self, compared: int, run: int | None = None) -> dict:
        """The report once it counts `compared` frames (workers save their counts every 0.25 s)."""
        deadline = time.monotonic() + 10
        while True:
            report = self.http.get(f"/v1/models/{CLASSIFIER}/shadow", params={} if run is None else {"run": run})
            assert report.status_code == 200, report.text
            body = report.json()
            if body["compared"] + body["failed"] + body["shed"] >= compared or time.monotonic() > deadline:
                return body
            time.sleep(0.1)


def test_a_candidate_identical_to_the_active_version_agrees_on_every_frame_and_is_promoted(store, tmp_path):
    sent = frames(24)
    with running_server(tmp_path, model_store=store, models=f"{CLASSIFIER}:1", admin_token=TOKEN) as server:
        client = Client(server.url)
        started = client.change("/shadow", version=2, share=1.0)
        assert started["shadow"] == {"version": 2, "share": 1.0, "keep_frames": 0} and started["kind"] == "shadow"
        assert client.http.get(f"/v1/models/{CLASSIFIER}/versions").json()["loaded"] == [1, 2]
        answers = [client.predict(frame)[0] for frame in sent]
        assert {answer["model_version"] for answer in answers} == {1}  # the active version answers
        report = client.report(len(sent))
        assert (report["compared"], report["failed"], report["shed"]) == (24, 0, 0)
        assert (report["candidate"], report["active"], report["run"], report["running"]) == (
            2,
            1,
            started["revision"],
            True,
        )
        assert report["agreement"] == 1.0 and report["decision_agreement"] == 1.0
        decisions = [answer["decision"] for answer in answers]
        assert report["confusion"] == {d: {d: decisions.count(d)} for d in set(decisions)}
        assert set(decisions) == {"accept", "reject"}  # both kinds were compared
        assert report["classes"] == {c: {"decision": 1.0, "label": 1.0, "mean_iou": None} for c in DEFECTS}
        assert report["latency"]["candidate"]["mean_ms"] > 0 and report["kept_frames"] == 0
        metrics = client.http.get("/metrics").text
        assert f'inspection_shadow_frames_total{{candidate="2",model="{CLASSIFIER}",result="agreed"}} 24.0' in metrics
        # Promotion is an activation: the run ends, its report stays.
        promoted = client.change("/versions/activate", version=2)
        assert (promoted["version"], promoted["shadow"]) == (2, None)
        assert client.predict(sent[0])[0]["model_version"] == 2
        final = client.http.get(f"/v1/models/{CLASSIFIER}/shadow", params={"run": started["revision"]}).json()
        assert final["running"] is False and final["compared"] == 24
        assert client.http.get(f"/v1/models/{CLASSIFIER}/shadow").status_code == 404  # no run in force
        time.sleep(0.5)
        assert client.http.get(f"/v1/models/{CLASSIFIER}/versions").json()["loaded"] == [2]  # 1 released


def expected_candidate(answer: dict) -> tuple[str, set[str]]:
    """The swapped candidate's label and defects, from the active answer's scores."""
    scores = [answer["scores"][c] for c in CLASSES]
    swapped = {CLASSES[i]: scores[SWAPPED[i]] for i in range(len(CLASSES))}
    label = max(CLASSES, key=lambda c: swapped[c])
    return label, {c for c in DEFECTS if swapped[c] >= THRESHOLDS[c]}


def test_a_candidate_built_to_disagree_is_reported_at_that_share_class_by_class(store, tmp_path):
    sent = frames(40)
    with running_server(tmp_path, workers=2, model_store=store, models=f"{CLASSIFIER}:1", admin_token=TOKEN) as server:
        client = Client(server.url)
        started = client.change("/shadow", version=3, share=1.0, keep_frames=3)
        assert len(started["workers_switched"]) == 2
        answers = [client.predict(frame)[0] for frame in sent]
        report = client.report(len(sent))
    assert (report["compared"], report["failed"], report["shed"]) == (40, 0, 0)
    # Counted independently, from the active answers and the swap the candidate was built with.
    expected = [(answer, *expected_candidate(answer)) for answer in answers]
    for name in DEFECTS:
        decision = sum((name in a["defects"]) == (name in defects) for a, _, defects in expected) / 40
        label = sum((a["label"] == name) == (label == name) for a, label, _ in expected) / 40
        assert report["classes"][name] == {"decision": decision, "label": label, "mean_iou": None}, name
    agreed = sum(
        all((c in a["defects"]) == (c in d) and (a["label"] == c) == (lab == c) for c in DEFECTS)
        for a, lab, d in expected
    )
    assert report["agreement"] == agreed / 40
    assert 0.2 <= report["agreement"] <= 0.8  # the swap changes some frames, not all
    confusion: dict[str, dict[str, int]] = {}
    for answer, _, defects in expected:
        row = confusion.setdefault(answer["decision"], {})
        candidate = "reject" if defects else "accept"
        row[candidate] = row.get(candidate, 0) + 1
    assert report["confusion"] == confusion
    assert report["kept_frames"] == 3  # the first three disagreeing frames, of both workers


def test_kept_frames_hold_the_image_and_both_answers(store, tmp_path):
    sent = frames(12)
    with running_server(tmp_path, model_store=store, models=f"{CLASSIFIER}:1", admin_token=TOKEN) as server:
        client = Client(server.url)
        client.change("/shadow", version=3, share=1.0, keep_frames=2)
        # The cameras ask for heat maps: the active answers carry them, the candidate makes none.
        answers = [client.predict(frame, heatmap="cam")[0] for frame in sent]
        assert all(answer["heatmap"]["method"] == "cam" for answer in answers)
        assert client.report(len(sent))["failed"] == 0
        listed = client.http.get(f"/v1/models/{CLASSIFIER}/shadow/frames").json()
        assert len(listed["frames"]) == 2 and listed["next_after"] is None
        for kept in listed["frames"]:
            image = client.http.get(f"/v1/models/{CLASSIFIER}/shadow/frames/{kept['id']}")
            assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
            index = sent.index(image.content)  # the very bytes the camera sent
            assert kept["active"] == answers[index]
            label, defects = expected_candidate(answers[index])
            assert (kept["candidate"]["label"], set(kept["candidate"]["defects"])) == (label, defects)
            assert kept["candidate"]["model_version"] == 3 and "heatmap" not in kept["candidate"]
            assert not all(c["decision"] and c["label"] for c in kept["classes"].values())
        assert client.http.get(f"/v1/models/{CLASSIFIER}/shadow/frames/999999").status_code == 404


def test_a_share_takes_that_share_of_the_frames(store, tmp_path):
    sent = frames(40)
    with running_server(tmp_path, model_store=store, models=f"{CLASSIFIER}:1", admin_token=TOKEN) as server:
        client = Client(server.url)
        client.change("/shadow", version=2, share=0.25)
        for frame in sent:
            client.predict(frame)
        report = client.report(10)
    assert report["compared"] + report["shed"] == 10 and report["share"] == 0.25


def test_a_failing_or_slow_candidate_never_changes_or_delays_the_active_answers(store, tmp_path):
    sent = frames(16)
    with running_server(tmp_path, model_store=store, models=f"{CLASSIFIER}:1", admin_token=TOKEN) as server:
        client = Client(server.url)
        alone = [client.predict(frame) for frame in sent]
        client.change("/shadow", version=4, share=1.0)  # the graph fails on every weld frame
        failing = [client.predict(frame) for frame in sent]
        report = client.report(len(sent))
        assert (report["compared"], report["failed"]) == (0, 16) and report["agreement"] is None
        slow_run = client.change("/shadow", version=5, share=1.0)  # about 0.06 s a frame more
        slow = [client.predict(frame) for frame in sent]
        slow_report = client.report(len(sent), run=slow_run["revision"])
    answers = [answer for answer, _ in alone]
    assert [answer for answer, _ in failing] == answers
    assert [{**answer, "model_version": 1} for answer, _ in slow] == answers
    assert slow_report["compared"] + slow_report["shed"] == 16 and slow_report["compared"] >= 1
    candidate_ms = slow_report["latency"]["candidate"]["mean_ms"]
    assert candidate_ms >= 40
    # No answer waited for the candidate: each took less than the candidate's time on a frame.
    assert sorted(seconds for _, seconds in slow)[-2] * 1000 < candidate_ms
