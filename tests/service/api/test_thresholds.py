"""The thresholds HTTP API end to end: real `bentoml serve` processes, real SQLite (and PostgreSQL
where INSPECTION_TEST_POSTGRES_URL points at one), generated weld images."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from export.samples import write_sample_set
from export.synthetic import encode_image, generate_weld
from service.api.schemas import ErrorResponse
from service.api.thresholds import ThresholdHistory, ThresholdRevisionView
from service.tasks import ANSWERS
from service.thresholds import tune
from service.thresholds.report import SweepReport
from tests.conftest import RunningServer, kill_tree, postgres_url, running_server

CLASSIFIER, DETECTOR, SEGMENTER = "weld-classifier", "weld-detector", "weld-segmenter"
TOKEN = "qa-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Two workers on one fresh SQLite state directory, every demo model, threshold changes enabled."""
    folder = tmp_path_factory.mktemp("thresholds-api")
    with running_server(folder, workers=2, admin_token=TOKEN, state_dir=folder / "state") as s:
        yield s


@pytest.fixture(scope="module")
def crack_jpeg() -> bytes:
    return encode_image(generate_weld(81_001, 640, 480, label="crack").image)


def thresholds_url(server: RunningServer, model: str = CLASSIFIER, tail: str = "") -> str:
    return f"{server.url}/v1/models/{model}/thresholds{tail}"


def read(server: RunningServer, model: str = CLASSIFIER) -> dict:
    response = httpx.get(thresholds_url(server, model), timeout=10)
    assert response.status_code == 200, response.text
    return ThresholdRevisionView.model_validate(response.json()).model_dump(mode="json")


def change(server: RunningServer, body: dict, model: str = CLASSIFIER, headers: dict | None = None) -> httpx.Response:
    return httpx.put(thresholds_url(server, model), json=body, headers=AUTH if headers is None else headers, timeout=10)


