"""Loading and unloading models and versions at run time, on a real server of two workers: the repository
lists what the store holds and what is served, an unloaded model answers 404 saying so while the
others keep answering, a model never served is loaded at run time, a version loaded beside the active
one answers when named and is released when unloaded; what cannot be done is refused with the reason
(a version whose answers its manifest cannot read among them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from export.synthetic import encode_image, generate_weld
from service.lifecycle.cli import main as versions_cli
from tests.conftest import MODEL_STORE, running_server
from tests.service.lifecycle.graphs import derive_version, drop_a_class
from tests.service.test_lifecycle import AUTH, TOKEN
from tests.service.test_versions import CLASSIFIER, add_version

DETECTOR, SEGMENTER = "weld-detector", "weld-segmenter"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    for version in (1, 2):
        add_version(root, version)
    derive_version(root, 3, drop_a_class)
    for model in (DETECTOR, SEGMENTER):
        shutil.copytree(MODEL_STORE / model, root / model)
    return root


def test_models_and_versions_load_and_unload_at_run_time(store, tmp_path, capsys):
    frame = encode_image(generate_weld(5_100, 320, 240, label="crack").image)
    with running_server(
        tmp_path, workers=2, model_store=store, models=f"{CLASSIFIER}:1,{DETECTOR}", admin_token=TOKEN
    ) as server:
        http = httpx.Client(base_url=server.url, timeout=60)

        def predict(model: str) -> httpx.Response:
            return http.post(f"/v1/models/{model}/predict", content=frame, headers={"Content-Type": "image/jpeg"})

        def repository() -> dict[str, dict]:
            return {m["model"]: m for m in http.get("/v1/repository").json()["models"]}

        def change(path: str, model: str = CLASSIFIER, **more: object) -> httpx.Response:
            revision = repository()[model]["revision"] if model in repository() else 1
            body = {"author": "o.berg", "reason": "line 2 changeover", "expected_revision": revision, **more}
            return http.post(f"/v1/models/{model}{path}", json=body, headers=AUTH)

        listed = repository()
        assert listed[CLASSIFIER]["state"] == "loaded"
        assert listed[CLASSIFIER]["versions"] == [
            {"version": 1, "state": "active"},
            {"version": 2, "state": "available"},
            {"version": 3, "state": "available"},
        ]
        assert (listed[SEGMENTER]["state"], listed[SEGMENTER]["versions"]) == (
            "unloaded",
            [{"version": 1, "state": "available"}],
        )
        index = http.post("/v2/repository/index", json={}).json()
        assert {
            "name": CLASSIFIER,
            "version": "2",
            "state": "UNAVAILABLE",
            "reason": "not loaded (model loaded)",
        } in index
        assert {e["name"] for e in http.post("/v2/repository/index", json={"ready": True}).json()} == {
            CLASSIFIER,
            DETECTOR,
        }

        # A version beside the active one, on both workers: it answers when named.
        loaded = change("/versions/2/load")
        assert loaded.status_code == 200, loaded.text
        assert (loaded.json()["kind"], loaded.json()["loaded"], len(loaded.json()["workers_switched"])) == (
            "load",
            [2],
            2,
        )
        for _ in range(4):  # both workers
            assert http.get(f"/v2/models/{CLASSIFIER}/versions/2/ready").status_code == 200
        assert predict(CLASSIFIER).json()["model_version"] == 1
        assert repository()[CLASSIFIER]["versions"][1] == {"version": 2, "state": "loaded"}
        refused = change("/versions/1/unload")
        assert refused.status_code == 422 and "active version" in refused.json()["error"]["message"]
        assert change("/versions/2/unload").status_code == 200
        for _ in range(4):
            gone = http.get(f"/v2/models/{CLASSIFIER}/versions/2/ready")
            assert gone.status_code == 404 and "version 2 of weld-classifier is not loaded" in gone.json()["error"]
        unreadable = change("/versions/3/load")  # loads and warms up, but its answers cannot be read
        assert unreadable.status_code == 422, unreadable.text
        assert (
            "its manifest cannot read the graph's outputs: expected 4 scores" in unreadable.json()["error"]["message"]
        )
        stale = http.post(
            f"/v1/models/{CLASSIFIER}/versions/2/load",
            json={"author": "o.berg", "reason": "stale", "expected_revision": 1},
            headers=AUTH,
        )
        assert stale.status_code == 409, stale.text
        for _ in range(4):  # the version loaded for the refused change is released again
            assert http.get(f"/v1/models/{CLASSIFIER}/versions").json()["loaded"] == [1]
        missing = change("/versions/9/load")
        assert missing.status_code == 422 and missing.json()["error"]["code"] == "version_refused"

        # The whole model: 404 saying so on both workers, the detector unaffected; then back.
        unloaded = change("/unload")
        assert unloaded.status_code == 200 and unloaded.json()["served"] is False
        assert len(unloaded.json()["workers_switched"]) == 2 and unloaded.json()["all_switched_at"] is not None
        for _ in range(4):
            answer = predict(CLASSIFIER)
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["message"] == (
                f"{CLASSIFIER} is unloaded; load it with POST /v1/models/{CLASSIFIER}/load"
            )
            assert predict(DETECTOR).status_code == 200
        assert CLASSIFIER not in [m["name"] for m in http.get("/v1/models").json()["models"]]
        shadow = change("/shadow", version=2)
        assert shadow.status_code == 404 and "is unloaded" in shadow.json()["error"]["message"]
        assert change("/load").status_code == 200
        assert {predict(CLASSIFIER).json()["model_version"] for _ in range(4)} == {1}

        # A model never served, loaded from the command line.
        load = ["load", SEGMENTER, "--token", TOKEN, "--author", "o.berg", "--reason", "line 4"]
        assert versions_cli(["--url", server.url, *load]) == 0
        out = capsys.readouterr().out
        assert "load: version 1 by o.berg" in out and "2 worker(s) switched" in out
        for _ in range(4):
            assert predict(SEGMENTER).status_code == 200
        assert versions_cli(["--url", server.url, "repository"]) == 0
        assert f"{SEGMENTER}: loaded (revision 2); 1 active" in capsys.readouterr().out
        assert change("/load", "no-such-model").status_code == 404
        history = http.get(f"/v1/models/{CLASSIFIER}/versions/history").json()["revisions"]
        assert [r["kind"] for r in history] == ["load", "unload", "unload", "load", "initial"]
