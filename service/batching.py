"""Step 3: gather concurrent requests for one model into batches.

Requests arrive here already decoded and resized (decoding happens per request,
in threads, while the previous batch runs on the model), so a bad image never
joins a batch. One dedicated thread runs the batches one after another; while it
runs, the next batch fills up. When the model is idle, a batch waits at most
`window_s` for company before it goes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

# Runs one batch: list of per-image inputs -> list of per-image outputs.
BatchRunner = Callable[[list[np.ndarray]], list[list[np.ndarray]]]


@dataclass(frozen=True)
class BatchedResult:
    outputs: list[np.ndarray]  # this image's slice of every graph output
    batch_size: int
    queue_wait_s: float
    inference_s: float


@dataclass
class _Pending:
    item: np.ndarray
    future: asyncio.Future[BatchedResult]
    enqueued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(
        self,
        run_batch: BatchRunner,
        *,
        max_batch_size: int,
        window_s: float,
        name: str,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._run_batch = run_batch
        self._on_batch = on_batch
        self._max_batch_size = max_batch_size
        self._window_s = window_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def submit(self, item: np.ndarray) -> BatchedResult:
        if self._loop_task is None:
            # Created lazily so that queue and task belong to the server's event loop.
            self._queue = asyncio.Queue()
            self._loop_task = asyncio.get_running_loop().create_task(self._serve_batches())
        assert self._queue is not None
        pending = _Pending(item=item, future=asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _serve_batches(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(self._queue)
            batch = [p for p in batch if not p.future.done()]  # clients that gave up
            if not batch:
                continue
            self._on_batch(len(batch))
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self._run_batch, [p.item for p in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            inference_s = time.perf_counter() - started
            for p, per_image in zip(batch, outputs, strict=True):
                if not p.future.done():
                    p.future.set_result(
                        BatchedResult(
                            outputs=per_image,
                            batch_size=len(batch),
                            queue_wait_s=started - p.enqueued_at,
                            inference_s=inference_s,
                        )
                    )

    async def _collect(self, queue: asyncio.Queue[_Pending]) -> list[_Pending]:
        batch = [await queue.get()]
        deadline = time.perf_counter() + self._window_s
        while len(batch) < self._max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return batch
