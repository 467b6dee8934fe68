"""The API run in-process (`create_app` with the service's own models, no server): the fast tier."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from export.synthetic import encode_image, generate_weld
from service.api.app import create_app
from service.api.schemas import ErrorResponse, ModelList
from service.config import Settings
from service.served_models import ServedModels
from service.tasks import ANSWERS
from tests.conftest import MODEL_STORE, app_in_process


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_in_process(MODEL_STORE, tmp_path_factory.mktemp("state")) as client:
        yield client


def test_the_served_models_are_listed(api):
    listing = ModelList.model_validate(api.get("/v1/models").json())
    assert [m.name for m in listing.models] == ["weld-classifier", "weld-detector", "weld-segmenter"]
    assert {m.batch_sizes for m in listing.models} == {None}


def test_a_crack_frame_is_rejected_by_the_classifier(api):
    frame = encode_image(generate_weld(74_000, 640, 480, label="crack").image)
    response = api.post("/v1/models/weld-classifier/predict", content=frame, headers={"Content-Type": "image/jpeg"})
    answer = ANSWERS.validate_python(response.json())
    assert response.status_code == 200
    assert (answer.decision, answer.defects, answer.label) == ("reject", ["crack"], "crack")


def test_one_threshold_for_every_class_turns_the_reject_into_an_accept(api):
    frame = encode_image(generate_weld(74_000, 640, 480, label="crack").image)
    response = api.post(
        "/v1/models/weld-classifier/predict?thresholds=1.0", content=frame, headers={"Content-Type": "image/jpeg"}
    )
    assert response.json()["decision"] == "accept" and response.json()["defects"] == []


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "code"),
    [
        ("/v1/models/weld-classifier/predict", b"not an image", "image/jpeg", 400, "undecodable_image"),
        ("/v1/models/weld-classifier/predict", b"hello", "text/plain", 415, "unsupported_media_type"),
        ("/v1/models/weld-nothing/predict", b"x", "image/jpeg", 404, "unknown_model"),
        ("/v1/models/weld-classifier/predict?threshold=0.3", b"x", "image/jpeg", 422, "invalid_parameters"),
        ("/v1/nothing", b"x", "image/jpeg", 404, "not_found"),
    ],
)
def test_client_mistakes_answer_the_error_contract(api, path, body, content_type, status, code):
    response = api.post(path, content=body, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert ErrorResponse.model_validate(response.json()).error.code == code


def test_a_prediction_cut_at_the_deadline_answers_504_and_is_counted_as_a_timeout(tmp_path):
    from prometheus_client import REGISTRY

    settings = Settings(model_store=MODEL_STORE, state_dir=tmp_path, workers=1, request_timeout_s=2, body_timeout_s=1)
    models = ServedModels.load(settings)

    def timeouts() -> float:
        labels = {"model": "weld-classifier", "code": "timeout"}
        return REGISTRY.get_sample_value("inspection_errors_total", labels) or 0.0

    async def trickle():  # a byte every 0.3 s: never idle for the body timeout, late for the deadline
        for _ in range(10):
            yield b"\xff"
            await asyncio.sleep(0.3)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings, lambda: models))
        async with httpx.AsyncClient(transport=transport, base_url="http://line") as client:
            return await client.post(
                "/v1/models/weld-classifier/predict", content=trickle(), headers={"Content-Type": "image/jpeg"}
            )

    before = timeouts()
    try:
        response = asyncio.run(post())
    finally:
        models.close()
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert timeouts() == before + 1
