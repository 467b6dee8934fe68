"""The QA console's pages in Chromium against a real server: what they show equals what the API says,
and what they do is what the API records."""

from __future__ import annotations

import re
import time
import zipfile
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from export.synthetic import encode_image, generate_weld
from loadtests.frames import line_frames
from tests.conftest import RunningServer, running_server
from tests.console.conftest import ADMIN_TOKEN, SERVER_SET, Page

CLASSIFIER = "weld-classifier"
# The console's chart: the same geometry as console.js's CHART.
WIDTH, HEIGHT, PAD = 360, 210, 30


def chart_x(t: float) -> float:
    return PAD + t * (WIDTH - 2 * PAD)


def chart_y(v: float) -> float:
    return HEIGHT - PAD - v * (HEIGHT - 2 * PAD)


def sweep_report(server: RunningServer, archive: Path, targets: str) -> dict:
    response = httpx.post(
        f"{server.url}/v1/models/{CLASSIFIER}/thresholds/sweep",
        params={"step": 0.01, "targets": targets},
        content=archive.read_bytes(),
        headers={"content-type": "application/zip"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


def active(server: RunningServer) -> dict:
    return httpx.get(f"{server.url}/v1/models/{CLASSIFIER}/thresholds").json()


def change(server: RunningServer, values: dict[str, float], expected: int) -> dict:
    response = httpx.put(
        f"{server.url}/v1/models/{CLASSIFIER}/thresholds",
        json={"thresholds": values, "author": "line lead", "reason": "night shift", "expected_revision": expected},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def swept(
    console: Page, archive: Path, targets: dict[str, str] | None = None, miss: str = "", review: str = ""
) -> None:
    """Open the classifier's thresholds page and sweep `archive` there (with review band targets, if given)."""
    console.open(f"/models/{CLASSIFIER}/thresholds")
    console.testid("active-revision").wait_for()
    for name, value in (targets or {}).items():
        console.testid(f"target-{name}").fill(value)
    console.testid("sweep-miss-rate").fill(miss)
    console.testid("sweep-review-rate").fill(review)
    console.testid("sweep-file").set_input_files(str(archive))
    console.testid("sweep-run").click()
    console.page.wait_for_selector("[data-testid=sweep-status][data-images]", timeout=120_000)


def move(console: Page, name: str, value: float) -> None:
    """Move a class's slider, and wait until the review queues follow it."""
    console.testid(f"slider-{name}").evaluate(
        "(slider, value) => { slider.value = value; slider.dispatchEvent(new Event('input')); }", str(value)
    )
    console.page.wait_for_function(
        "wanted => document.querySelector('[data-testid=review]').dataset.thresholds.split(',').includes(wanted)",
        arg=f"{name}:{value}",
    )


def test_the_models_page_shows_every_served_model_with_live_figures(console: Page, server, tmp_path):
    described = httpx.get(f"{server.url}/v1/models").json()["models"]
    console.open("/models")
    for model in described:
        name = model["name"]
        console.testid(f"model-row-{name}").wait_for()
        shown = [console.text(f"{key}-{name}") for key in ("version", "task", "provider", "revision")]
        assert shown == [str(model["version"]), model["task"], model["provider"], str(model["thresholds"]["revision"])]
        assert console.text(f"classes-{name}") == ", ".join(model["classes"])
    assert {m["name"] for m in described} == {"weld-classifier", "weld-detector", "weld-segmenter"}
    # A first reading of /metrics, then frames, then a reading after them: the page counts exactly those.
    console.page.wait_for_selector("[data-testid=window][data-polls='1']")
    decisions = []
    for frame in line_frames(320, 240) * 3:
        answer = httpx.post(
            f"{server.url}/v1/models/{CLASSIFIER}/predict", content=frame, headers={"content-type": "image/jpeg"}
        ).json()
        decisions.append(answer["decision"])
    console.page.wait_for_selector("[data-testid=window][data-polls='3']", timeout=15_000)
    assert console.text(f"answers-{CLASSIFIER}") == str(len(decisions))
    rejects = console.testid(f"reject-{CLASSIFIER}").get_attribute("data-rejects")
    assert int(rejects) == decisions.count("reject") and 0 < decisions.count("reject") < len(decisions)
    assert float(console.text(f"throughput-{CLASSIFIER}")) > 0
    assert re.fullmatch(r"<= \d+ ms", console.text(f"p99-{CLASSIFIER}"))
    assert console.text("answers-weld-detector") == "0"
    console.screenshot("models", tmp_path)


def test_a_sweep_draws_the_apis_curves_and_a_moved_threshold_shows_the_sweeps_figures(
    console: Page, server, samples_zip, tmp_path
):
    report = sweep_report(server, samples_zip, "crack:0.9")
    swept(console, samples_zip, {"crack": "0.9"})
    assert console.testid("sweep-status").get_attribute("data-images") == str(report["images"])
    current = active(server)["thresholds"]
    for name, sweep in report["classes"].items():
        curve = sweep["curve"]
        for series in ("precision", "recall", "f1"):
            drawn = console.testid(f"curve-{name}-{series}").get_attribute("points").split()
            expected = [
                coordinate
                for t, v in zip(curve["thresholds"], curve[series], strict=True)
                if v is not None
                for coordinate in (chart_x(t), chart_y(v))
            ]
            points = [float(coordinate) for point in drawn for coordinate in point.split(",")]
            assert points == pytest.approx(expected, abs=0.01), (name, series)
        assert float(console.testid(f"marker-{name}-current").get_attribute("x1")) == pytest.approx(
            chart_x(current[name])
        )
        # The slider starts at the sweep's proposal, and reads its figures there.
        proposed = sweep["proposed"]
        assert float(console.text(f"value-{name}-threshold")) == pytest.approx(proposed["threshold"])
        assert console.text(f"value-{name}-tp") == str(proposed["tp"])
    assert "recall >= 0.9" in console.text("suggest-crack")
    # Moving a threshold: the figures at that point of the sweep, and the marker follows.
    for name, value in (("crack", 0.37), ("porosity", 0.81)):
        move(console, name, value)
        curve = report["classes"][name]["curve"]
        i = curve["thresholds"].index(value)
        for key in ("precision", "recall", "f1"):
            shown = console.text(f"value-{name}-{key}")
            assert shown == ("-" if curve[key][i] is None else f"{curve[key][i]:.3f}"), key
        assert [console.text(f"value-{name}-{k}") for k in ("tp", "fp", "fn")] == [
            str(curve[k][i]) for k in ("tp", "fp", "fn")
        ]
        assert float(console.testid(f"marker-{name}-proposed").get_attribute("x1")) == pytest.approx(chart_x(value))
    # The buttons set the slider to the F1 optimum, back to the proposal, and to the active value.
    curve = report["classes"]["crack"]["curve"]
    best = max((f, -i) for i, f in enumerate(curve["f1"]) if f is not None)
    console.testid("use-f1-crack").click()
    assert float(console.text("value-crack-threshold")) == pytest.approx(curve["thresholds"][-best[1]])
    console.testid("use-active-crack").click()
    assert float(console.text("value-crack-threshold")) == pytest.approx(current["crack"])
    console.testid("use-proposal-crack").click()
    assert float(console.text("value-crack-threshold")) == pytest.approx(
        report["classes"]["crack"]["proposed"]["threshold"]
    )
    # The confusion at the proposal, as the API counts it.
    rows = console.testid("confusion").locator("tr").all_inner_texts()
    matrix = [[int(n) for n in row.split("\t")[1:]] for row in rows[1:]]
    assert matrix == report["confusion"]["matrix"]
    console.screenshot("thresholds", tmp_path)


def test_saving_writes_a_revision_seen_in_the_history_and_in_the_next_prediction(console: Page, server, samples_zip):
    swept(console, samples_zip)
    before = active(server)["revision"]
    move(console, "crack", 0.42)
    console.enter_token()
    console.testid("save-author").fill("m.keller")
    console.testid("save-reason").fill("fewer crack escapes on line 2")
    console.testid("save").click()
    console.page.wait_for_selector("[data-testid=save-message][data-revision]")
    revision = int(console.testid("save-message").get_attribute("data-revision"))
    now = active(server)
    assert now["revision"] == revision == before + 1
    assert now["thresholds"]["crack"] == 0.42 and (now["author"], now["reason"]) == (
        "m.keller",
        "fewer crack escapes on line 2",
    )
    assert console.testid(f"history-row-{revision}").is_visible()
    assert console.testid("active-revision").get_attribute("data-revision") == str(revision)
    answer = httpx.post(
        f"{server.url}/v1/models/{CLASSIFIER}/predict",
        content=line_frames(320, 240)[2],
        headers={"content-type": "image/jpeg"},
    ).json()
    assert answer["thresholds_revision"] == revision


def test_a_stale_page_is_refused_with_the_conflict_and_shows_the_newer_values(console: Page, server, samples_zip):
    swept(console, samples_zip)
    console.enter_token()
    # Someone else saves meanwhile.
    newer = change(server, {"porosity": 0.66}, active(server)["revision"])
    console.testid("save-author").fill("m.keller")
    console.testid("save-reason").fill("from an old page")
    console.testid("save").click()
    console.page.wait_for_selector("[data-testid=save-message].error")
    shown = console.text("save-message")
    assert "Not saved" in shown and f"at revision {newer['revision']}" in shown and "night shift" in shown
    assert active(server)["revision"] == newer["revision"]
    console.page.wait_for_selector(f"[data-testid=active-revision][data-revision='{newer['revision']}']")
    assert console.text("active-porosity") == "0.66"


def test_without_the_token_nothing_is_written_and_the_page_says_why(console: Page, server, samples_zip):
    swept(console, samples_zip)
    before = active(server)["revision"]
    console.testid("save-author").fill("visitor")
    console.testid("save-reason").fill("trying")
    console.testid("save").click()
    console.page.wait_for_selector("[data-testid=save-message].error")
    assert "admin token" in console.text("save-message")
    # A wrong token is refused too; forgetting it goes back to read only.
    console.enter_token("not-the-token")
    console.testid("save").click()
    console.page.wait_for_function(
        "() => document.querySelector('[data-testid=save-message]').textContent.includes('admin token')"
    )
    console.testid("token-button").click()
    console.testid("token-forget").click()
    assert console.text("token-state") == "read only"
    assert active(server)["revision"] == before
    # The token never reached the address or a request's address.
    assert all("not-the-token" not in url and ADMIN_TOKEN not in url for url in console.requests)


def test_the_history_shows_the_difference_between_two_revisions_and_rolls_back(console: Page, server):
    base = active(server)
    first = change(server, {"crack": 0.31}, base["revision"])
    second = change(server, {"undercut": 0.77}, first["revision"])
    console.open(f"/models/{CLASSIFIER}/thresholds")
    console.testid(f"history-row-{second['revision']}").wait_for()
    console.testid(f"diff-from-{base['revision']}").check()
    console.testid(f"diff-to-{second['revision']}").check()
    changed = {
        name
        for name in base["thresholds"]
        if "changed" in (console.testid(f"diff-{name}").get_attribute("class") or "")
    }
    assert changed == {"crack", "undercut"} - {
        n for n in ("crack", "undercut") if base["thresholds"][n] == second["thresholds"][n]
    }
    console.enter_token()
    console.testid("save-author").fill("m.keller")
    console.testid("save-reason").fill("back to the morning's values")
    console.testid(f"rollback-{base['revision']}").click()
    console.page.wait_for_selector("[data-testid=history-message].ok")
    now = active(server)
    assert (now["revision"], now["kind"], now["restores"]) == (second["revision"] + 1, "rollback", base["revision"])
    assert now["thresholds"] == base["thresholds"]
    console.testid(f"history-row-{now['revision']}").wait_for()


def test_a_review_band_is_chosen_from_the_sweep_and_saved_with_the_thresholds(console: Page, server, samples_zip):
    params = {"step": 0.01, "targets": "crack:0.5", "max_miss_rate": "0", "max_review_rate": "0.5"}
    report = httpx.post(
        f"{server.url}/v1/models/{CLASSIFIER}/thresholds/sweep",
        params=params,
        content=samples_zip.read_bytes(),
        headers={"content-type": "application/zip"},
        timeout=120,
    ).json()
    band = report["classes"]["crack"]["band"]
    swept(console, samples_zip, {"crack": "0.5"}, miss="0", review="0.5")
    # The sweep's band, with what it does on the samples.
    assert float(console.testid("review-crack").input_value()) == pytest.approx(band["review_threshold"])
    shown = console.testid("band-crack")
    assert (int(shown.get_attribute("data-reviewed")), int(shown.get_attribute("data-missed"))) == (
        band["reviewed"],
        band["missed"],
    )
    # Moved, the band's figures follow the curve; emptied, a class has no band.
    console.testid("review-crack").fill("0.9")
    curve = report["classes"]["crack"]["curve"]
    low, high = (
        curve["thresholds"].index(0.9),
        curve["thresholds"].index(report["classes"]["crack"]["proposed"]["threshold"]),
    )
    assert int(shown.get_attribute("data-missed")) == curve["fn"][low]
    assert int(shown.get_attribute("data-reviewed")) == max(
        0, curve["tp"][low] + curve["fp"][low] - curve["tp"][high] - curve["fp"][high]
    )
    console.testid("review-crack").fill(str(band["review_threshold"]))
    console.testid("review-porosity").fill("")
    console.enter_token()
    console.testid("save-author").fill("m.keller")
    console.testid("save-reason").fill("doubtful cracks to a person")
    console.testid("save").click()
    console.page.wait_for_selector("[data-testid=save-message][data-revision]")
    now = active(server)
    assert now["review_thresholds"]["crack"] == band["review_threshold"] and "porosity" not in now["review_thresholds"]
    assert console.text("active-review-crack") == f"{band['review_threshold']:.2f}"
    assert console.text("active-review-porosity") == "-"
    # The values before, again, for the tests after this one.
    back = httpx.post(
        f"{server.url}/v1/models/{CLASSIFIER}/thresholds/rollback",
        json={
            "to_revision": now["replaces"],
            "author": "tests",
            "reason": "restore",
            "expected_revision": now["revision"],
        },
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert back.status_code == 200 and back.json()["review_thresholds"] == {}


def queue(console: Page, key: str) -> set[str]:
    return set(
        console.testid(f"queue-{key}")
        .locator("[data-testid=review-open]")
        .evaluate_all("nodes => nodes.map(n => n.dataset.name)")
    )


def test_the_review_queues_hold_exactly_the_frames_the_api_gets_wrong_at_the_proposed_thresholds(
    console: Page, server, samples_zip, tmp_path
):
    report = sweep_report(server, samples_zip, "crack:0.9")
    swept(console, samples_zip)
    # Thresholds that get some frames wrong: porosity flagged on almost anything, crack on almost nothing.
    proposed = {**report["proposal"]["thresholds"], "porosity": 0.01, "crack": 0.99}
    move(console, "porosity", 0.01)
    move(console, "crack", 0.99)
    # Independently: the server's own decisions at those thresholds (a per-request override), frame by frame.
    override = ",".join(f"{name}:{value}" for name, value in proposed.items())
    missed, spurious = set(), set()
    decided: Counter[tuple[str, str]] = Counter()
    with zipfile.ZipFile(samples_zip) as archive:
        truths = {
            sample["name"]: sample["truth"]
            for sample in httpx.post(
                f"{server.url}/v1/models/{CLASSIFIER}/thresholds/sweep",
                params={"samples": "true"},
                content=samples_zip.read_bytes(),
                headers={"content-type": "application/zip"},
                timeout=120,
            ).json()["samples"]
        }
        for name, truth in truths.items():
            answer = httpx.post(
                f"{server.url}/v1/models/{CLASSIFIER}/predict",
                params={"thresholds": override},
                content=archive.read(name),
                headers={"content-type": "image/jpeg"},
            ).json()
            if set(truth["present"]) - set(answer["defects"]):
                missed.add(name)
            if set(answer["defects"]) - set(truth["present"]):
                spurious.add(name)
            # The decided label: the best-scored class that crossed its threshold, else the background.
            crossed = sorted(answer["defects"], key=lambda c: -answer["scores"][c])
            decided[(truth["label"], crossed[0] if crossed else "no_defect")] += 1
    assert missed and spurious, "thresholds chosen to get frames wrong got none wrong"
    console.page.wait_for_function(
        f"() => document.querySelector('[data-testid=queue-fn-count]').textContent.trim() === '{len(missed)}'"
    )
    assert queue(console, "fn") == missed
    assert queue(console, "fp") == spurious
    # The confusion follows the moved thresholds too, as the server decides at them.
    labels = ["no_defect", "porosity", "crack", "undercut"]
    rows = console.testid("confusion").locator("tr").all_inner_texts()
    assert [[int(n) for n in row.split("\t")[1:]] for row in rows[1:]] == [
        [decided[(truth, shown)] for shown in labels] for truth in labels
    ]
    # As many crack misses as the sweep's curve counts at 0.99.
    crack = report["classes"]["crack"]["curve"]
    assert (
        sum(1 for name in missed if "crack" in truths[name]["present"]) == crack["fn"][crack["thresholds"].index(0.99)]
    )
    # A frame opened from a queue: the proposed thresholds' verdict beside the active ones'.
    name = sorted(missed)[0]
    console.testid("queue-fn").locator(f"[data-testid=review-open][data-name='{name}']").click()
    console.page.wait_for_selector(f"[data-testid=frame-detail][data-name='{name}']")
    label = truths[name]["present"][0]
    assert console.text(f"frame-proposed-crossed-{label}") == ""
    assert console.text(f"frame-active-crossed-{label}") == "crossed"
    assert console.testid("frame-proposed-image").evaluate("img => img.complete && img.naturalWidth") == 320
    console.screenshot("review", tmp_path)


def test_a_frame_with_a_known_defect_is_drawn_with_its_box_in_the_right_place(console: Page, server, tmp_path):
    sample = generate_weld(41, 320, 240, label="crack")
    frame_path = tmp_path / "crack.png"
    frame_path.write_bytes(encode_image(sample.image, fmt="PNG"))
    truth = dict(zip(("x1", "y1", "x2", "y2"), map(float, sample.boxes[0]), strict=True))
    api = httpx.post(
        f"{server.url}/v1/models/weld-detector/predict",
        content=frame_path.read_bytes(),
        headers={"content-type": "image/png"},
    ).json()
    expected = next(d for d in api["detections"] if d["class_name"] == "crack")
    assert box_iou(expected["box"], truth) > 0.5  # the detector finds the drawn crack
    console.open("/models/weld-detector/thresholds")
    console.testid("active-revision").wait_for()
    console.testid("inspect-file").set_input_files(str(frame_path))
    console.testid("inspect-run").click()
    rect = console.page.locator("[data-testid=inspect-active-box-crack]").first
    rect.wait_for()
    drawn = {key: float(rect.get_attribute(key)) for key in ("x", "y", "width", "height")}
    assert drawn == pytest.approx(
        {
            "x": expected["box"]["x1"],
            "y": expected["box"]["y1"],
            "width": expected["box"]["x2"] - expected["box"]["x1"],
            "height": expected["box"]["y2"] - expected["box"]["y1"],
        }
    )
    # On the screen: the box lies over the drawn crack, where the image shows it.
    image = console.testid("inspect-active-image").bounding_box()
    box = rect.bounding_box()
    scale = image["width"] / 320
    on_screen = {
        "x1": (box["x"] - image["x"]) / scale,
        "y1": (box["y"] - image["y"]) / scale,
        "x2": (box["x"] + box["width"] - image["x"]) / scale,
        "y2": (box["y"] + box["height"] - image["y"]) / scale,
    }
    assert box_iou(on_screen, truth) > 0.5
    assert console.text("inspect-active-decision").startswith("reject")
    assert console.text("inspect-active-crossed-crack") == "crossed"
    console.screenshot("inspect", tmp_path)


def test_a_segmenters_mask_is_painted_over_the_defect(console: Page, server, tmp_path):
    sample = generate_weld(43, 320, 240, label="porosity")
    frame_path = tmp_path / "porosity.png"
    frame_path.write_bytes(encode_image(sample.image, fmt="PNG"))
    console.open("/models/weld-segmenter/thresholds")
    console.testid("active-revision").wait_for()
    console.testid("inspect-file").set_input_files(str(frame_path))
    console.testid("inspect-run").click()
    console.testid("inspect-active-masks").wait_for()
    painted = console.testid("inspect-active-masks").evaluate(
        """canvas => { const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
           const on = []; for (let i = 0; i < d.length; i += 4) if (d[i + 3]) on.push(i / 4); return on; }"""
    )
    assert painted, "no mask painted"
    defect = sample.mask.reshape(-1) > 0
    inside = sum(1 for i in painted if defect[i])
    assert inside / len(painted) > 0.7  # the paint lies on the drawn pores


def test_a_frame_is_inspected_with_its_heat_map_painted_where_the_answer_puts_the_evidence(
    console: Page, server, tmp_path
):
    sample = generate_weld(1003, 640, 480, label="porosity")
    frame_path = tmp_path / "porosity.png"
    frame_path.write_bytes(encode_image(sample.image, fmt="PNG"))
    api = httpx.post(
        f"{server.url}/v1/models/{CLASSIFIER}/predict",
        params={"heatmap": "auto", "thresholds": "0"},
        content=frame_path.read_bytes(),
        headers={"content-type": "image/png"},
    ).json()["heatmap"]
    console.open(f"/models/{CLASSIFIER}/thresholds")
    console.testid("active-revision").wait_for()
    console.testid("inspect-file").set_input_files(str(frame_path))
    console.testid("inspect-heatmap").check()
    console.testid("inspect-run").click()
    console.page.locator("[data-testid=inspect-active-heatmap][data-painted=true]").wait_for()
    # The painted canvas: the map's PNG in the ramp's colours, most opaque at the answer's peak.
    width, strongest, opacity = console.testid("inspect-active-heatmap").evaluate(
        """canvas => { const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
           let top = 0; for (let i = 3; i < d.length; i += 4) top = Math.max(top, d[i]);
           const at = []; for (let i = 3; i < d.length; i += 4) if (d[i] === top) at.push((i - 3) / 4);
           return [canvas.width, at, top]; }"""
    )
    strongest = np.array(strongest)  # canvas pixels: the PNG's, 2x2 frame pixels each
    assert width == api["width"] == 320 and api["downscale"] == 2 and opacity > 0
    assert np.abs(2 * (strongest % width) - api["peak_x"]).max() <= 64
    assert np.abs(2 * (strongest // width) - api["peak_y"]).max() <= 48
    caption = console.text("inspect-active-heatmap-caption")
    assert caption.startswith(f"Heat map of porosity (cam): full colour at {api['scale']} (class activation)")
    console.screenshot("heatmap", tmp_path)


def box_iou(a: dict, b: dict) -> float:
    w = max(0.0, min(a["x2"], b["x2"]) - max(a["x1"], b["x1"]))
    h = max(0.0, min(a["y2"], b["y2"]) - max(a["y1"], b["y1"]))
    union = (a["x2"] - a["x1"]) * (a["y2"] - a["y1"]) + (b["x2"] - b["x1"]) * (b["y2"] - b["y1"]) - w * h
    return w * h / union


def test_live_rejected_frames_are_kept_only_when_asked_and_reviewed_with_their_answers(browser, server, tmp_path):
    # Off by default: nothing kept, and the page says how to turn it on.
    assert httpx.get(f"{server.url}/v1/models/{CLASSIFIER}/review/frames").json() == {"keeping": 0, "frames": []}
    with running_server(tmp_path / "keeping", admin_token=ADMIN_TOKEN, keep_rejected_frames=3) as keeping:
        sent = []
        for frame in line_frames(320, 240) * 2:  # no defect, porosity, crack, undercut: 6 of 8 rejected
            answer = httpx.post(
                f"{keeping.url}/v1/models/{CLASSIFIER}/predict", content=frame, headers={"content-type": "image/jpeg"}
            ).json()
            sent.append((frame, answer))
        rejected = [(frame, answer) for frame, answer in sent if answer["decision"] == "reject"]
        assert len(rejected) == 6
        kept = wait_for_kept(keeping, 3)
        # The newest three, newest first, each with the answer the camera got and the bytes it sent.
        assert [f["answer"] for f in kept] == [answer for _, answer in reversed(rejected[-3:])]
        for listed, (frame, _) in zip(kept, reversed(rejected[-3:]), strict=True):
            image = httpx.get(f"{keeping.url}/v1/models/{CLASSIFIER}/review/frames/{listed['id']}")
            assert image.content == frame and image.headers["content-type"] == "image/jpeg"
            # Not a shadow run's frame: that route does not serve it.
            assert httpx.get(f"{keeping.url}/v1/models/{CLASSIFIER}/shadow/frames/{listed['id']}").status_code == 404
        assert httpx.get(f"{keeping.url}/v1/models/weld-detector/review/frames").json()["frames"] == []
        context = browser.new_context()
        try:
            page = Page(context.new_page(), keeping)
            page.open(f"/models/{CLASSIFIER}/thresholds")
            page.testid("live-count").wait_for()
            ids = page.testid("live").locator("[data-testid=live-open]").evaluate_all("ns => ns.map(n => n.dataset.id)")
            assert ids == [str(f["id"]) for f in kept]
            page.testid("live").locator(f"[data-testid=live-open][data-id='{kept[0]['id']}']").click()
            page.page.wait_for_selector(f"[data-testid=live-detail][data-id='{kept[0]['id']}']")
            assert page.text("live-active-decision") == f"reject: {', '.join(kept[0]['answer']['defects'])}"
            assert page.testid("live-active-image").evaluate("img => img.complete && img.naturalWidth") == 320
        finally:
            context.close()


def test_a_sample_set_kept_on_the_server_is_swept_and_reviewed_without_an_upload(console: Page, server, samples_zip):
    sets = httpx.get(f"{server.url}/v1/sample-sets").json()["sets"]
    assert sets == [{"name": SERVER_SET, "kind": "zip", "size_bytes": samples_zip.stat().st_size}]
    by_upload = sweep_report(server, samples_zip, "crack:0.9")
    console.open(f"/models/{CLASSIFIER}/thresholds")
    console.page.wait_for_selector(f"[data-testid=sweep-set] option[value='{SERVER_SET}']", state="attached")
    console.testid("sweep-set").select_option(SERVER_SET)
    console.testid("target-crack").fill("0.9")
    console.testid("sweep-run").click()
    console.page.wait_for_selector("[data-testid=sweep-status][data-images]", timeout=120_000)
    # The same figures as the same samples uploaded, and nothing was uploaded.
    for name, sweep in by_upload["classes"].items():
        assert console.text(f"value-{name}-threshold") == f"{sweep['proposed']['threshold']:.2f}"
    assert [url for url in console.requests if "/sweep" in url and f"set={SERVER_SET}" not in url] == []
    move(console, "crack", 0.99)
    first = console.testid("queue-fn").locator("[data-testid=review-open]").first
    name = first.get_attribute("data-name")
    first.click()
    console.page.wait_for_selector(f"[data-testid=frame-detail][data-name='{name}']")
    image = console.testid("frame-proposed-image")
    assert image.get_attribute("src") == f"/v1/sample-sets/{SERVER_SET}/files/{name}"
    console.page.wait_for_function(
        "() => document.querySelector('[data-testid=frame-proposed-image]').naturalWidth === 320"
    )
    with zipfile.ZipFile(samples_zip) as archive:
        served = httpx.get(f"{server.url}/v1/sample-sets/{SERVER_SET}/files/{name}")
        assert served.content == archive.read(name) and served.headers["content-type"] == "image/jpeg"
    # Nothing outside the set, and a set or a body, not both.
    assert httpx.get(f"{server.url}/v1/sample-sets/{SERVER_SET}/files/..%2F..%2Fthresholds.db").status_code == 404
    assert httpx.get(f"{server.url}/v1/sample-sets/elsewhere/files/a.jpg").status_code == 404
    both = httpx.post(
        f"{server.url}/v1/models/{CLASSIFIER}/thresholds/sweep",
        params={"set": SERVER_SET},
        content=samples_zip.read_bytes(),
        headers={"content-type": "application/zip"},
    )
    assert both.status_code == 422 and "not both" in both.json()["error"]["message"]


def wait_for_kept(server: RunningServer, count: int) -> list[dict]:
    """The frames kept for review, once `count` are (the worker writes them off the request path)."""
    deadline = time.monotonic() + 10
    while True:
        frames = httpx.get(f"{server.url}/v1/models/{CLASSIFIER}/review/frames").json()["frames"]
        if len(frames) >= count or time.monotonic() > deadline:
            return frames
        time.sleep(0.05)


# Every control the pages have, as the tests above use them (a class's or model's name as NAME, a
# revision as N): a control added without a test that uses it fails here.
EXERCISED = {
    "token-button", "token-input", "token-save", "token-forget", "nav-models", "open-NAME",
    "sweep-file", "target-NAME", "sweep-run", "slider-NAME", "use-f1-NAME", "use-proposal-NAME",
    "use-active-NAME", "save-author", "save-reason", "save", "diff-from-N", "diff-to-N", "rollback-N",
    "inspect-file", "inspect-run", "inspect-heatmap", "review-open", "live-open", "sweep-set",
    "sweep-miss-rate", "sweep-review-rate", "review-NAME",
}  # fmt: skip


def test_every_control_on_every_page_is_one_a_test_uses(console: Page, server, samples_zip):
    controls = set()
    names = {m["name"] for m in httpx.get(f"{server.url}/v1/models").json()["models"]} | set(
        active(server)["thresholds"]
    )

    def collect() -> None:
        for testid in console.page.eval_on_selector_all(
            "button[data-testid], input[data-testid], select[data-testid], a[data-testid]",
            "nodes => nodes.map(n => n.dataset.testid)",
        ):
            generic = re.sub(r"-\d+$", "-N", testid)
            for name in sorted(names, key=len, reverse=True):
                generic = generic.replace(f"-{name}", "-NAME")
            controls.add(generic)

    console.open("/models")
    console.testid(f"model-row-{CLASSIFIER}").wait_for()
    collect()
    console.testid("nav-models").click()
    console.testid(f"open-{CLASSIFIER}").click()
    console.testid("history").wait_for()
    swept(console, samples_zip)
    move(console, "crack", 0.99)  # some frames wrong: the review queues list them
    console.testid("review-open").first.wait_for()
    console.testid("history").locator("tr").nth(2).wait_for()
    collect()
    assert console.testid("live-off").is_visible()
    # A frame kept for review opens with `live-open`, on a server that keeps them (the test above).
    assert controls == EXERCISED - {"live-open"}