def predict(server: RunningServer, data: bytes, model: str = CLASSIFIER) -> dict:
    response = httpx.post(
        f"{server.url}/v1/models/{model}/predict", content=data, headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return ANSWERS.validate_python(response.json()).model_dump()


def error_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return ErrorResponse.model_validate(response.json()).error.code


def metric(server: RunningServer, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def all_revisions(server: RunningServer, model: str = CLASSIFIER) -> list[dict]:
    """Every revision, newest first, following the history's pages."""
    revisions, before = [], None
    while True:
        params = {"limit": 50, **({"before": before} if before else {})}
        page = ThresholdHistory.model_validate(
            httpx.get(thresholds_url(server, model, "/history"), params=params).json()
        )
        revisions += [r.model_dump(mode="json") for r in page.revisions]
        if page.next_before is None:
            return revisions
        before = page.next_before


# --- reading and writing ----------------------------------------------------------------------


def test_a_fresh_store_answers_the_manifest_defaults_as_revision_one(server, crack_jpeg):
    manifest = httpx.get(f"{server.url}/v1/models/{SEGMENTER}").json()["manifest"]
    first = read(server, SEGMENTER)
    assert (first["revision"], first["kind"], first["replaces"]) == (1, "initial", None)
    assert first["thresholds"] == manifest["thresholds"] and first["nms_iou"] is None
    assert first["author"] == "model store" and first["reason"] == f"defaults of {SEGMENTER}:{manifest['version']}"
    assert (
        read(server, DETECTOR)["nms_iou"]
        == httpx.get(f"{server.url}/v1/models/{DETECTOR}").json()["manifest"]["nms_iou"]
    )


def test_every_worker_uses_a_new_revision_on_its_next_request(server, crack_jpeg):
    before = read(server)
    with ThreadPoolExecutor(8) as pool:  # both workers answer and cache the current revision
        assert {p["thresholds_revision"] for p in pool.map(lambda _: predict(server, crack_jpeg), range(24))} == {
            before["revision"]
        }
        response = change(
            server,
            {
                "thresholds": {"crack": 1.0},
                "author": "qa",
                "reason": "two workers",
                "expected_revision": before["revision"],
            },
        )
        assert response.status_code == 200, response.text
        new = response.json()["revision"]
        answers = list(pool.map(lambda _: predict(server, crack_jpeg), range(48)))
    assert new == before["revision"] + 1
    assert {a["thresholds_revision"] for a in answers} == {new}
    assert {"crack" in a["defects"] for a in answers} == {answers[0]["scores"]["crack"] >= 1.0}
    assert metric(server, "inspection_thresholds_revision", model=CLASSIFIER) == new
    assert metric(server, "inspection_threshold_changes_total", model=CLASSIFIER, kind="update") >= 1


def test_concurrent_writers_on_the_same_revision_exactly_one_wins_the_others_get_409(server):
    base = read(server)["revision"]
    start = threading.Barrier(6)

    def write(index: int) -> httpx.Response:
        start.wait()
        body = {
            "thresholds": {"porosity": index / 10},
            "author": f"qa-{index}",
            "reason": "race",
            "expected_revision": base,
        }
        return change(server, body)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(write, range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409, 409, 409, 409, 409]
    winner = next(r.json() for r in responses if r.status_code == 200)
    loser = next(r.json() for r in responses if r.status_code == 409)
    assert loser["error"]["code"] == "conflict"
    assert f"at revision {base + 1} (by {winner['author']}: race), not {base}" in loser["error"]["message"]
    assert read(server) == winner
    assert [r["revision"] for r in all_revisions(server)][:2] == [base + 1, base]


def test_a_stale_expected_revision_answers_409_naming_the_current_one_and_changes_nothing(server):
    current = read(server)
    response = change(
        server,
        {
            "thresholds": {"crack": 0.11},
            "author": "qa",
            "reason": "stale",
            "expected_revision": current["revision"] - 1,
        },
    )
    assert error_code(response, 409) == "conflict"
    assert f"send expected_revision {current['revision']}" in response.json()["error"]["message"]
    assert read(server) == current


def test_rollback_brings_back_earlier_values_and_history_records_who_and_why(server):
    base = read(server)
    changed = change(
        server,
        {"thresholds": {"undercut": 0.05}, "author": "ann", "reason": "try", "expected_revision": base["revision"]},
    ).json()
    response = httpx.post(
        thresholds_url(server, tail="/rollback"),
        json={
            "to_revision": base["revision"],
            "author": "bob",
            "reason": "too many alarms",
            "expected_revision": changed["revision"],
        },
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    rolled = response.json()
    assert rolled["thresholds"] == base["thresholds"]
    assert (rolled["revision"], rolled["kind"], rolled["replaces"], rolled["restores"]) == (
        changed["revision"] + 1,
        "rollback",
        changed["revision"],
        base["revision"],
    )
    newest = all_revisions(server)[:3]
    assert [(r["revision"], r["kind"], r["author"], r["reason"]) for r in newest] == [
        (rolled["revision"], "rollback", "bob", "too many alarms"),
        (changed["revision"], "update", "ann", "try"),
        (base["revision"], base["kind"], base["author"], base["reason"]),
    ]


def test_history_is_newest_first_in_pages(server):
    everything = all_revisions(server)
    numbers = [r["revision"] for r in everything]
    assert numbers == list(range(len(numbers), 0, -1))
    first = httpx.get(thresholds_url(server, tail="/history"), params={"limit": 2}).json()
    assert [r["revision"] for r in first["revisions"]] == numbers[:2] and first["next_before"] == numbers[1]
    second = httpx.get(
        thresholds_url(server, tail="/history"), params={"limit": 2, "before": first["next_before"]}
    ).json()
    assert [r["revision"] for r in second["revisions"]] == numbers[2:4]


def test_a_missing_or_wrong_token_answers_401_and_changes_nothing(server):
    current = read(server)
    body = {"thresholds": {"crack": 0.3}, "author": "eve", "reason": "x", "expected_revision": current["revision"]}
    assert error_code(change(server, body, headers={}), 401) == "unauthorized"
    assert error_code(change(server, body, headers={"Authorization": "Bearer not-the-token"}), 401) == "unauthorized"
    assert error_code(change(server, body, headers={"Authorization": f"Basic {TOKEN}"}), 401) == "unauthorized"
    rollback = {"to_revision": 1, "author": "eve", "reason": "x", "expected_revision": current["revision"]}
    assert error_code(httpx.post(thresholds_url(server, tail="/rollback"), json=rollback), 401) == "unauthorized"
    assert read(server) == current


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"thresholds": {"scratch": 0.3}}, "unknown defect classes ['scratch']"),
        ({"thresholds": {"crack": 1.5}}, "body.thresholds.crack: Input should be less than or equal to 1"),
        ({"thresholds": {"crack": -0.5}}, "greater than or equal to 0"),
        ({"nms_iou": 0.5}, "nms_iou applies to detection models only"),
        ({"thresholds": {"crack": 0.3}, "author": ""}, "body.author: String should have at least 1 character"),
        ({"thresholds": {"crack": 0.3}, "expected_revision": None}, "body.expected_revision"),
        ({"thresholds": {"crack": 0.3}, "colour": "red"}, "body.colour: Extra inputs are not permitted"),
        ({"thresholds": {"crack": "0.3"}}, "body.thresholds.crack: Input should be a valid number"),
        ({"thresholds": {"crack": True}}, "body.thresholds.crack: Input should be a valid number"),
        (
            {"thresholds": {"crack": 0.3}, "expected_revision": "1"},
            "body.expected_revision: Input should be a valid integer",
        ),
        (
            {"thresholds": {"crack": 0.3}, "expected_revision": 2**70},
            "body.expected_revision: Input should be less than",
        ),
        ({"thresholds": {"crack": 0.3}, "reason": "lot\u00002291"}, "reason must not contain a NUL character"),
        ({"thresholds": {"crack": 0.3}, "author": "qa\u0000"}, "author must not contain a NUL character"),
    ],
)
def test_bad_changes_answer_422_and_change_nothing(server, body, message):
    current = read(server)
    full = {"author": "qa", "reason": "r", "expected_revision": current["revision"], **body}
    response = change(server, {k: v for k, v in full.items() if v is not None})
    assert error_code(response, 422) == "invalid_parameters"
    assert message in response.json()["error"]["message"]
    assert read(server) == current


