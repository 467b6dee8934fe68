"""What changing batch sizes cost a model on this host's provider, and what fixed batch shapes give back.

    python -m loadtests.batch_shapes                      # the demo models, INSPECTION_PROVIDER's provider
    INSPECTION_PROVIDER=cuda python -m loadtests.batch_shapes --runs 400

For each model, the model alone (no decoding, no HTTP), three ways of running the same stream of
batches, whose sizes cycle through 1..max_batch_size as a micro-batcher under uneven load makes them:

- `same size`: every run at the largest size, one session: the model's best case per run;
- `any size`: each batch as it is, on one session that takes any batch size;
- `fixed shapes`: each batch padded up to its bucket (1, 2, 4, ... max), one session per bucket:
  what the service does with `INSPECTION_FIXED_BATCH_SHAPES=true`.

It reports wall and CPU milliseconds per run and per image. The service turns fixed shapes on by
default where `any size` costs much more per run than `same size` (GPU providers), and leaves them
off where it does not (CPU). Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from loadtests.benchmark import own_cpu_seconds
from loadtests.server import ROOT
from service.config import Settings
from service.model_store import load_version, model_names
from service.pipeline.runtime import InferenceSession, RuntimeOptions, batch_buckets, create_session


@dataclass(frozen=True)
class Timing:
    model: str
    way: str
    runs: int
    images: int
    wall_ms_per_run: float
    cpu_ms_per_run: float
    wall_ms_per_image: float


def time_runs(session: InferenceSession, sizes: list[int], model: str, way: str) -> Timing:
    shapes = {session.batch_rows(images) for images in sizes}
    inputs = {rows: np.zeros((rows, *session.input_shape), dtype=session.input_dtype) for rows in shapes}
    for rows in inputs:
        session.run(inputs[rows])  # first runs of each shape are start-up's, not the stream's
    started, cpu_before = time.perf_counter(), own_cpu_seconds()
    for images in sizes:
        rows = session.batch_rows(images)
        session.run(inputs[rows], images)
    wall, cpu = time.perf_counter() - started, own_cpu_seconds() - cpu_before
    return Timing(
        model, way, len(sizes), sum(sizes), 1000 * wall / len(sizes), 1000 * cpu / len(sizes), 1000 * wall / sum(sizes)
    )


def measure(model: str, settings: Settings, runtime: RuntimeOptions, runs: int) -> list[Timing]:
    version = load_version(settings.model_store, model)
    manifest = version.manifest
    if not manifest.input.dynamic_batch:
        return []
    largest = settings.max_batch_size
    cycling = [1 + i % largest for i in range(runs)]
    names = {"input_name": manifest.input.name, "output_names": manifest.output.names}
    any_size = create_session(version.onnx_path, runtime, **names)
    buckets = batch_buckets(largest)
    fixed = create_session(version.onnx_path, runtime, **names, batch_sizes=buckets)
    fixed_sizes = [min(b for b in buckets if b >= n) for n in cycling]
    return [
        time_runs(any_size, [largest] * runs, model, f"same size ({largest})"),
        time_runs(any_size, cycling, model, f"any size (1..{largest})"),
        time_runs(fixed, cycling, model, f"fixed shapes ({', '.join(map(str, buckets))}; {sum(fixed_sizes)} rows run)"),
    ]


def markdown_table(timings: list[Timing]) -> str:
    lines = [
        "| model | batches | wall ms/run | CPU ms/run | wall ms/image |",
        "|---|---|---|---|---|",
    ]
    for t in timings:
        lines.append(
            f"| {t.model} | {t.way} | {t.wall_ms_per_run:.2f} | {t.cpu_ms_per_run:.2f} | {t.wall_ms_per_image:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="models of the store (default: all)")
    parser.add_argument("--runs", type=int, default=160, help="batches per way of running")
    parser.add_argument("--json", type=Path, default=ROOT / "loadtests" / "results" / "batch_shapes.json")
    args = parser.parse_args(argv)
    settings = Settings()
    runtime = RuntimeOptions.from_settings(settings)
    print(f"provider {runtime.provider}, {runtime.threads} onnxruntime thread(s), {args.runs} batches each", flush=True)
    timings = []
    for model in args.models or model_names(settings.model_store):
        found = measure(model, settings, runtime, args.runs)
        for timing in found:
            print(f"  {model}: {timing.way}: {timing.wall_ms_per_run:.2f} ms per run", flush=True)
        timings += found
    print(markdown_table(timings))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"provider": runtime.provider, "host": platform.node(), "timings": [asdict(t) for t in timings]}, indent=2
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
