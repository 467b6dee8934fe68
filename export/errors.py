"""The one error an export raises when it refuses to write a model version."""

from __future__ import annotations

import re

from pydantic import ValidationError

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_MAX_REASON = 300


class ExportError(Exception):
    """The export (or import) was refused; nothing was written. The message is one line."""


def reason(exc: BaseException) -> str:
    """The first line of the innermost cause: torch wraps the useful message in several layers."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = _ANSI_ESCAPE.sub("", str(exc)).strip().splitlines()
    line = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


def validation_message(exc: ValidationError) -> str:
    """The first pydantic complaint as `field: message`, without pydantic's prefixes."""
    error = exc.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {message}" if location else message