def test_a_threshold_of_minus_zero_is_stored_as_zero(server):
    current = read(server)
    body = {"thresholds": {"porosity": -0.0}, "author": "qa", "reason": "r", "expected_revision": current["revision"]}
    response = change(server, body)
    assert response.status_code == 200, response.text
    assert '"porosity":0.0' in httpx.get(thresholds_url(server)).text.replace(" ", "")
    restore = {
        "thresholds": {"porosity": current["thresholds"]["porosity"]},
        "author": "qa",
        "reason": "r",
        "expected_revision": response.json()["revision"],
    }
    assert change(server, restore).status_code == 200


def test_a_history_page_before_a_revision_past_64_bits_answers_422(server):
    response = httpx.get(thresholds_url(server, tail="/history"), params={"before": "9" * 23})
    assert error_code(response, 422) == "invalid_parameters"


def test_thresholds_of_an_unknown_model_answer_404(server):
    assert error_code(httpx.get(thresholds_url(server, "weld-nothing")), 404) == "unknown_model"
    body = {"thresholds": {"crack": 0.3}, "author": "qa", "reason": "r", "expected_revision": 1}
    assert error_code(change(server, body, model="weld-nothing"), 404) == "unknown_model"


def test_writes_without_a_configured_token_answer_403_saying_how_to_set_one(tmp_path: Path):
    with running_server(tmp_path, models=CLASSIFIER, state_dir=tmp_path / "state") as readonly:
        body = {"thresholds": {"crack": 0.3}, "author": "qa", "reason": "r", "expected_revision": 1}
        response = change(readonly, body, headers={"Authorization": "Bearer anything"})
        assert error_code(response, 403) == "forbidden"
        assert "set INSPECTION_ADMIN_TOKEN" in response.json()["error"]["message"]
        assert read(readonly)["revision"] == 1


