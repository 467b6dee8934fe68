"""A server of two workers SIGKILLed in the middle of an activation (while the version loads, while the
revision is written, while the workers switch), at several moments: after a restart on the same
database there is one active version, the one the newest revision names, every worker answers with it,
the history is whole, and an activation acknowledged before the kill is in it."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from export.synthetic import encode_image, generate_weld
from tests.conftest import kill_tree, running_server
from tests.service.lifecycle.graphs import derive_version, slow_down
from tests.service.test_lifecycle import AUTH, TOKEN
from tests.service.test_versions import CLASSIFIER


@pytest.mark.parametrize("kill_after_s", [0.05, 0.25, 0.6])
def test_a_kill_mid_activation_leaves_one_consistent_active_version(tmp_path, kill_after_s):
    store, state = tmp_path / "store", tmp_path / "state"
    derive_version(store, 1)
    derive_version(store, 2, slow_down)  # a load and warm-up long enough to be killed in
    frame = encode_image(generate_weld(6_300, 320, 240, label="crack").image)
    versions = f"/v1/models/{CLASSIFIER}/versions"
    acknowledged: list[dict] = []
    with running_server(
        tmp_path / "first", workers=2, model_store=store, models=f"{CLASSIFIER}:1", admin_token=TOKEN, state_dir=state
    ) as doomed:
        http = httpx.Client(base_url=doomed.url, timeout=30)

        def activate() -> None:
            body = {"author": "o.berg", "reason": "killed", "expected_revision": 1, "version": 2}
            try:
                answer = http.post(f"{versions}/activate", json=body, headers=AUTH)
            except httpx.HTTPError:
                return  # killed before it answered
            if answer.status_code == 200:
                acknowledged.append(answer.json())

        assert http.get(versions).json()["revision"] == 1
        request = threading.Thread(target=activate)
        request.start()
        time.sleep(kill_after_s)
        kill_tree(doomed.process)
        request.join()

    with running_server(
        tmp_path / "second", workers=2, model_store=store, models=f"{CLASSIFIER}:1", state_dir=state
    ) as restarted:
        http = httpx.Client(base_url=restarted.url, timeout=30)
        history = http.get(f"{versions}/history").json()["revisions"]
        now = http.get(versions).json()
        answered = {
            http.post(f"/v1/models/{CLASSIFIER}/predict", content=frame, headers={"Content-Type": "image/jpeg"}).json()[
                "model_version"
            ]
            for _ in range(8)
        }
    assert [r["revision"] for r in history] == list(range(len(history), 0, -1))  # whole, nothing half-written
    assert [r["kind"] for r in history] in (["initial"], ["activate", "initial"])
    assert now["active"] == history[0]["version"] and now["loaded"] == [history[0]["version"]]
    assert answered == {history[0]["version"]}  # both workers serve the one version the database names
    if acknowledged:
        assert history[0]["revision"] == acknowledged[0]["revision"] == 2
    print(f"\nkilled {kill_after_s} s into an activation: revisions {[r['kind'] for r in history]}, serving {answered}")
