"""Step 3: gather concurrent requests for one model into batches.

Requests arrive here already decoded and resized (decoding happens per request,
in threads, while the previous batch runs on the model), so a bad image never
joins a batch. One dedicated thread runs the batches one after another; while it
runs, the next batch fills up. When the model is idle, a batch waits at most
`window_s` for company before it goes.

A batch holds at most `max_batch_size` images, and no more than the model runs in
`max_batch_s`, by its measured time per image: a request that arrives as a batch
starts waits for that batch, so a slow model (or a CPU, where a batch costs the
same per image as single images) runs small batches, and a fast one (a GPU) full ones.

A batch stacks into one tensor, so it holds images of one shape: requests of another shape
(frames of another size, where a model pads only to its stride) wait, in order, and the oldest
of them starts the next batch. A model fed one shape never holds any back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

# Runs one batch: list of per-image inputs, and whether any asked for the extra outputs -> list of
# per-image outputs.
BatchRunner = Callable[[list[np.ndarray], bool], list[list[np.ndarray]]]


class ModelRunError(RuntimeError):
    """The model failed on a batch; every request in that batch gets this error."""


@dataclass(frozen=True)
class BatchedResult:
    outputs: list[np.ndarray]  # this image's slice of every graph output
    queue_wait_s: float
    inference_s: float


@dataclass
class _Pending:
    item: np.ndarray
    future: asyncio.Future[BatchedResult]
    extra: bool  # the model's extra outputs are wanted (a heat map's features)
    enqueued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(
        self,
        run_batch: BatchRunner,
        *,
        max_batch_size: int,
        window_s: float,
        name: str,
        max_batch_s: float = float("inf"),
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._run_batch = run_batch
        self._name = name
        self._on_batch = on_batch
        self._max_batch_size = max_batch_size
        self._max_batch_s = max_batch_s
        self._window_s = window_s
        self._seconds_per_image: float | None = None  # moving average over the batches run so far
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._held: deque[_Pending] = deque()  # taken off the queue, not of the shape of the batch then formed
        self._loop_task: asyncio.Task[None] | None = None

    async def submit(self, item: np.ndarray, extra: bool = False) -> BatchedResult:
        """`item`'s outputs, once its batch has run; `extra`: with the extra outputs too (its batch fetches them)."""
        loop = asyncio.get_running_loop()
        task = self._loop_task
        # Queue and task are made lazily, so that they belong to the running event loop; the task is
        # started again should it ever have ended, so that no request waits on a loop that is gone.
        if task is None or task.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._held = deque()
        if task is None or task.done() or task.get_loop() is not loop:
            self._loop_task = loop.create_task(self._serve_batches())
        assert self._queue is not None
        pending = _Pending(item=item, future=loop.create_future(), extra=extra)
        self._queue.put_nowait(pending)
        return await pending.future

    def close(self) -> None:
        """Stop the batch loop and its thread; safe from any thread."""
        task = self._loop_task
        if task is not None and not task.get_loop().is_closed():
            task.get_loop().call_soon_threadsafe(task.cancel)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _serve_batches(self) -> None:
        assert self._queue is not None
        while True:
            batch: list[_Pending] = []
            try:
                await self._collect(self._queue, batch)
                await self._serve(batch)
            except Exception as exc:  # noqa: BLE001 - a failure anywhere fails this batch, never the loop
                if not batch:  # the queue itself failed: end this loop; the next request starts another
                    log.exception("the batch loop of %s failed", self._name)
                    raise
                if not isinstance(exc, ModelRunError):
                    log.exception("batch of %d for %s failed outside the model run", len(batch), self._name)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)

    async def _serve(self, batch: list[_Pending]) -> None:
        batch[:] = [p for p in batch if not p.future.done()]  # clients that gave up
        if not batch:
            return
        self._on_batch(len(batch))
        started = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [p.item for p in batch], any(p.extra for p in batch)
            )
        except Exception as exc:
            raise ModelRunError(f"{self._name}: the model run failed: {exc}") from exc
        inference_s = time.perf_counter() - started
        if len(outputs) != len(batch):
            raise ModelRunError(
                f"{self._name}: the model run returned {len(outputs)} results for {len(batch)} images; "
                "a batch runner must return one list of outputs per image, in order"
            )
        self._learn(inference_s / len(batch))
        for p, per_image in zip(batch, outputs, strict=True):
            if not p.future.done():
                p.future.set_result(
                    BatchedResult(
                        outputs=per_image,
                        queue_wait_s=started - p.enqueued_at,
                        inference_s=inference_s,
                    )
                )

    @property
    def batch_limit(self) -> int:
        """Images the next batch may hold: `max_batch_size`, or fewer when they would run over `max_batch_s`."""
        if self._seconds_per_image is None or self._seconds_per_image <= 0:
            return self._max_batch_size
        fits = self._max_batch_s / self._seconds_per_image
        return self._max_batch_size if fits >= self._max_batch_size else max(1, int(fits))

    def _learn(self, seconds_per_image: float) -> None:
        last = self._seconds_per_image
        self._seconds_per_image = seconds_per_image if last is None else 0.8 * last + 0.2 * seconds_per_image

    async def _collect(self, queue: asyncio.Queue[_Pending], batch: list[_Pending]) -> None:
        """Fill `batch` (the caller's, so that whatever was taken is answered even if this fails) with
        requests of one shape: the oldest held request's, else the next one's."""
        held, self._held = self._held, deque()
        batch.append(held.popleft() if held else await queue.get())
        shape = batch[0].item.shape
        limit = self.batch_limit
        for pending in held:
            (batch if pending.item.shape == shape and len(batch) < limit else self._held).append(pending)
        deadline = time.perf_counter() + self._window_s
        while len(batch) < limit:
            if not queue.empty():
                self._take(queue.get_nowait(), batch, shape)
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or self._held:  # waiting for company would keep the held requests waiting
                break
            try:
                self._take(await asyncio.wait_for(queue.get(), remaining), batch, shape)
            except TimeoutError:
                break

    def _take(self, pending: _Pending, batch: list[_Pending], shape: tuple[int, ...]) -> None:
        (batch if pending.item.shape == shape else self._held).append(pending)
