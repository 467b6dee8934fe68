"""Reading the image bytes of a prediction request, within the size limit.

The image comes as the raw body (`Content-Type: image/...` or
`application/octet-stream`) or as the multipart field `image`. The body is read
by us, in chunks, so that an oversized upload is refused at the limit instead of
being buffered whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from service.errors import InvalidParameters, MalformedRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from service.pipeline.decode import SUPPORTED_FORMATS

RAW_BODY_TYPES = frozenset(SUPPORTED_FORMATS.values()) | {"application/octet-stream", "image/jpg", "image/x-ms-bmp"}
MULTIPART = "multipart/form-data"
IMAGE_FIELD = "image"


async def read_image_bytes(
    request: Request, max_bytes: int, idle_timeout_s: float, arrived: Callable[[], object] | None = None
) -> bytes:
    """The image of a prediction request; `arrived` is called as each part of the body arrives."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != MULTIPART and media_type not in RAW_BODY_TYPES:
        shown = media_type or "none"
        raise UnsupportedMediaType(
            f"Content-Type {shown} is not accepted; send the image as the body with one of "
            f"{', '.join(sorted(SUPPORTED_FORMATS.values()))}, or as multipart field '{IMAGE_FIELD}'"
        )
    # multipart adds headers and boundaries around the image: allow for them.
    limit = max_bytes + 64 * 1024 if media_type == MULTIPART else max_bytes
    body = await read_body(request, limit, idle_timeout_s, arrived=arrived)
    if media_type != MULTIPART:
        return body
    try:
        form = await request.form(max_files=1, max_fields=16)
    except HTTPException as exc:
        raise MalformedRequest(f"multipart body could not be parsed: {exc.detail}") from exc
    try:
        upload = form.get(IMAGE_FIELD)
        if not isinstance(upload, UploadFile):
            raise InvalidParameters(f"multipart request has no file field '{IMAGE_FIELD}'")
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes}")
    return data


async def read_body(
    request: Request,
    limit: int,
    idle_timeout_s: float,
    what: str = "body",
    setting: str = "INSPECTION_MAX_BODY_BYTES",
    arrived: Callable[[], object] | None = None,
) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes (`what` and `setting` name it),
    and with 408 when no byte of it arrives for `idle_timeout_s`: a stalled upload is the client's
    link, not the server, and answers well before the request timeout. `arrived` is called at each part."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{what} is {declared} bytes; the limit is {limit} ({setting})")
    chunks: list[bytes] = []
    received = 0
    loop = asyncio.get_running_loop()
    try:
        moved_at = loop.time()
        async with asyncio.timeout(idle_timeout_s) as idle:
            async for chunk in request.stream():
                now = loop.time()
                if now - moved_at > 0.1 * idle_timeout_s:  # moving the timer at every chunk costs CPU
                    idle.reschedule(now + idle_timeout_s)
                    moved_at = now
                received += len(chunk)
                if arrived is not None:
                    arrived()
                if received > limit:
                    raise PayloadTooLarge(f"{what} is over the limit of {limit} bytes ({setting})")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(
            f"no byte of the {what} arrived for {idle_timeout_s:g} s, after {received} bytes "
            "(INSPECTION_BODY_TIMEOUT_S)"
        ) from exc
    except ClientDisconnect as exc:
        raise MalformedRequest(f"client disconnected after {received} bytes of the {what}") from exc
    body = b"".join(chunks)
    # Starlette's form parser reads the body again from this cache.
    request._body = body  # noqa: SLF001
    return body
