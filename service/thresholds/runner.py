"""The sweep runner: a labelled sample set through the model, every threshold at 0, into a tally.

One runner for both ways a sweep runs: the service's sweep route (each sample through the model's
predictor in the server) and `python -m service.thresholds.tune` (each sample over HTTP to a running
service). They differ only in `predict`, which gives one sample's typed answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from service.manifest import ModelManifest
from service.tasks import Answer, head_for
from service.thresholds.samples import LabelledImage
from service.thresholds.sweep import Progress, SweepTally


def sweep_options(manifest: ModelManifest) -> dict[str, str]:
    """The options of a sweep's predictions: every defect class at threshold 0, so that every score counts."""
    return {"thresholds": ",".join(f"{name}:0" for name in manifest.defect_classes)}


async def run_sweep(
    manifest: ModelManifest,
    samples: list[LabelledImage],
    predict: Callable[[LabelledImage], Awaitable[Answer]],
    concurrency: int,
    say: Callable[[str], None],
) -> SweepTally:
    """Each sample's answer from `predict`, `concurrency` at a time, tallied against its labels; a
    progress line through `say` every few seconds."""
    tally = SweepTally(manifest, head_for(manifest).evidence(manifest))
    progress = Progress(len(samples), say)
    limit = asyncio.Semaphore(concurrency)

    async def run(sample: LabelledImage) -> Answer:
        async with limit:
            answer = await predict(sample)
        progress.advance()
        return answer

    answers = await asyncio.gather(*(run(sample) for sample in samples))
    for sample, answer in zip(samples, answers, strict=True):
        tally.add(sample.truth, answer, sample.name)
    return tally
