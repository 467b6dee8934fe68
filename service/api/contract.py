"""Error answers from the layers under our routes, in the error contract.

BentoML's own router answers paths that none of its routes or ours takes (a path outside `/v1/`,
or one whose characters no route pattern matches, such as a newline) with a plain-text 404. This
middleware, added to BentoML's app around its router, rewrites every plain-text 4xx or 5xx answer
into `{"error": {"code", "message"}}` with the same status and headers.
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
            body = error_response(error_for_status(status, text)).body
            headers = [
                (name, value)
                for name, value in held["headers"]
                if name.lower() not in (b"content-type", b"content-length")
            ] + [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_in_contract)


def error_response(error: InspectionError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """`{"error": {"code", "message"}}` with the error's status and headers: every error answer of the API."""
    return JSONResponse(error.to_json(), status_code=error.status, headers={**error.headers, **(headers or {})})


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
