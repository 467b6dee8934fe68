"""Admission: a prediction is taken on only when it can be answered within its latency budget, and is
refused only once it no longer can be.

A camera's answer is worthless once its budget has passed, and every request admitted beyond what
the model can answer in time makes all the others behind it late too. Per worker (one event loop:
plain counters are safe) and per model:

- A request's expected latency is the work ahead of it, the predictions ahead x the model's measured
  pace (the seconds between two answers while it was busy: Little's law), plus its own time: the
  99th percentile, over the model's answers of the last `OWN_TIME_WINDOW_S` admitted behind about
  as many, of what their latency was beyond the work ahead of them (their upload, decode, batch and
  answer, and the spread of the queue; see `OwnTime`). Both are learnt from the answers as they go:
  they follow a change of load or frame size within seconds, evidence older than the window is
  forgotten, and a queue deeper than any seen lately is entered a step at a time.
- Decided from the headers, before the body is read: a request that would be answered in time is
  admitted at once; one that would not waits, its body unread, in the model's waiting room, and is
  admitted as soon as answers going out make room for it in time (the one with the most time left
  first: see `_WaitingRoom`). It is refused with 503 and `Retry-After` only once even an idle model
  could no longer answer it within its budget (by the answers of an idle model alone: deeper ones
  would refuse at once what an emptier queue may still answer, and every retry with it), or at once
  when `limit` requests are already admitted on this worker. A model with nothing ahead admits any
  request whose budget is at least one pace: no one could answer it sooner, and its answer is fresh
  evidence after a slowdown. So nothing that would have been answered in time is refused, and a
  client that retries at once, as load tools do, is held for most of its budget instead of spinning
  through refusals that cost the server as much as answers. A camera that sends
  `Expect: 100-continue` never uploads a refused frame.
- Uploads in progress are not yet work for the model: an admitted request counts ahead of others
  while its body keeps arriving (a part within the last `UPLOAD_GRACE_S`: it will reach the model
  soon), and once it has arrived. An upload that stalls costs the others nothing beyond its
  connection, never stretches the measured pace, and its answer is no evidence of the model's time.
  It does count towards `limit`, the bound on what a worker holds in memory.

Until a model has been busy its pace is unknown, and only `limit` applies, as again once it has not
been busy for `PACE_WINDOW_S`; while it has too few recent answers, its own time is taken as one pace.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from service.errors import Overloaded
from service.metrics import inspection_metrics

# The pace is the mean interval between the last answers while the model was busy: answers come in
# batches (many at once, then a batch's time), so it takes a few batches to be steady, and a second
# or so at a line's rates to follow a change of load or frame size. Intervals older than the window
# are forgotten: a pace over a request's budget, left from a slowdown, would otherwise refuse every
# request on an idle model for good, since only answers while busy measure it again.
_PACE_ANSWERS = 64
PACE_WINDOW_S = 5.0
# An upload from which nothing arrived for this long has stalled: it no longer counts as coming work.
# Long enough for the gaps of a busy event loop reading many uploads at once.
UPLOAD_GRACE_S = 0.5
# A request's own time: this quantile of the recent answers' latency beyond the work ahead of them.
LATE_QUANTILE = 0.99
OWN_TIME_WINDOW_S = 5.0
# The part of a queue deeper than any seen lately counts this many times its work.
UNSEEN_DEPTH_CAUTION = 2.0
_DEPTHS = 12  # 0, 1, 2-3, ... 1024 and more predictions ahead
_MOST_ANSWERS = 200  # a depth's answers at most: the newest
_LEAST_ANSWERS = 10  # fewer: the depth has not been seen (with 10, their slowest counts)
_RECOMPUTE_EVERY = 10


@dataclass(eq=False)
class Place:
    """A request's place on its model, from admission to its answer."""

    load: _ModelLoad
    clock: Callable[[], float]
    admitted_at: float
    budget_s: float
    ahead: int  # the predictions ahead of it when it was admitted
    pace_s: float | None  # the model's pace then; None while it was unknown
    last_arrival: float = 0.0  # when the last part of its body arrived (or it was admitted)
    stalled: bool = False  # its upload paused for over UPLOAD_GRACE_S

    def __post_init__(self) -> None:
        self.last_arrival = self.admitted_at

    def body_part_arrived(self) -> None:
        now = self.clock()
        self.stalled = self.stalled or now - self.last_arrival > UPLOAD_GRACE_S
        self.last_arrival = now

    def start_work(self) -> None:
        """Its body has arrived: from now on it is work the model has."""
        self.body_part_arrived()
        self.load.uploading.discard(self)
        self.load.working += 1


