"""`/v1`'s answers stay byte for byte what they were, on every demo model (`v1_answers.json`)."""

from __future__ import annotations

import json

import pytest

from service.tasks import ANSWERS
from tests.conftest import app_in_process
from tests.service.api.v1_answers import CASES, MODEL_STORE, RECORDED, answers


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with app_in_process(MODEL_STORE, tmp_path_factory.mktemp("state")) as client:
        yield client


def test_every_demo_model_answers_the_recorded_bytes(api):
    recorded = json.loads(RECORDED.read_text())
    assert {case[0] for case in CASES} == {"weld-classifier", "weld-detector", "weld-segmenter"}
    for case, now, then in zip(CASES, answers(api), recorded, strict=True):
        assert now == then, f"{case}: the answer changed"


def test_the_typed_answer_dumps_to_the_wire_form_unchanged():
    for text in json.loads(RECORDED.read_text()):
        answer = ANSWERS.validate_json(text)
        assert json.dumps(answer.model_dump(mode="json"), separators=(",", ":")) == text
