"""Error answers in each protocol's contract, the layers under our routes included.

`/v1` (and every path outside `/v2/`) answers `{"error": {"code", "message"}}`; the Open Inference
Protocol (`/v2/...`) answers `{"error": "message"}`. Same status and headers in both.

BentoML's own router answers paths that none of its routes or ours takes (a path outside `/v1/`,
or one whose characters no route pattern matches, such as a newline) with a plain-text 404.
`PlainErrorsAsJson`, added to BentoML's app around its router, rewrites every plain-text 4xx or 5xx
answer into the contract of its path.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import InspectionError, error_for_status


class PlainErrorsAsJson:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None

        async def send_in_contract(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and _plain_error(message):
                held = message  # rewritten when its body comes
                return
            if held is None:
                await send(message)
                return
            if message.get("more_body", False):
                return  # short plain-text bodies: the whole text is not needed
            status = held["status"]
            text = "no route for this method and path; see /v1/docs" if status == 404 else _status_text(status)
            body = error_response(error_for_status(status, text), path=scope["path"]).body
            headers = [
                (name, value)
                for name, value in held["headers"]
                if name.lower() not in (b"content-type", b"content-length")
            ] + [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_in_contract)


V2_PREFIX = "/v2"


def error_response(
    error: InspectionError, headers: Mapping[str, str] | None = None, path: str | None = None
) -> JSONResponse:
    """Every error answer of the API, with the error's status and headers: `{"error": {"code", "message"}}`,
    or `{"error": "message"}` for a path of the Open Inference Protocol."""
    body = {"error": error.message} if path is not None and is_v2(path) else error.to_json()
    return JSONResponse(body, status_code=error.status, headers={**error.headers, **(headers or {})})


def is_v2(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def _plain_error(message: Message) -> bool:
    if message["status"] < 400:
        return False
    content_type = dict(message.get("headers", [])).get(b"content-type", b"")
    return content_type.startswith(b"text/plain")


def _status_text(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"status {status}"
