"""How the service's own command-line clients say what the service refused."""

from __future__ import annotations

import httpx


def refusal(response: httpx.Response) -> str:
    """`METHOD PATH answered STATUS, code: message` from an error answer (its text when it is no JSON error)."""
    try:
        error = response.json()["error"]
        message = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    return f"{response.request.method} {response.request.url.path} answered {response.status_code}, {message}"
