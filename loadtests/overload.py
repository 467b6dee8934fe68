"""Overload: more cameras than the service can answer, first with no latency budget, then with one.

    python -m loadtests.overload --station weld-classifier@2592x1944 --cameras 256 --budget-ms 1000
    python -m loadtests.overload --model-store /tmp/store --station weld-resnet18@640x480 --cameras 32 \
        --retry-ms 0 --variant before:ref=HEAD~3

Starts a server on 127.0.0.1 per variant (this checkout's code with default settings unless
`--variant` names others, as the benchmark's do: `NAME:setting=value,ref=COMMIT|code=PATH`; each
stopped by PID at the end), then runs two phases on it, each for `--seconds`: every camera posts
its frame, waits for the answer, and posts again at once; a refused camera (503) waits as
`Retry-After` says, or `--retry-ms` (0: no back-off at all, as load tools behave); with
`--expect-continue` a camera sends `Expect: 100-continue` and its frame only once admitted. The
first phase sends a budget no request can exceed (every request is admitted, as without admission),
the second `--budget-ms`. For each it prints the answers per second and those within the budget,
the refusals, the admitted answers' latency as the cameras saw it (p50, p95, p99, the share within
the budget), and the share the server's own histogram counts within the largest bucket bound under
the budget (the cameras' figure also holds the client's share of the cores on a shared host).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from loadtests.benchmark import Variant, running_service
from loadtests.frames import Station, line_frames
from loadtests.server import MODEL_STORE, model_samples
from service.api.predictions import LATENCY_BUDGET_HEADER
from service.metrics import LATENCY_BUCKETS

NO_BUDGET_MS = 600_000  # the largest budget a request may carry


@dataclass
class Phase:
    budget_ms: float
    seconds: float
    latencies_s: list[float]
    refused: int
    failed: int
    server_within: tuple[float, float]  # (bucket bound in seconds, share of 200 answers within it)

    @property
    def answered_per_s(self) -> float:
        return len(self.latencies_s) / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) * 1000 if self.latencies_s else float("nan")

    @property
    def within_budget(self) -> float:
        if not self.latencies_s:
            return float("nan")
        return float(np.mean(np.array(self.latencies_s) <= self.budget_ms / 1000))

    @property
    def within_budget_per_s(self) -> float:
        """Answers that came within the budget, per second: what a line can use."""
        return float(np.sum(np.array(self.latencies_s) <= self.budget_ms / 1000)) / self.seconds


async def run_phase(
    url: str,
    station: Station,
    cameras: int,
    budget_ms: float,
    seconds: float,
    retry_ms: float | None = None,
    expect_continue: bool = False,
) -> Phase:
    """`cameras` cameras posting to `station` for `seconds`. A refused camera waits `retry_ms`, or what
    `Retry-After` says; with `expect_continue` each sends its frame only once the server asks for it."""
    frames = line_frames(station.width, station.height)
    endpoint = f"{url}/v1/models/{station.model}/predict"
    headers = {"Content-Type": "image/jpeg", LATENCY_BUDGET_HEADER: f"{budget_ms:g}"}
    latencies: list[float] = []
    refused = failed = 0
    before = await _answers_within(url, station.model, budget_ms)
    deadline = time.perf_counter() + seconds

    async def camera(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal refused, failed
        frame = frames[index % len(frames)]
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                async with session.post(endpoint, data=frame, headers=headers, expect100=expect_continue) as answer:
                    await answer.read()
                    status, retry_after = answer.status, answer.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError):
                failed += 1
                continue
            if status == 200:
                latencies.append(time.perf_counter() - started)
            elif status == 503 and retry_after is not None:
                refused += 1
                wait_s = float(retry_after) if retry_ms is None else retry_ms / 1000
                await asyncio.sleep(min(wait_s, max(0.0, deadline - time.perf_counter())))
            else:
                failed += 1

    connector = aiohttp.TCPConnector(limit=cameras)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(camera(session, index) for index in range(cameras)))
    after = await _answers_within(url, station.model, budget_ms)
    bound, within_before, total_before = before
    _, within_after, total_after = after
    answered = total_after - total_before
    share = (within_after - within_before) / answered if answered else float("nan")
    return Phase(budget_ms, seconds, latencies, refused, failed, (bound, share))


async def _answers_within(url: str, model: str, budget_ms: float) -> tuple[float, float, float]:
    """(the largest latency bucket bound within the budget, answers counted within it, all answers), from /metrics."""
    bound = max((b for b in LATENCY_BUCKETS if b <= budget_ms / 1000), default=LATENCY_BUCKETS[0])
    within = total = 0.0
    for sample in await model_samples(url, model, "inspection_request_duration_seconds"):
        labels = sample.labels
        if labels.get("status") != "200" or not sample.name.endswith("_bucket"):
            continue
        if labels["le"] == "+Inf":
            total += sample.value
        elif float(labels["le"]) == bound:
            within += sample.value
    return bound, within, total


def report(phase: Phase, label: str) -> str:
    bound_s, server_share = phase.server_within
    return (
        f"{label:>10}: {phase.answered_per_s:6.1f} answers/s ({phase.within_budget_per_s:.1f} within the budget), "
        f"{phase.refused} refused, {phase.failed} failed; "
        f"admitted p50 {phase.percentile_ms(50):.0f} ms, p95 {phase.percentile_ms(95):.0f}, "
        f"p99 {phase.percentile_ms(99):.0f}, {100 * phase.within_budget:.1f}% within {phase.budget_ms:g} ms; "
        f"server: {100 * server_share:.1f}% within {1000 * bound_s:g} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--station", type=Station.parse, default=Station.parse("weld-classifier@2592x1944"))
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument("--cameras", type=int, default=256)
    parser.add_argument("--budget-ms", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--variant",
        type=Variant.parse,
        action="append",
        default=[],
        help="a server to run the phases on, NAME:key=value,... as the benchmark's (default: this checkout)",
    )
    parser.add_argument(
        "--retry-ms", type=float, default=None, help="a refused camera's wait (default: what Retry-After says)"
    )
    parser.add_argument(
        "--expect-continue", action="store_true", help="cameras send Expect: 100-continue (no upload when refused)"
    )
    args = parser.parse_args()
    camera = {"retry_ms": args.retry_ms, "expect_continue": args.expect_continue}
    print(
        f"{args.station.label}, {args.cameras} cameras, {args.seconds:g} s per phase, {os.cpu_count()} cores; "
        f"refused cameras wait {'Retry-After' if args.retry_ms is None else f'{args.retry_ms:g} ms'}"
        f"{', Expect: 100-continue' if args.expect_continue else ''}"
    )
    for variant in args.variant or [Variant("this")]:
        # Each server can hold every camera's request: what is measured is admission, not the limit.
        variant.env.setdefault("INSPECTION_MAX_CONCURRENCY", str(args.cameras))
        with tempfile.TemporaryDirectory() as logs:
            with running_service(variant, args.model_store, [args.station.model], Path(logs)) as server:
                phases = {}
                for label, budget in (("no budget", NO_BUDGET_MS), ("budget", args.budget_ms)):
                    phase = asyncio.run(
                        run_phase(server.url, args.station, args.cameras, budget, args.seconds, **camera)
                    )
                    print(report(phase, f"[{variant.name}] {label}"), flush=True)
                    phases[label] = phase
        saturated = phases["no budget"].answered_per_s
        print(
            f"[{variant.name}] with the budget / without: answers/s {phases['budget'].answered_per_s / saturated:.2f}, "
            f"answers within the budget/s {phases['budget'].within_budget_per_s / saturated:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
