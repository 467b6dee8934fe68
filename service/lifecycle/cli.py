"""`python -m service.lifecycle.cli`: a model's versions on a running service, from a terminal.

    python -m service.lifecycle.cli repository
    python -m service.lifecycle.cli status weld-classifier
    python -m service.lifecycle.cli history weld-classifier
    python -m service.lifecycle.cli activate weld-classifier 2 --author NAME --reason WHY   (or `latest`)
    python -m service.lifecycle.cli rollback weld-classifier --author NAME --reason WHY
    python -m service.lifecycle.cli pin weld-classifier --author NAME --reason WHY          (and `unpin`)
    python -m service.lifecycle.cli load weld-classifier [2] --author NAME --reason WHY     (and `unload`)
    python -m service.lifecycle.cli shadow weld-classifier 2 --share 0.5 --keep-frames 20 --author NAME --reason WHY
    python -m service.lifecycle.cli report weld-classifier [--run N]
    python -m service.lifecycle.cli stop-shadow weld-classifier --author NAME --reason WHY

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
    if args.command == "repository":
        return "\n".join(
            f"{m['model']}: {m['state']} (revision {m['revision']}); "
            + ", ".join(f"{v['version']} {v['state']}" for v in m["versions"])
            for m in _ok(client.get("/v1/repository"))["models"]
        )
    base = f"/v1/models/{args.model}/versions"
    if args.command == "status":
        state = _ok(client.get(base))
        shadow = state["shadow"]
        return (
            f"{args.model}: "
            + (f"version {state['active']} active" if state["served"] else f"unloaded (version {state['active']})")
            + f" (revision {state['revision']}{', pinned' if state['pinned'] else ''})"
            + (f"; version {shadow['version']} in shadow on {shadow['share']:.0%} of frames" if shadow else "")
            + f"; loaded {state['loaded']}; in the store {state['in_store']}"
        )
    if args.command == "history":
        return "\n".join(_line(r) for r in _ok(client.get(f"{base}/history"))["revisions"])
    if args.command == "report":
        return _report(_ok(client.get(f"/v1/models/{args.model}/shadow", params=_given(run=args.run))))
    token = args.token or os.environ.get(TOKEN_ENV)
    if not (token and args.author and args.reason):
        raise LifecycleError(f"{args.command} needs --author, --reason and a token (--token or {TOKEN_ENV})")
    body: dict[str, Any] = {
        "author": args.author,
        "reason": args.reason,
        "expected_revision": _ok(client.get(base))["revision"],
    }
    path = f"{base}/{args.command}"
    if args.command == "activate":
        body["version"] = args.version if args.version == "latest" else int(args.version)
    elif args.command in ("pin", "unpin"):
        path, body["pinned"] = f"{base}/pin", args.command == "pin"
    elif args.command in ("load", "unload"):
        model = f"/v1/models/{args.model}"
        path = f"{model}/{args.command}" if args.version is None else f"{base}/{int(args.version)}/{args.command}"
    elif args.command == "shadow":
        path = f"/v1/models/{args.model}/shadow"
        body.update(
            version=args.version if args.version == "latest" else int(args.version),
            share=args.share,
            keep_frames=args.keep_frames,
        )
    elif args.command == "stop-shadow":
        path = f"/v1/models/{args.model}/shadow/stop"
    change = _ok(client.post(path, json=body, headers={"Authorization": f"Bearer {token}"}))
    shown = _line(change)
    if "workers_switched" in change:
        switched = len(change["workers_switched"])
        when = change["all_switched_at"]
        shown += f"\n{switched} worker(s) switched" + (f", the last at {when}" if when else ", not all yet")
    return shown


def _line(revision: dict[str, Any]) -> str:
    state = [f"version {revision['version']}" + ("" if revision["served"] else " (unloaded)")]
    if revision["loaded"]:
        state.append(f"also loaded {revision['loaded']}")
    if revision["shadow"]:
        state.append(f"shadow {revision['shadow']['version']} on {revision['shadow']['share']:.0%}")
    if revision["pinned"]:
        state.append("pinned")
    return (
        f"revision {revision['revision']} {revision['kind']}: {', '.join(state)} "
        f"by {revision['author']} at {revision['created_at']}: {revision['reason']}"
    )


def _report(report: dict[str, Any]) -> str:
    """A shadow run's report, as a QA engineer reads it."""

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    lines = [
        f"{report['model']} shadow run {report['run']} ({'running' if report['running'] else 'ended'}): "
        f"version {report['candidate']} beside {report['active']} on {report['share']:.0%} of frames, "
        f"started by {report['started_by']} at {report['started_at']}",
        f"frames compared {report['compared']}, shed {report['shed']}, failed {report['failed']}; "
        f"agree on everything {share(report['agreement'])}, on the decision {share(report['decision_agreement'])}",
        "confusion (active -> candidate): "
        + (
            ", ".join(
                f"{active}->{candidate} {count}"
                for active, row in sorted(report["confusion"].items())
                for candidate, count in sorted(row.items())
            )
            or "-"
        ),
    ]
    for name, agreement in report["classes"].items():
        iou = "" if agreement["mean_iou"] is None else f", mean IoU {agreement['mean_iou']:.3f}"
        lines.append(f"  {name}: decision {share(agreement['decision'])}, label {share(agreement['label'])}{iou}")
    active, candidate = report["latency"]["active"], report["latency"]["candidate"]
    lines.append(
        f"latency (image to answer): active mean {ms(active['mean_ms'])}, p99 <= {ms(active['p99_ms'])}; "
        f"candidate mean {ms(candidate['mean_ms'])}, p99 <= {ms(candidate['p99_ms'])}; "
        f"difference {ms(report['latency_difference_ms'])}"
    )
    lines.append(f"disagreeing frames kept: {report['kept_frames']}")
    return "\n".join(lines)


def _given(**params: Any) -> dict[str, Any]:
    return {name: value for name, value in params.items() if value is not None}


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code == 200:
        return response.json()
    raise LifecycleError(refusal(response))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service.lifecycle.cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the service (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("repository", help="every model in the store: served or not, each version's state")
    for name, text in (
        ("status", "the active, loaded and stored versions"),
        ("history", "every revision"),
        ("report", "the shadow run's agreement report"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("model")
        if name == "report":
            command.add_argument("--run", type=int, help="an earlier run: the revision that started it")
    for name, text in (
        ("activate", "make a version active on every worker"),
        ("rollback", "back to the version active before this one"),
        ("pin", "keep the active version: new exports do not go live by themselves"),
        ("unpin", "let new exports go live by themselves again (INSPECTION_ACTIVATE_NEW_VERSIONS)"),
        ("load", "load the model, or a version of it beside the active one"),
        ("unload", "unload the model (it answers 404), or a version loaded beside the active one"),
        ("shadow", "run a candidate version on a share of the traffic, compared with the active one"),
        ("stop-shadow", "end the shadow run"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("model")
        if name in ("activate", "shadow"):
            command.add_argument("version", help="a version number, or `latest`")
        if name in ("load", "unload"):
            command.add_argument("version", nargs="?", help="a version (default: the whole model)")
        if name == "shadow":
            command.add_argument("--share", type=float, default=1.0, help="of the frames (default %(default)s)")
            command.add_argument(
                "--keep-frames", type=int, default=0, help="disagreeing frames kept for review (default none)"
            )
        command.add_argument("--author", help="who makes the change")
        command.add_argument("--reason", help="why, for the history")
        command.add_argument("--token", help=f"the admin token (default: ${TOKEN_ENV})")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
