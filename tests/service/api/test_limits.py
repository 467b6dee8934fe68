"""The request limits in front of the API, on a small Starlette app run in-process."""

import asyncio
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from service.api.limits import RequestLimits, deadline_s


async def slow(_):
    await asyncio.sleep(3)
    return PlainTextResponse("late")


async def trickle(_):
    async def parts():
        for _ in range(4):
            yield b"part "
            await asyncio.sleep(0.4)

    return StreamingResponse(parts())


async def own_timeout(_):
    raise TimeoutError("the app's own")


def limited(request_timeout_s: int = 1) -> RequestLimits:
    routes = [Route("/slow", slow), Route("/trickle", trickle), Route("/own-timeout", own_timeout)]
    return RequestLimits(Starlette(routes=routes), max_header_bytes=2048, request_timeout_s=request_timeout_s)


def get(app, path: str, **kwargs) -> httpx.Response:
    async def call():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://line") as client:
            return await client.get(path, **kwargs)

    return asyncio.run(call())


def test_the_deadline_comes_a_little_before_bentomls_timeout():
    assert deadline_s(30) == 29.0
    assert deadline_s(1) == pytest.approx(0.9)


def test_a_request_unanswered_at_the_deadline_answers_504_in_the_error_contract():
    started = time.monotonic()
    response = get(limited(), "/slow")
    assert 0.8 < time.monotonic() - started < 2.0
    assert response.status_code == 504
    assert response.json() == {
        "error": {"code": "timeout", "message": "no answer within 0.9 s (INSPECTION_REQUEST_TIMEOUT_S)"}
    }


def test_an_answer_that_started_before_the_deadline_is_left_to_finish():
    response = get(limited(), "/trickle")
    assert response.status_code == 200 and response.text == "part " * 4


def test_a_timeout_error_of_the_app_itself_is_not_taken_for_the_deadline():
    assert get(limited(), "/own-timeout").status_code == 500


def test_header_lines_over_the_limit_answer_431():
    response = get(limited(), "/trickle", headers={"X-Padding": "p" * 3000})
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "headers_too_large"
    assert "limit is 2048" in response.json()["error"]["message"]
