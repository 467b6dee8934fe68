"""The QA console's pages in Chromium against a real server: what they show equals what the API says,
and what they do is what the API records."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from loadtests.frames import line_frames
from tests.conftest import RunningServer
from tests.console.conftest import ADMIN_TOKEN, Page

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


def swept(console: Page, archive: Path, targets: dict[str, str] | None = None) -> None:
    """Open the classifier's thresholds page and sweep `archive` there."""
    console.open(f"/models/{CLASSIFIER}/thresholds")
    console.testid("active-revision").wait_for()
    for name, value in (targets or {}).items():
        console.testid(f"target-{name}").fill(value)
    console.testid("sweep-file").set_input_files(str(archive))
    console.testid("sweep-run").click()
    console.page.wait_for_selector("[data-testid=sweep-status][data-images]", timeout=120_000)


def move(console: Page, name: str, value: float) -> None:
    console.testid(f"slider-{name}").evaluate(
        "(slider, value) => { slider.value = value; slider.dispatchEvent(new Event('input')); }", str(value)
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
        "document.querySelector('[data-testid=save-message]').textContent.includes('admin token')"
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


# Every control the pages have, as the tests above use them (a class's or model's name as NAME, a
# revision as N): a control added without a test that uses it fails here.
EXERCISED = {
    "token-button", "token-input", "token-save", "token-forget", "nav-models", "open-NAME",
    "sweep-file", "target-NAME", "sweep-run", "slider-NAME", "use-f1-NAME", "use-proposal-NAME",
    "use-active-NAME", "save-author", "save-reason", "save", "diff-from-N", "diff-to-N", "rollback-N",
}  # fmt: skip


def test_every_control_on_every_page_is_one_a_test_uses(console: Page, server, samples_zip):
    controls = set()
    names = {m["name"] for m in httpx.get(f"{server.url}/v1/models").json()["models"]} | set(
        active(server)["thresholds"]
    )

    def collect() -> None:
        for testid in console.page.eval_on_selector_all(
            "button[data-testid], input[data-testid], a[data-testid]", "nodes => nodes.map(n => n.dataset.testid)"
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
    console.testid("history").locator("tr").nth(2).wait_for()
    collect()
    assert controls == EXERCISED
