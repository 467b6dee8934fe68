"""Limits on every request to the API, answered in the error contract before anything else runs.

- Header lines over `max_header_bytes` in all answer 431: the HTTP parser under BentoML has no limit.
- A request still unanswered at its deadline answers 504 `timeout`. The deadline comes a little
  before BentoML's request timeout (`INSPECTION_REQUEST_TIMEOUT_S`), whose own 504 has a format of
  its own; once an answer has started, it is left to finish.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.contract import error_response
from service.errors import HeadersTooLarge, InspectionError, TimedOut


def deadline_s(request_timeout_s: float) -> float:
    """Our deadline for a request: up to a second before BentoML's timeout."""
    return request_timeout_s - min(1.0, 0.1 * request_timeout_s)


class RequestLimits:
    def __init__(self, app: ASGIApp, max_header_bytes: int, request_timeout_s: float) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.deadline_s = deadline_s(request_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if size > self.max_header_bytes:
            await _answer(
                HeadersTooLarge(
                    f"the request's headers are {size} bytes; the limit is {self.max_header_bytes} "
                    "(INSPECTION_MAX_HEADER_BYTES)"
                ),
                scope,
                receive,
                send,
            )
            return
        deadline = asyncio.timeout(self.deadline_s)
        answering = False

        async def send_and_stop_the_clock(message: Message) -> None:
            nonlocal answering
            if not answering:
                answering = True
                deadline.reschedule(None)  # an answer under way is left to finish
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, send_and_stop_the_clock)
        except TimeoutError:
            if not deadline.expired() or answering:
                raise
            await _answer(
                TimedOut(f"no answer within {self.deadline_s:g} s (INSPECTION_REQUEST_TIMEOUT_S)"), scope, receive, send
            )


async def _answer(error: InspectionError, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(error, path=scope["path"])(scope, receive, send)