class OwnTime:
    """A request's latency beyond the work ahead of it, as the model's recent answers admitted behind
    about as much work had it: by depth (0, 1, 2-3, 4-7, ... predictions ahead), the `LATE_QUANTILE`
    of the answers of the last `OWN_TIME_WINDOW_S`. Its spread grows with the depth of the queue (the
    pace's error counts once for every prediction ahead), and a burst of uploads or a slower host
    shows first at depth: so each depth speaks for itself. A depth not seen lately takes the nearest
    deeper one seen (an upper bound), else the nearest shallower one, and the part of its queue
    deeper than any seen counts twice (`seen`, `UNSEEN_DEPTH_CAUTION`)."""

    def __init__(self) -> None:
        self._depths = [_Window() for _ in range(_DEPTHS)]

    def observe(self, now: float, ahead: int, seconds: float) -> None:
        self._depths[_depth(ahead)].observe(now, seconds)

    def value_s(self, now: float, ahead: int) -> float | None:
        depth = _depth(ahead)
        # Unseen: the nearest deeper depth seen is an upper bound (cautious, as after a burst or a change
        # of regime); else the nearest shallower one.
        for other in (*range(depth, _DEPTHS), *range(depth - 1, -1, -1)):
            value = self._depths[other].value_s(now)
            if value is not None:
                return value
        return None

    def idle_s(self, now: float) -> float | None:
        """The own time of answers admitted with nothing ahead of them, if seen lately."""
        return self._depths[0].value_s(now)

    def seen(self, now: float, ahead: int) -> int:
        """How much of a queue `ahead` deep has been seen lately: all of it when answers admitted at
        about that depth have been, else down to the top of the deepest depth seen below (0: none).
        Deeper ones do not count: a burst that fills a queue from empty is not a queue that stays deep."""
        depth = _depth(ahead)
        for other in range(depth, 0, -1):
            if self._depths[other].value_s(now) is not None:
                return ahead if other == depth else (1 << other) - 1  # the top of that depth
        return 0


def _depth(ahead: int) -> int:
    return min(ahead.bit_length(), _DEPTHS - 1)


class _Window:
    """The `LATE_QUANTILE` of the seconds observed in the last `OWN_TIME_WINDOW_S` (the newest
    `_MOST_ANSWERS`); None while there are fewer than `_LEAST_ANSWERS`."""

    def __init__(self) -> None:
        self._answers: deque[tuple[float, float]] = deque(maxlen=_MOST_ANSWERS)  # (when, seconds)
        self._value: float | None = None
        self._unused = 0  # answers observed since the value was last computed

    def observe(self, now: float, seconds: float) -> None:
        self._answers.append((now, seconds))
        self._unused += 1
        if self._unused >= _RECOMPUTE_EVERY or (self._value is None and len(self._answers) >= _LEAST_ANSWERS):
            self._compute(now)

    def value_s(self, now: float) -> float | None:
        if self._answers and now - self._answers[0][0] > OWN_TIME_WINDOW_S:
            self._compute(now)  # forget what is older than the window
        return self._value

    def _compute(self, now: float) -> None:
        while self._answers and now - self._answers[0][0] > OWN_TIME_WINDOW_S:
            self._answers.popleft()
        self._unused = 0
        if len(self._answers) < _LEAST_ANSWERS:
            self._value = None
            return
        ordered = sorted(seconds for _, seconds in self._answers)
        self._value = max(0.0, ordered[math.ceil(LATE_QUANTILE * len(ordered)) - 1])


@dataclass(eq=False)
class _Waiter:
    deadline: float
    budget_s: float
    place: asyncio.Future[Place]
    gone: bool = False  # out of the waiting room: it gave up, or its request went away


class _WaitingRoom:
    """Requests waiting for a place on a model, the one with the most time left first.

    Under overload the newest requests can still be answered in time, and admitting them keeps the
    model's queue deep enough to batch; the oldest wait out their budget. First come, first served
    would feed the model only requests about to expire, one at a time."""

    def __init__(self, depth: Any) -> None:
        """`depth`: the gauge that shows how many wait (`inspection_queue_depth`)."""
        self._heap: list[tuple[float, int, _Waiter]] = []
        self._arrivals = itertools.count()
        self._count = 0
        self._depth = depth

    def __len__(self) -> int:
        return self._count

    def add(self, waiter: _Waiter) -> None:
        heapq.heappush(self._heap, (-waiter.deadline, next(self._arrivals), waiter))
        self._count += 1
        self._depth.inc()

    def first(self) -> _Waiter | None:
        while self._heap and (self._heap[0][2].gone or self._heap[0][2].place.done()):
            self._drop(heapq.heappop(self._heap)[2])
        return self._heap[0][2] if self._heap else None

    def take_first(self) -> None:
        self._drop(heapq.heappop(self._heap)[2])

    def leave(self, waiter: _Waiter) -> None:
        self._drop(waiter)  # its entry stays in the heap until it comes first

    def _drop(self, waiter: _Waiter) -> None:
        if not waiter.gone:
            waiter.gone = True
            self._count -= 1
            self._depth.dec()


