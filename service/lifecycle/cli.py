"""`python -m service.lifecycle.cli`: a model's versions on a running service, from a terminal.

    python -m service.lifecycle.cli status weld-classifier
    python -m service.lifecycle.cli history weld-classifier
    python -m service.lifecycle.cli activate weld-classifier 2 --author NAME --reason WHY   (or `latest`)
    python -m service.lifecycle.cli rollback weld-classifier --author NAME --reason WHY
    python -m service.lifecycle.cli pin weld-classifier --author NAME --reason WHY          (and `unpin`)

Changes need the admin token (`--token`, or INSPECTION_ADMIN_TOKEN) and are based on the revision
just read: a change made by someone else in between is refused (409), never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx

from service.api.refusals import refusal

TOKEN_ENV = "INSPECTION_ADMIN_TOKEN"


class LifecycleError(Exception):
    """The service refused, or could not be reached."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with httpx.Client(base_url=args.url.rstrip("/"), timeout=args.timeout) as client:
            print(run(client, args))
    except (LifecycleError, httpx.HTTPError) as exc:
        print(f"versions: {exc}", file=sys.stderr)
        return 1
    return 0


def run(client: httpx.Client, args: argparse.Namespace) -> str:
    base = f"/v1/models/{args.model}/versions"
    if args.command == "status":
        state = _ok(client.get(base))
        return (
            f"{args.model}: version {state['active']} active (revision {state['revision']}"
            f"{', pinned' if state['pinned'] else ''}); loaded {state['loaded']}; in the store {state['in_store']}"
        )
    if args.command == "history":
        return "\n".join(_line(r) for r in _ok(client.get(f"{base}/history"))["revisions"])
    token = args.token or os.environ.get(TOKEN_ENV)
    if not (token and args.author and args.reason):
        raise LifecycleError(f"{args.command} needs --author, --reason and a token (--token or {TOKEN_ENV})")
    body: dict[str, Any] = {
        "author": args.author,
        "reason": args.reason,
        "expected_revision": _ok(client.get(base))["revision"],
    }
    route = args.command
    if args.command == "activate":
        body["version"] = args.version if args.version == "latest" else int(args.version)
    elif args.command in ("pin", "unpin"):
        route, body["pinned"] = "pin", args.command == "pin"
    change = _ok(client.post(f"{base}/{route}", json=body, headers={"Authorization": f"Bearer {token}"}))
    shown = _line(change)
    if "workers_switched" in change:
        switched = len(change["workers_switched"])
        when = change["all_switched_at"]
        shown += f"\n{switched} worker(s) switched" + (f", the last at {when}" if when else ", not all yet")
    return shown


def _line(revision: dict[str, Any]) -> str:
    pinned = ", pinned" if revision["pinned"] else ""
    return (
        f"revision {revision['revision']} {revision['kind']}: version {revision['version']}{pinned} "
        f"by {revision['author']} at {revision['created_at']}: {revision['reason']}"
    )


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code == 200:
        return response.json()
    raise LifecycleError(refusal(response))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service.lifecycle.cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the service (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("status", "the active, loaded and stored versions"), ("history", "every revision")):
        commands.add_parser(name, help=text).add_argument("model")
    for name, text in (
        ("activate", "make a version active on every worker"),
        ("rollback", "back to the version active before this one"),
        ("pin", "keep the active version: new exports do not go live by themselves"),
        ("unpin", "let new exports go live by themselves again (INSPECTION_ACTIVATE_NEW_VERSIONS)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("model")
        if name == "activate":
            command.add_argument("version", help="a version number, or `latest`")
        command.add_argument("--author", help="who makes the change")
        command.add_argument("--reason", help="why, for the history")
        command.add_argument("--token", help=f"the admin token (default: ${TOKEN_ENV})")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
