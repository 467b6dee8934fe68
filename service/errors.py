"""Client-visible errors. Each maps to one HTTP status and a stable code.

The HTTP layer turns them into `{"error": {"code": ..., "message": ...}}`.
Anything else that escapes is our bug, and answers 500.
"""

from __future__ import annotations

from typing import ClassVar


class InspectionError(Exception):
    status: int = 500
    code: str = "internal_error"
    headers: ClassVar[dict[str, str]] = {}  # sent with every answer of this error

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class UndecodableImage(InspectionError):
    status, code = 400, "undecodable_image"


class MalformedRequest(InspectionError):
    status, code = 400, "malformed_request"


class NotFound(InspectionError):
    status, code = 404, "not_found"


class MethodNotAllowed(InspectionError):
    status, code = 405, "method_not_allowed"


class Unauthorized(InspectionError):
    status, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(InspectionError):
    status, code = 403, "forbidden"


class UnknownModel(InspectionError):
    status, code = 404, "unknown_model"


class RequestTimeout(InspectionError):
    status, code = 408, "request_timeout"


class Conflict(InspectionError):
    status, code = 409, "conflict"


class VersionRefused(InspectionError):
    """A model version that cannot go live (it fails to load, or the model's thresholds cannot follow it)."""

    status, code = 422, "version_refused"


class PayloadTooLarge(InspectionError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(InspectionError):
    status, code = 415, "unsupported_media_type"


class HeadersTooLarge(InspectionError):
    status, code = 431, "headers_too_large"


class InvalidParameters(InspectionError):
    status, code = 422, "invalid_parameters"


class Overloaded(InspectionError):
    status, code = 503, "overloaded"
    headers = {"Retry-After": "1"}


class DatabaseUnavailable(InspectionError):
    """The database of the shared state (thresholds, model versions) cannot be reached: a change or a
    history cannot be read or written now. Predictions are unaffected (they use the state held)."""

    status, code = 503, "database_unavailable"
    headers = {"Retry-After": "1"}


class TimedOut(InspectionError):
    status, code = 504, "timeout"


# What the frameworks under the API (Starlette's routing, FastAPI's body parsing) raise, by status,
# answered in the same `{"error": ...}` form.
_FRAMEWORK_ERRORS: dict[int, type[InspectionError]] = {
    400: MalformedRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidParameters,
}


def error_for_status(status: int, message: str) -> InspectionError:
    """The error a framework's answer of `status` stands for, with its code (`http_error` if none)."""
    kind = _FRAMEWORK_ERRORS.get(status)
    if kind is not None:
        return kind(message)
    error = InspectionError(message)
    error.status, error.code = status, "http_error"
    return error
