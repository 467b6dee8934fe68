"""Several versions of one model loaded together: the first listed answers requests that name none, the
others those that name them; versions whose classes differ cannot share the model's thresholds."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from export.synthetic import encode_image, generate_weld
from service.config import Settings
from service.lifecycle.store import Activation, ActivationKind
from service.model_store import ModelStoreError
from service.served_models import ServedModels, configured_versions
from tests.conftest import MODEL_STORE, running_server

CLASSIFIER = "weld-classifier"
NOW = datetime(2026, 12, 8, tzinfo=UTC)


def add_version(store: Path, version: int, rename: dict[str, str] | None = None) -> None:
    """The demo classifier's graph as `version` of it in `store`, its classes renamed by `rename`."""
    target = store / CLASSIFIER / str(version)
    shutil.copytree(MODEL_STORE / CLASSIFIER / "1", target)
    manifest = json.loads((target / "manifest.json").read_text())
    rename = rename or {}
    manifest["version"] = version
    manifest["classes"] = [rename.get(name, name) for name in manifest["classes"]]
    manifest["thresholds"] = {rename.get(name, name): value for name, value in manifest["thresholds"].items()}
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    for version in (1, 2):
        add_version(root, version)
    add_version(root, 3, rename={"crack": "fissure"})
    return root


def test_versions_of_one_model_need_its_task_and_classes_and_are_named_once(store):
    loaded = configured_versions(Settings(model_store=store, models=[f"{CLASSIFIER}:2", f"{CLASSIFIER}:1"]))
    assert [m.manifest.ref for m in loaded] == [f"{CLASSIFIER}:2", f"{CLASSIFIER}:1"]
    with pytest.raises(ModelStoreError, match=r"weld-classifier:3 cannot be loaded beside weld-classifier:1.*fissure"):
        configured_versions(Settings(model_store=store, models=[f"{CLASSIFIER}:1", f"{CLASSIFIER}:3"]))
    with pytest.raises(ModelStoreError, match="weld-classifier:1 is named twice"):
        configured_versions(Settings(model_store=store, models=[f"{CLASSIFIER}:1", f"{CLASSIFIER}:1"]))


def test_the_first_listed_version_answers_and_the_others_answer_when_named(store, tmp_path):
    frame = encode_image(generate_weld(4_100, 640, 480, label="crack").image)
    with running_server(tmp_path, model_store=store, models=f"{CLASSIFIER}:2,{CLASSIFIER}:1") as server:
        plain = httpx.post(
            f"{server.url}/v1/models/{CLASSIFIER}/predict", content=frame, headers={"Content-Type": "image/jpeg"}
        )
        assert plain.status_code == 200 and plain.json()["model_version"] == 2
        described = httpx.get(f"{server.url}/v1/models/{CLASSIFIER}").json()
        assert (described["version"], described["loaded_versions"]) == (2, [1, 2])
        assert httpx.get(f"{server.url}/v2/models/{CLASSIFIER}").json()["versions"] == ["1", "2"]

        def infer(path: str) -> httpx.Response:
            request = {
                "inputs": [
                    {"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(frame).decode()]}
                ]
            }
            return httpx.post(f"{server.url}{path}", json=request, timeout=60)

        for version in (1, 2):
            answer = infer(f"/v2/models/{CLASSIFIER}/versions/{version}/infer")
            (output,) = [o for o in answer.json()["outputs"] if o["name"] == "answer"]
            named = json.loads(output["data"][0])
            # Same graph, same thresholds: the same answer but for the version that gave it.
            assert named == {**plain.json(), "model_version": version}
        missing = infer(f"/v2/models/{CLASSIFIER}/versions/3/infer")
        assert missing.status_code == 404
        assert missing.json()["error"] == f"version 3 of {CLASSIFIER} is not loaded; loaded: 1, 2 (active: 2)"
        metrics = httpx.get(f"{server.url}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("inspection_active_version", (("model", CLASSIFIER),))] == 2
    infos = {dict(labels)["version"] for (name, labels) in samples if name == "inspection_model_info"}
    assert infos == {"1", "2"}


def test_requests_that_meet_a_switch_get_the_version_switched_to_never_a_released_one(store, tmp_path):
    """Requests naming no version take the active one, each held until answered, while another thread
    switches the model between versions 1 and 2, retiring the one it leaves: the window between a
    request reading the active version and holding it is where a switch used to hand it a version
    already released (a 404), or a version number the versions it had read did not have yet (a 500)."""
    settings = Settings(model_store=store, state_dir=tmp_path, models=[f"{CLASSIFIER}:1"], workers=1)
    models = ServedModels.load(settings)
    switches = [2, 1] * 10
    held: list[int] = []
    failures: list[str] = []
    done = threading.Event()

    def requests() -> None:
        while not done.is_set():
            try:
                with models.held(CLASSIFIER) as predictor:
                    held.append(predictor.manifest.version)
                    if predictor.released:
                        failures.append(f"{predictor.manifest.ref} was held after its release")
            except Exception as exc:  # what a request would have answered with
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=requests) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for revision, version in enumerate(switches, start=2):
            before = len(held)
            models.follow(
                Activation(
                    CLASSIFIER, revision, ActivationKind.ACTIVATE, version, False, "qa", "switch", NOW, revision - 1
                )
            )
            assert models.versions(CLASSIFIER) == [version]  # the other retired
            while len(held) < before + 50:  # requests ran across the switch and on the new version
                time.sleep(0.001)
    finally:
        done.set()
        for thread in threads:
            thread.join()
        models.close()
    assert failures == []
    assert set(held) == {1, 2}