# --- durability ----------------------------------------------------------------------------------


def kill_service(server: RunningServer) -> None:
    """SIGKILL the server and both its workers, mid-flight."""
    assert len(psutil.Process(server.process.pid).children(recursive=True)) >= 2  # two workers
    kill_tree(server.process)


def test_a_burst_of_writes_killed_midway_loses_no_acknowledged_revision(tmp_path: Path, crack_jpeg):
    state = tmp_path / "state"
    acknowledged: dict[int, dict] = {}
    unexpected: list[str] = []
    with running_server(tmp_path, workers=2, models=CLASSIFIER, admin_token=TOKEN, state_dir=state) as doomed:
        stop = threading.Event()

        def writer(index: int) -> None:
            with httpx.Client(timeout=10) as client:
                step = 0
                while not stop.is_set():
                    step += 1
                    try:
                        base = client.get(thresholds_url(doomed)).json()["revision"]
                        value = round((index * 1000 + step) % 997 / 997, 4)
                        body = {
                            "thresholds": {"crack": value},
                            "author": f"writer-{index}",
                            "reason": f"burst {step}",
                            "expected_revision": base,
                        }
                        response = client.put(thresholds_url(doomed), json=body, headers=AUTH)
                    except (httpx.HTTPError, ValueError):
                        return  # the server is gone
                    if response.status_code == 200:
                        acknowledged[response.json()["revision"]] = response.json()
                    elif response.status_code != 409:
                        unexpected.append(response.text)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 25 and time.monotonic() < deadline:
            time.sleep(0.01)
        kill_service(doomed)  # mid-burst
        stop.set()
        for thread in threads:
            thread.join()
    assert len(acknowledged) >= 25 and not unexpected

    with running_server(tmp_path, workers=1, models=CLASSIFIER, state_dir=state) as restarted:
        revisions = {r["revision"]: r for r in all_revisions(restarted)}
        newest = max(revisions)
        assert sorted(revisions) == list(range(1, newest + 1))  # contiguous: nothing half-written or skipped
        for number, body in acknowledged.items():
            assert revisions[number] == body
        # A write can commit just before the kill and never be acknowledged: at most one per writer.
        assert newest - max(acknowledged) <= 3
        for number, revision in revisions.items():
            assert set(revision["thresholds"]) == {"porosity", "crack", "undercut"}
            assert revision["replaces"] == (None if number == 1 else number - 1)
        assert predict(restarted, crack_jpeg)["thresholds_revision"] == newest
        assert read(restarted) == revisions[newest]


# --- several replicas on PostgreSQL ------------------------------------------------------------


def test_two_replicas_on_postgresql_use_each_others_writes(tmp_path: Path, crack_jpeg):
    url = postgres_url()
    settings = {"workers": 1, "models": CLASSIFIER, "admin_token": TOKEN, "thresholds_db": url}
    with running_server(tmp_path, **settings) as first, running_server(tmp_path, **settings) as second:
        base = read(second)
        body = {
            "thresholds": {"crack": 0.42},
            "author": "qa",
            "reason": "replicas",
            "expected_revision": base["revision"],
        }
        written = change(first, body).json()
        assert written["revision"] == base["revision"] + 1
        assert predict(second, crack_jpeg)["thresholds_revision"] == written["revision"]
        assert read(second) == written
        assert error_code(change(second, body), 409) == "conflict"
        # PostgreSQL cannot store a NUL: refused as on SQLite, naming the field, not a 500.
        nul = {**body, "reason": "lot\u00002291", "expected_revision": written["revision"]}
        assert error_code(change(second, nul), 422) == "invalid_parameters"
        assert "reason must not contain a NUL" in change(second, nul).json()["error"]["message"]


