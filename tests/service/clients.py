"""Requests the end-to-end tests send to a running server, checked against the response models."""

from __future__ import annotations

import httpx

from service.api.schemas import ErrorResponse
from service.tasks import ANSWERS


def post(server, model: str, data: bytes, content_type: str = "image/jpeg", **params) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/{model}/predict",
        content=data,
        headers={"Content-Type": content_type},
        params=params,
        timeout=60,
    )


def predict(server, model: str, data: bytes, **params) -> dict:
    response = post(server, model, data, **params)
    assert response.status_code == 200, response.text
    body = response.json()
    # The typed answer describes the wire exactly: nothing missing, nothing more.
    assert ANSWERS.validate_python(body).model_dump(mode="json") == body
    return body


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return ErrorResponse.model_validate(response.json()).error.code