@dataclass(eq=False)
class _ModelLoad:
    model: str
    in_flight: Any  # the gauge of what is admitted (`inspection_in_flight`)
    waiting: _WaitingRoom
    working: int = 0  # predictions whose body has arrived, until their answer
    uploading: set[Place] = field(default_factory=set)  # admitted, body still arriving
    # (when, seconds) between two answers while the model was busy, within the last PACE_WINDOW_S
    intervals: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_PACE_ANSWERS))
    pace_s: float | None = None  # their mean: the seconds per answer while the model is busy
    last_answer: float | None = None  # when the last answer went, if work was still in flight then
    own_time: OwnTime = field(default_factory=OwnTime)

    def ahead(self, now: float) -> int:
        """The predictions a request admitted now would wait behind: those at the model, and those
        whose upload is still moving."""
        return self.working + sum(1 for place in self.uploading if now - place.last_arrival <= UPLOAD_GRACE_S)

    def forget(self, now: float) -> None:
        """The pace without the intervals older than `PACE_WINDOW_S` (unknown again without any)."""
        if self.intervals and now - self.intervals[0][0] > PACE_WINDOW_S:
            while self.intervals and now - self.intervals[0][0] > PACE_WINDOW_S:
                self.intervals.popleft()
            self._measure()

    def _measure(self) -> None:
        self.pace_s = sum(s for _, s in self.intervals) / len(self.intervals) if self.intervals else None

    def expected_latency_s(self, now: float, ahead: int | None = None) -> float | None:
        """The latency of a request admitted now (behind `ahead` predictions, by default those there are)."""
        self.forget(now)
        if self.pace_s is None:
            return None
        ahead = self.ahead(now) if ahead is None else ahead
        own = self.own_time.value_s(now, ahead)
        # The part of the queue deeper than any seen lately counts twice, until answers from that deep
        # say otherwise (a burst of uploads, or a change of regime, slows the model before its pace
        # shows it); so admission goes deeper a step at a time.
        seen = self.own_time.seen(now, ahead)
        work = seen + UNSEEN_DEPTH_CAUTION * (ahead - seen)
        return work * self.pace_s + (self.pace_s if own is None else own)

    def idle_latency_s(self, now: float) -> float:
        """How long even an idle model takes, as seen lately (else one pace): a request that cannot wait
        so long has no chance. Only answers from an idle model say so; deeper ones would refuse at once
        what an emptier queue may still answer, and a client that retries at once would spin."""
        self.forget(now)
        if self.pace_s is None:
            return 0.0
        idle = self.own_time.idle_s(now)
        return self.pace_s if idle is None else idle

    def fits(self, now: float, deadline: float) -> bool:
        """Whether a request admitted now would be answered by `deadline`; on an idle model, whether its
        budget is at least one pace: none can answer it sooner, and refusing it would teach nothing."""
        ahead = self.ahead(now)
        expected = self.expected_latency_s(now, ahead)
        if expected is None or expected <= deadline - now:
            return True
        return ahead == 0 and self.pace_s is not None and self.pace_s <= deadline - now

    def answered(self, place: Place, now: float) -> None:
        self.working -= 1
        if self.last_answer is not None:
            self.intervals.append((now, now - self.last_answer))
            self._measure()
        # The next interval measures the pace only if the model stays busy until then.
        self.last_answer = now if self.working > 0 else None
        if place.pace_s is not None and not place.stalled:
            self.own_time.observe(now, place.ahead, now - place.admitted_at - place.ahead * place.pace_s)