# --- tuning from labelled samples -------------------------------------------------------------


def zipped(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def sweep(server: RunningServer, model: str, archive: bytes, **params) -> dict:
    response = httpx.post(
        thresholds_url(server, model, "/sweep"),
        content=archive,
        params=params,
        headers={"Content-Type": "application/zip"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return SweepReport.model_validate(response.json()).model_dump(mode="json")


def test_the_sweep_endpoint_and_the_cli_agree_and_applying_the_proposal_changes_predictions(server, tmp_path, capsys):
    samples = tmp_path / "samples"
    write_sample_set(samples, "classification", count=40, seed=30_000, width=320, height=240)
    from_endpoint = sweep(server, CLASSIFIER, zipped(samples), targets="crack:0.99")
    before = read(server)
    assert from_endpoint["images"] == 40 and from_endpoint["thresholds_revision"] == before["revision"]
    crack = from_endpoint["classes"]["crack"]
    assert crack["positives"] == len(list((samples / "crack").iterdir()))
    assert crack["proposed"]["basis"] == "target_recall" and crack["proposed"]["target_met"] is True
    assert crack["proposed"]["recall"] == 1.0 and crack["proposed"]["fn"] == 0
    assert sum(map(sum, from_endpoint["confusion"]["matrix"])) == 40

    plot, report = tmp_path / "pr.png", tmp_path / "report.json"
    argv = ["--url", server.url, "--model", CLASSIFIER, "--samples", str(samples), "--target", "crack=0.99"]
    argv += [
        "--plot",
        str(plot),
        "--json",
        str(report),
        "--apply",
        "--token",
        TOKEN,
        "--author",
        "qa",
        "--reason",
        "tuned",
    ]
    assert tune.main(argv) == 0
    out = capsys.readouterr()
    assert "40/40 images" in out.err and "recall >= 0.99" in out.out
    from_cli = SweepReport.model_validate_json(report.read_text()).model_dump(mode="json")
    assert from_cli == from_endpoint
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    applied = read(server)
    assert (applied["revision"], applied["replaces"], applied["author"]) == (
        before["revision"] + 1,
        before["revision"],
        "qa",
    )
    assert applied["thresholds"] == from_endpoint["proposal"]["thresholds"]
    crack_image = next((samples / "crack").iterdir()).read_bytes()
    answer = predict(server, crack_image)
    assert answer["thresholds_revision"] == applied["revision"] and "crack" in answer["defects"]


@pytest.mark.parametrize("model,task", [(DETECTOR, "detection"), (SEGMENTER, "segmentation")])
def test_a_sweep_counts_every_labelled_positive_of_detection_and_segmentation_samples(server, tmp_path, model, task):
    samples = tmp_path / "samples"
    write_sample_set(samples, task, count=16, seed=31_000, width=320, height=240)
    report = sweep(server, model, zipped(samples), step=0.05)
    assert len(report["classes"]["crack"]["curve"]["thresholds"]) == 21
    if task == "detection":  # a positive is a labelled box
        labels = json.loads((samples / "labels.json").read_text())
        expected = {
            name: sum(b["class_name"] == name for boxes in labels.values() for b in boxes) for name in report["classes"]
        }
    else:  # a positive is an image whose mask holds the class
        classes = httpx.get(f"{server.url}/v1/models/{model}").json()["classes"]
        expected = {name: 0 for name in report["classes"]}
        for path in (samples / "masks").iterdir():
            for index in np.unique(np.asarray(Image.open(path))):
                if classes[index] in expected:
                    expected[classes[index]] += 1
    for name, figures in report["classes"].items():
        assert figures["positives"] == expected[name]
        curve = figures["curve"]
        assert {tp + fn for tp, fn in zip(curve["tp"], curve["fn"])} == {expected[name]}
        assert curve["tp"] == sorted(curve["tp"], reverse=True)  # raising a threshold never finds more


def test_a_sweep_lists_each_image_with_its_labels_and_its_answer_when_asked(server, tmp_path):
    samples = write_sample_set(tmp_path / "samples", "detection", count=6, seed=30_500, width=320, height=240)
    archive = zipped(samples)
    assert sweep(server, DETECTOR, archive)["samples"] is None  # not unless asked
    report = sweep(server, DETECTOR, archive, samples="true", step=0.05)
    listed = report["samples"]
    assert [s["name"] for s in listed] == sorted(
        p.relative_to(samples).as_posix() for p in (samples / "images").iterdir()
    )
    # Every labelled box, and the answer at threshold 0: the counts at any threshold follow from them.
    assert sum(len(s["truth"]["boxes"]) for s in listed) == sum(c["positives"] for c in report["classes"].values())
    for sample in listed:
        assert sample["answer"]["task"] == "detection" and sample["answer"]["image"] == {"width": 320, "height": 240}
        assert {b["class_name"] for b in sample["truth"]["boxes"]} == set(sample["truth"]["present"])
    at = 0.5
    crack = report["classes"]["crack"]["curve"]
    flagged = sum(
        1 for s in listed for d in s["answer"]["detections"] if d["class_name"] == "crack" and d["confidence"] >= at
    )
    i = crack["thresholds"].index(at)
    assert flagged == crack["tp"][i] + crack["fp"][i]


def test_a_sweep_body_that_is_not_a_zip_is_refused(server):
    response = httpx.post(
        thresholds_url(server, tail="/sweep"), content=b"not a zip", headers={"Content-Type": "application/zip"}
    )
    assert error_code(response, 400) == "malformed_request"
    response = httpx.post(
        thresholds_url(server, tail="/sweep"), content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert error_code(response, 415) == "unsupported_media_type"


def test_review_thresholds_are_revisions_answers_say_review_and_rollback_brings_the_band_back(server, crack_jpeg):
    plain = httpx.post(
        f"{server.url}/v1/models/{CLASSIFIER}/predict", content=crack_jpeg, headers={"Content-Type": "image/jpeg"}
    ).json()
    assert "review" not in plain  # no band yet: the answer cameras have always had
    score = plain["scores"]["crack"]
    base = read(server)
    audit = {"author": "qa", "reason": "doubtful cracks to a person"}
    # A band whose top lies above this frame's crack score, and whose bottom below it: review.
    reject, low = min(1.0, round(score + 0.001, 6)), round(score * 0.5, 6)
    refused = change(
        server,
        {"review_thresholds": {"crack": min(1.0, reject + 0.01)}, **audit, "expected_revision": base["revision"]},
    )
    assert error_code(refused, 422) == "invalid_parameters" and "above its reject threshold" in refused.text
    assert error_code(
        change(server, {"review_thresholds": {"spatter": 0.1}, **audit, "expected_revision": base["revision"]}), 422
    )
    written = change(
        server,
        {
            "thresholds": {"crack": reject},
            "review_thresholds": {"crack": low},
            **audit,
            "expected_revision": base["revision"],
        },
    )
    assert written.status_code == 200, written.text
    banded = written.json()
    assert banded["review_thresholds"] == {"crack": low} and banded["thresholds"]["crack"] == reject
    answer = httpx.post(
        f"{server.url}/v1/models/{CLASSIFIER}/predict", content=crack_jpeg, headers={"Content-Type": "image/jpeg"}
    ).json()
    assert (answer["decision"], answer["defects"], answer["review"]) == ("review", [], ["crack"])
    assert answer["thresholds_revision"] == banded["revision"]
    assert (metric(server, "inspection_reviews_total", model=CLASSIFIER, class_name="crack") or 0) >= 1
    # A request's own band: above the score, nothing to review.
    above = httpx.post(
        f"{server.url}/v1/models/{CLASSIFIER}/predict",
        params={"review_thresholds": f"crack:{reject}"},
        content=crack_jpeg,
        headers={"Content-Type": "image/jpeg"},
    ).json()
    assert (above["decision"], above["review"]) == ("accept", [])
    # A stale change is refused as any other; removing the band is a change like the others.
    assert (
        error_code(
            change(server, {"review_thresholds": {"crack": None}, **audit, "expected_revision": base["revision"]}), 409
        )
        == "conflict"
    )
    removed = change(
        server, {"review_thresholds": {"crack": None}, **audit, "expected_revision": banded["revision"]}
    ).json()
    assert removed["review_thresholds"] == {}
    # Rolled back to the banded revision: the band is back, and in the history.
    rolled = httpx.post(
        thresholds_url(server, tail="/rollback"),
        json={"to_revision": banded["revision"], **audit, "expected_revision": removed["revision"]},
        headers=AUTH,
    ).json()
    assert rolled["review_thresholds"] == {"crack": low}
    history = httpx.get(thresholds_url(server, tail="/history"), params={"limit": 3}).json()["revisions"]
    assert [r["review_thresholds"] for r in history] == [{"crack": low}, {}, {"crack": low}]
    # Back to the values before, without a band: answers as before.
    restored = httpx.post(
        thresholds_url(server, tail="/rollback"),
        json={"to_revision": base["revision"], **audit, "expected_revision": rolled["revision"]},
        headers=AUTH,
    ).json()
    assert restored["review_thresholds"] == base["review_thresholds"] == {}
    again = httpx.post(
        f"{server.url}/v1/models/{CLASSIFIER}/predict", content=crack_jpeg, headers={"Content-Type": "image/jpeg"}
    ).json()
    assert {k: v for k, v in again.items() if k != "thresholds_revision"} == {
        k: v for k, v in plain.items() if k != "thresholds_revision"
    }


def test_a_sweep_proposes_a_review_band_whose_rates_equal_an_independent_count(server, tmp_path, capsys):
    samples = write_sample_set(tmp_path / "samples", "classification", count=60, seed=30_700, width=320, height=240)
    # A reject threshold that lets half the cracks through, and a band that must catch every one of them.
    params = {"targets": "crack:0.5", "max_miss_rate": "crack:0", "max_review_rate": "0.5", "samples": "true"}
    report = sweep(server, CLASSIFIER, zipped(samples), **params)
    band = report["classes"]["crack"]["band"]
    low, high = band["review_threshold"], band["reject_threshold"]
    assert high == report["classes"]["crack"]["proposed"]["threshold"] and low < high
    # Counted again from each image's answer (every score) and its label.
    scored = [(s["answer"]["scores"]["crack"], "crack" in s["truth"]["present"]) for s in report["samples"]]
    reviewed = sum(1 for score, _ in scored if low <= score < high)
    missed = sum(1 for score, crack in scored if crack and score < low)
    positives = sum(1 for _, crack in scored if crack)
    assert (band["reviewed"], band["missed"]) == (reviewed, missed) and reviewed > 0
    assert band["review_rate"] == pytest.approx(reviewed / len(scored))
    assert band["miss_rate"] == pytest.approx(missed / positives)
    # It meets both targets, and is the highest review threshold that misses nothing.
    assert band["miss_target_met"] and band["review_target_met"] and missed == 0 and reviewed / len(scored) <= 0.5
    assert any(crack and score < low + 0.01 for score, crack in scored)
    # The review target, one value for every class, gives each class a band: a ready PUT body.
    proposed = report["proposal"]["review_thresholds"]
    assert proposed["crack"] == low and set(proposed) == {"porosity", "crack", "undercut"}
    # The command-line tuner proposes the same band from the same targets.
    out = tmp_path / "report.json"
    argv = ["--url", server.url, "--model", CLASSIFIER, "--samples", str(samples), "--target", "crack=0.5"]
    argv += ["--max-miss-rate", "crack=0", "--max-review-rate", "0.5", "--json", str(out)]
    assert tune.main(argv) == 0
    assert "review bands" in capsys.readouterr().out
    assert json.loads(out.read_text())["classes"]["crack"]["band"] == band
