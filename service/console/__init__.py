"""The QA console: a page in the browser over the documented HTTP API, served at `/console/`.

Static files only (`static/`: HTML, CSS and a script, no third-party code), served by the API's own
app, so that it works on a line's network with no internet. Every answer carries a Content Security
Policy that lets the page talk to this server alone. The page reads what any client may read; a
change needs the admin token, which the page keeps in memory for as long as it is open (never in
the address, a log or the browser's storage) and sends as `Authorization: Bearer`.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

PATH = "/console"
STATIC = Path(__file__).parent / "static"
# The page's own files and this server only: nothing is fetched from, or sent to, another host.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


class ConsoleFiles(StaticFiles):
    """The console's static files, each answer with the policy above and never cached stale."""

    def __init__(self) -> None:
        super().__init__(directory=STATIC, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-cache"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, with_policy)


def to_console() -> RedirectResponse:
    """`/console` to `/console/`, where the page's relative paths resolve."""
    return RedirectResponse(f"{PATH}/", status_code=308)