class Admission:
    def __init__(self, limit: int, budget_s: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.limit = limit
        self.budget_s = budget_s
        self.admitted = 0  # requests past the waiting room: uploading, or work of a model
        self._clock = clock
        self._models: dict[str, _ModelLoad] = {}

    def expected_latency_s(self, model: str) -> float | None:
        """How long a prediction for `model` admitted now would take; None while the pace is unknown."""
        load = self._models.get(model)
        return None if load is None else load.expected_latency_s(self._clock())

    def pace_s(self, model: str) -> float | None:
        """The seconds between two answers of `model` while it is busy; None until it has been (lately)."""
        load = self._models.get(model)
        if load is None:
            return None
        load.forget(self._clock())
        return load.pace_s

    def waiting(self, model: str) -> int:
        load = self._models.get(model)
        return 0 if load is None else len(load.waiting)

    def busy(self, model: str) -> bool:
        """Whether `model` is queueing: a request admitted now would take over twice what it takes on an
        idle model, or requests wait for admission. What can wait (a shadow run) sheds then."""
        load = self._models.get(model)
        if load is None:
            return False
        if load.waiting:
            return True
        now = self._clock()
        expected = load.expected_latency_s(now)
        return expected is not None and expected > 2 * load.idle_latency_s(now)

    @asynccontextmanager
    async def place(
        self, model: str, budget_s: float | None = None, arrived: float | None = None
    ) -> AsyncIterator[Place]:
        """A place for one prediction of `model` that `arrived` (on this admission's clock; default now),
        waited for while it can still be answered in time; raises `Overloaded` once it cannot. Tell the
        place as its body arrives (`body_part_arrived`, `start_work`)."""
        budget_s = self.budget_s if budget_s is None else budget_s
        load = self._models.get(model) or self._new_load(model)
        place = await self._enter(load, (self._clock() if arrived is None else arrived) + budget_s, budget_s)
        try:
            yield place
        finally:
            self._release(place)

    def _new_load(self, model: str) -> _ModelLoad:
        metrics = inspection_metrics()
        load = _ModelLoad(model, metrics.in_flight.labels(model), _WaitingRoom(metrics.queue_depth.labels(model)))
        self._models[model] = load
        return load

    async def _enter(self, load: _ModelLoad, deadline: float, budget_s: float) -> Place:
        now = self._clock()
        if self.admitted >= self.limit:
            inspection_metrics().refusals.labels(load.model, "worker_limit").inc()
            raise Overloaded(f"{self.admitted} predictions in progress on this worker; retry shortly")
        if load.fits(now, deadline):  # it has the most time left of all that wait: it goes first
            return self._take(load, now, budget_s)
        give_up_in = deadline - load.idle_latency_s(now) - now
        if give_up_in <= 0:
            raise _late(load, now, deadline, budget_s)
        waiter = _Waiter(deadline, budget_s, asyncio.get_running_loop().create_future())
        load.waiting.add(waiter)
        try:
            async with asyncio.timeout(give_up_in):
                return await waiter.place
        except TimeoutError:
            if _given(waiter):  # given its place as time ran out
                return waiter.place.result()
            self._leave(load, waiter)
            raise _late(load, self._clock(), deadline, budget_s) from None
        except BaseException:  # its request went away (client gone, request timeout)
            if _given(waiter):
                self._release(waiter.place.result())
            else:
                self._leave(load, waiter)
            raise

    def _take(self, load: _ModelLoad, now: float, budget_s: float) -> Place:
        place = Place(load, self._clock, now, budget_s, load.ahead(now), load.pace_s)
        self.admitted += 1
        load.in_flight.inc()
        load.uploading.add(place)
        if load.waiting or len(load.uploading) > 1:
            # An upload that stalls stops counting: look at the waiting room again when it would have.
            asyncio.get_running_loop().call_later(2 * UPLOAD_GRACE_S, self._admit_waiting, load)
        return place

    def _leave(self, load: _ModelLoad, waiter: _Waiter) -> None:
        """Out of the waiting room, and the next one's turn."""
        load.waiting.leave(waiter)
        self._admit_waiting(load)

    def _release(self, place: Place) -> None:
        now = self._clock()
        self.admitted -= 1
        place.load.in_flight.dec()
        if place in place.load.uploading:  # its body never arrived
            place.load.uploading.discard(place)
        else:
            place.load.answered(place, now)
        self._admit_waiting(place.load)

    def _admit_waiting(self, load: _ModelLoad) -> None:
        """Admit the requests waiting for `load`, the one with the most time left first, while each fits."""
        now = self._clock()
        while self.admitted < self.limit:
            first = load.waiting.first()
            if first is None or not load.fits(now, first.deadline):
                return
            load.waiting.take_first()
            first.place.set_result(self._take(load, now, first.budget_s))


def _given(waiter: _Waiter) -> bool:
    return waiter.place.done() and not waiter.place.cancelled()


def _late(load: _ModelLoad, now: float, deadline: float, budget_s: float) -> Overloaded:
    inspection_metrics().refusals.labels(load.model, "latency_budget").inc()
    expected = load.expected_latency_s(now) or 0.0
    return Overloaded(
        f"the expected latency, {1000 * expected:.0f} ms, is over the {1000 * max(0.0, deadline - now):.0f} ms "
        f"left of the latency budget of {1000 * budget_s:.0f} ms; retry shortly"
    )
