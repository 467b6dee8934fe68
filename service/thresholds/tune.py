"""Tune a served model's thresholds from labelled samples, through the running service.

    python -m service.thresholds.tune --url http://127.0.0.1:3000 --model weld-classifier --samples DIR \\
        [--target crack=0.99 ...] [--step 0.01] [--plot pr.png] [--json report.json] \\
        [--apply --author NAME --reason TEXT [--token TOKEN]]

Every image of DIR (layouts in `service.thresholds.samples`) is sent once to the model's
predict endpoint with every threshold at 0; the sweep (`service.thresholds.sweep`) then gives
per class precision, recall and F1 over the grid, proposes a threshold per class (the
highest meeting `--target` recall, else the best F1) and the outcome counts at the
current and the proposed set. `--apply` writes the proposal as a new revision, based on
the revision that was active when the sweep started (409 if it changed meanwhile).
Progress goes to stderr; the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.api.refusals import refusal
from service.manifest import ModelManifest
from service.tasks import ANSWERS, Answer, head_for
from service.thresholds.rules import parse_class_values
from service.thresholds.runner import run_sweep, sweep_options
from service.thresholds.samples import FolderFiles, LabelledImage, SampleSetError, read_samples
from service.thresholds.sweep import ClassTuning, SweepTally, TuningReport

TOKEN_ENV = "INSPECTION_ADMIN_TOKEN"


class TuneError(Exception):
    """A problem the user can fix: printed without a traceback."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except (TuneError, SampleSetError) as exc:
        print(f"tune: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> TuningReport:
    token = args.token or os.environ.get(TOKEN_ENV)
    if args.apply and not (args.author and args.reason and token):
        raise TuneError(f"--apply needs --author, --reason and a token (--token or {TOKEN_ENV})")
    with httpx.Client(base_url=args.url.rstrip("/"), timeout=args.timeout) as client:
        description = _ok(client.get(f"/v1/models/{args.model}"))
        manifest = ModelManifest.model_validate(description["manifest"])
        active = description["thresholds"]
        samples = read_samples(FolderFiles(args.samples), manifest, head_for(manifest).read_labels)
        tally = sweep(client, manifest, samples, args.samples, args.concurrency)
        try:
            report = tally.report(
                active["values"],
                active["revision"],
                active["nms_iou"],
                dict(args.target),
                args.step,
                _per_class(args.max_miss_rate, manifest, "--max-miss-rate"),
                _per_class(args.max_review_rate, manifest, "--max-review-rate"),
            )
        except ValueError as exc:
            raise TuneError(str(exc)) from exc
        print(render(report))
        if args.json:
            args.json.write_text(report.to_report().model_dump_json(indent=2) + "\n")
            print(f"\nreport written to {args.json}")
        if args.plot:
            plot(report, args.plot)
            print(f"precision/recall curves written to {args.plot}")
        if args.apply:
            body = {**report.to_report().proposal.model_dump(), "author": args.author, "reason": args.reason}
            applied = _ok(
                client.put(
                    f"/v1/models/{args.model}/thresholds", json=body, headers={"Authorization": f"Bearer {token}"}
                )
            )
            print(
                f"\napplied as revision {applied['revision']} (replaces {applied['replaces']}): {applied['thresholds']}"
            )
    return report


def sweep(
    client: httpx.Client, manifest: ModelManifest, samples: list[LabelledImage], root: Path, concurrency: int
) -> SweepTally:
    """Run the model once per image, every threshold at 0, `concurrency` requests at a time."""
    print(f"tune: {len(samples)} labelled images, {concurrency} requests at a time", file=sys.stderr, flush=True)

    async def over_http() -> SweepTally:
        async with httpx.AsyncClient(base_url=client.base_url, timeout=client.timeout) as session:

            async def predict(sample: LabelledImage) -> Answer:
                response = await session.post(
                    f"/v1/models/{manifest.name}/predict",
                    content=(root / sample.name).read_bytes(),
                    params=sweep_options(manifest),
                    headers={"Content-Type": "application/octet-stream"},
                )
                return ANSWERS.validate_python(_ok(response, sample.name))

            return await run_sweep(
                manifest,
                samples,
                predict,
                concurrency,
                lambda line: print(f"tune: {line}", file=sys.stderr, flush=True),
            )

    return asyncio.run(over_http())


def render(report: TuningReport) -> str:
    """The report as text tables: per class at the proposed and the current threshold, and the confusion."""
    manifest = report.manifest
    lines = [
        f"{manifest.ref} ({manifest.task.value}), {report.images} labelled images, "
        f"thresholds revision {report.revision}"
        + (f", NMS IoU {report.nms_iou}" if report.nms_iou is not None else ""),
        f"positive: {report.positive}",
        "",
        f"{'class':<12}{'positives':>10}  {'':<6}{'threshold':>10}{'precision':>10}{'recall':>8}{'F1':>7}"
        f"{'TP':>6}{'FP':>6}{'FN':>6}  basis",
    ]
    for name, tuning in report.classes.items():
        lines.append(_row(name, tuning.positives, "now", report.current[name], tuning.at_current, ""))
        lines.append(_row("", None, "tuned", tuning.choice.threshold, tuning.at_proposal, _basis(tuning)))
    if report.confusion is not None:
        labels, matrix = report.confusion
        width = max(10, *(len(label) + 2 for label in labels))
        lines += ["", "confusion at the proposed thresholds (rows: labelled, columns: decided)"]
        lines.append(" " * width + "".join(f"{label:>{width}}" for label in labels))
        for label, row in zip(labels, matrix, strict=True):
            lines.append(f"{label:<{width}}" + "".join(f"{count:>{width}d}" for count in row))
    bands = {name: tuning.band for name, tuning in report.classes.items() if tuning.band is not None}
    if bands:
        lines += ["", "review bands (from the review threshold up to the proposed threshold)"]
        lines.append(
            f"{'class':<12}{'review':>8}{'reject':>8}{'reviewed':>10}{'review rate':>13}{'missed':>8}{'miss rate':>11}"
        )
        for name, band in bands.items():
            miss = "-" if band.miss_rate is None else f"{band.miss_rate:.3f}"
            targets = []
            if band.max_miss_rate is not None:
                targets.append(f"miss <= {band.max_miss_rate:g} {'met' if band.miss_target_met else 'NOT met'}")
            if band.max_review_rate is not None:
                targets.append(f"review <= {band.max_review_rate:g} {'met' if band.review_target_met else 'NOT met'}")
            lines.append(
                f"{name:<12}{band.review_threshold:>8g}{band.reject_threshold:>8g}{band.reviewed:>10}"
                f"{band.review_rate:>13.3f}{band.missed:>8}{miss:>11}  {'; '.join(targets)}"
            )
    proposal = ", ".join(f"{name}={value:g}" for name, value in report.proposal.items())
    lines += ["", f"proposal (based on revision {report.revision}): {proposal}"]
    if bands:
        lines.append("review thresholds: " + ", ".join(f"{n}={b.review_threshold:g}" for n, b in bands.items()))
    return "\n".join(lines)


def _per_class(text: str | None, manifest: ModelManifest, flag: str) -> dict[str, float]:
    """`crack=0.01,porosity=0.02` or one value for every defect class."""
    if not text:
        return {}
    try:
        return parse_class_values(text, manifest.defect_classes, flag)
    except ValueError as exc:
        raise TuneError(str(exc)) from None


def _row(name: str, positives: int | None, which: str, threshold: float, at: Any, basis: str) -> str:
    def ratio(values: np.ndarray) -> str:
        return "-" if np.isnan(values[0]) else f"{values[0]:.3f}"

    shown = "" if positives is None else str(positives)
    return (
        f"{name:<12}{shown:>10}  {which:<6}{threshold:>10g}{ratio(at.precision):>10}{ratio(at.recall):>8}"
        f"{ratio(at.f1):>7}{int(at.tp[0]):>6}{int(at.fp[0]):>6}{int(at.fn[0]):>6}  {basis}"
    ).rstrip()


def _basis(tuning: ClassTuning) -> str:
    choice = tuning.choice
    if choice.basis == "target_recall":
        return f"recall >= {choice.target_recall:g}" + ("" if choice.target_met else " NOT MET: best recall reachable")
    if choice.basis == "max_f1":
        return "best F1"
    return "unchanged: no labelled positives"


def plot(report: TuningReport, path: Path) -> None:
    """Per class: precision, recall and F1 against the threshold, and precision against recall,
    with the current and the proposed thresholds marked."""
    try:
        import matplotlib
    except ImportError:
        raise TuneError(
            "--plot needs matplotlib, which the serving install leaves out: pip install matplotlib"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(report.classes)
    figure, axes = plt.subplots(rows, 2, figsize=(11, 3.4 * rows), squeeze=False)
    for (name, tuning), (left, right) in zip(report.classes.items(), axes, strict=True):
        curve = tuning.curve
        left.plot(curve.thresholds, curve.precision, label="precision")
        left.plot(curve.thresholds, curve.recall, label="recall")
        left.plot(curve.thresholds, curve.f1, label="F1", linestyle="--")
        left.axvline(report.current[name], color="grey", linestyle=":", label=f"current {report.current[name]:g}")
        left.axvline(tuning.choice.threshold, color="black", label=f"proposed {tuning.choice.threshold:g}")
        left.set(title=f"{name} ({tuning.positives} positives)", xlabel="threshold", xlim=(0, 1), ylim=(-0.02, 1.02))
        left.legend(loc="best", fontsize="small", framealpha=0.8)
        right.plot(curve.recall, curve.precision, marker=".", markersize=3)
        right.plot(tuning.at_current.recall, tuning.at_current.precision, "o", color="grey", label="current")
        right.plot(tuning.at_proposal.recall, tuning.at_proposal.precision, "o", color="black", label="proposed")
        right.set(title=f"{name}: precision against recall", xlabel="recall", ylabel="precision")
        right.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        right.legend(loc="best", fontsize="small", framealpha=0.8)
    figure.suptitle(f"{report.manifest.ref}: {report.images} labelled images")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _ok(response: httpx.Response, what: str = "") -> dict[str, Any]:
    if response.status_code == 200:
        return response.json()
    raise TuneError(f"{what}: {refusal(response)}" if what else refusal(response))


def _target(text: str) -> tuple[str, float]:
    try:
        ((name, recall),) = parse_class_values(text, None, "a target").items()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected CLASS=RECALL with RECALL from 0 to 1, e.g. crack=0.99: {exc}"
        ) from None
    return name, recall


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.thresholds.tune",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service (default %(default)s)")
    parser.add_argument("--model", required=True, help="served model name, e.g. weld-classifier")
    parser.add_argument(
        "--samples", type=Path, required=True, help="folder of labelled images (see service.thresholds.samples)"
    )
    parser.add_argument(
        "--target",
        type=_target,
        action="append",
        default=[],
        metavar="CLASS=RECALL",
        help="target recall of a class, e.g. crack=0.99 (repeatable); other classes get the best F1",
    )
    parser.add_argument(
        "--max-miss-rate",
        metavar="CLASS=RATE",
        help="review band: the share of a class's labelled defects that may escape, e.g. crack=0.01 (or one value)",
    )
    parser.add_argument(
        "--max-review-rate",
        metavar="CLASS=RATE",
        help="review band: the share of parts the line can review, e.g. 0.05 (or per class)",
    )
    parser.add_argument("--step", type=float, default=0.01, help="threshold grid step (default %(default)s)")
    parser.add_argument("--plot", type=Path, help="write per-class precision/recall curves to this PNG")
    parser.add_argument("--json", type=Path, help="write the full report (curves included) as JSON")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default %(default)s)")
    parser.add_argument("--apply", action="store_true", help="write the proposal as a new thresholds revision")
    parser.add_argument("--token", help=f"bearer token for --apply (default: ${TOKEN_ENV})")
    parser.add_argument("--author", help="who applies the proposal (with --apply)")
    parser.add_argument("--reason", help="why, for the audit trail (with --apply)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
