"""Admission on a clock the tests move by hand (a wait for a place runs on the event loop's own time)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import pytest
from prometheus_client import REGISTRY

from service.api.admission import OWN_TIME_WINDOW_S, PACE_WINDOW_S, UPLOAD_GRACE_S, Admission, OwnTime, Place
from service.errors import Overloaded

T = TypeVar("T")


class Clock:
    """Seconds that the test moves on by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Held:
    """Places held by a test, released when it says."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.held: list[tuple[AbstractAsyncContextManager[Place], Place]] = []

    async def take(self, model: str = "m", *, arrived: bool = True, budget_s: float | None = None) -> Place:
        manager = self.admission.place(model, budget_s)
        place = await manager.__aenter__()
        if arrived:
            place.start_work()
        self.held.append((manager, place))
        return place

    async def release(self, place: Place) -> None:
        index = next(i for i, (_, held) in enumerate(self.held) if held is place)
        manager, _ = self.held.pop(index)
        await manager.__aexit__(None, None, None)

    async def release_all(self, clock: Clock | None = None, every_s: float = 0.0) -> None:
        while self.held:
            if clock is not None:
                clock.now += every_s
            await self.release(self.held[0][1])


def paced(admission: Admission, clock: Clock, answers: int, every_s: float, model: str = "m") -> None:
    """`answers` predictions answered `every_s` apart while others wait behind them."""

    async def busy() -> None:
        held = Held(admission)
        for _ in range(answers):
            await held.take(model)
        await held.release_all(clock, every_s)

    asyncio.run(busy())


def busy_model(budget_s: float) -> tuple[Admission, Clock]:
    """An admission whose model "m" has answered at a pace of 10 ms while busy."""
    clock = Clock()
    admission = Admission(limit=100, budget_s=budget_s, clock=clock)
    paced(admission, clock, answers=50, every_s=0.010)
    return admission, clock


def scenario(body: Callable[[], Coroutine[object, object, T]]) -> T:
    """`body` run on a fresh event loop."""
    return asyncio.run(body())


def test_until_a_model_has_been_busy_only_the_limit_applies():
    async def body() -> None:
        held = Held(Admission(limit=2, budget_s=0.001, clock=Clock()))
        assert held.admission.expected_latency_s("m") is None
        await held.take()
        await held.take()
        with pytest.raises(Overloaded, match="2 predictions in progress"):
            await held.take()

    scenario(body)


def test_each_model_has_its_own_pace_idle_gaps_do_not_count_and_there_is_no_correction_at_first():
    clock = Clock()
    admission = Admission(limit=100, budget_s=1.0, clock=clock)
    paced(admission, clock, answers=20, every_s=0.001, model="fast")
    paced(admission, clock, answers=10, every_s=0.100, model="slow")
    clock.now += 1.0  # idle: not a measure of the pace
    paced(admission, clock, answers=5, every_s=0.100, model="slow")
    assert admission.expected_latency_s("fast") == pytest.approx(0.001)
    assert admission.expected_latency_s("slow") == pytest.approx(0.100)  # Little's law as it is
    assert admission.admitted == 0


def test_a_pace_left_from_a_slowdown_is_forgotten_once_the_model_has_not_been_busy_for_a_while():
    clock = Clock()
    admission = Admission(limit=100, budget_s=1.0, clock=clock)
    paced(admission, clock, answers=10, every_s=0.100)  # a slowdown: 100 ms an answer, over a camera's 50 ms
    last_busy = clock.now

    async def refused() -> None:  # by all that is known, even an idle model would answer it late
        with pytest.raises(Overloaded, match="expected latency, 100 ms, is over the 50 ms left"):
            await Held(admission).take(budget_s=0.05)

    scenario(refused)
    clock.now = last_busy + PACE_WINDOW_S / 2
    paced(admission, clock, answers=2, every_s=0.010)  # half the window on: one fast interval more
    assert admission.pace_s("m") == pytest.approx((9 * 0.100 + 0.010) / 10)
    clock.now = last_busy + PACE_WINDOW_S + 0.001
    assert admission.pace_s("m") == pytest.approx(0.010)  # the slowdown's intervals forgotten
    clock.now += PACE_WINDOW_S
    assert admission.pace_s("m") is None  # not busy for the window: unknown, as at start-up

    async def admitted() -> None:  # its answer is fresh evidence
        place = await Held(admission).take(budget_s=0.05)
        assert place.pace_s is None and admission.admitted == 1

    scenario(admitted)


def test_a_request_that_would_be_late_waits_unread_and_is_admitted_as_soon_as_an_answer_makes_room():
    admission, clock = busy_model(budget_s=0.1)

    async def body() -> None:
        held = Held(admission)
        ahead = [await held.take(budget_s=1.0) for _ in range(6)]
        # No answers from behind others seen yet: the work ahead counts twice, 2 x 6 x 10 + 10 ms.
        assert admission.expected_latency_s("m") == pytest.approx(0.130)  # over its 100 ms
        waiting = asyncio.create_task(held.take(arrived=False))
        await asyncio.sleep(0)
        assert admission.waiting("m") == 1 and admission.admitted == 6  # waiting: counted nowhere
        clock.now += 0.001
        await held.release(ahead[0])  # 5 ahead: 110 ms, not within the 99 ms left
        assert admission.waiting("m") == 1
        clock.now += 0.001
        await held.release(ahead[1])  # 4 ahead: 90 ms or so, within the 98 ms left
        place = await asyncio.wait_for(waiting, 1)
        assert admission.waiting("m") == 0 and admission.admitted == 5 and place.admitted_at == clock.now

    scenario(body)


def test_a_waiting_request_is_refused_once_even_an_idle_model_could_not_answer_it_in_time():
    admission, clock = busy_model(budget_s=0.05)

    async def body() -> float:
        held = Held(admission)
        for _ in range(5):
            await held.take(budget_s=1.0)
        started = time.perf_counter()
        with pytest.raises(Overloaded, match=r"over the 50 ms left of the latency budget of 50 ms"):
            await held.take()
        waited = time.perf_counter() - started
        assert admission.waiting("m") == 0 and admission.admitted == 5
        # One whose own budget even an idle model could not meet is refused at once.
        with pytest.raises(Overloaded, match="budget of 5 ms"):
            await held.take(budget_s=0.005)
        return waited

    waited = scenario(body)
    assert 0.035 <= waited < 0.5  # held until 50 - 10 ms, the idle model's latency, had passed


def test_only_answers_from_an_idle_model_tell_a_request_it_has_no_chance():
    own, now = OwnTime(), 0.0
    for _ in range(10):  # a slow deep queue: 2 s beyond the work of the 40 ahead
        now += 0.01
        own.observe(now, 40, 2.0)
    assert own.value_s(now, 0) == pytest.approx(2.0)  # an upper bound, for admitting at an unseen depth
    # ... but not evidence that an idle model takes 2 s: giving up on that would refuse at once what an
    # emptier queue may still answer, and every retry of a client that retries at once.
    assert own.idle_s(now) is None
    for _ in range(10):
        now += 0.01
        own.observe(now, 0, 0.080)
    assert own.idle_s(now) == pytest.approx(0.080)


def test_a_request_that_goes_away_while_waiting_leaves_the_waiting_room_and_holds_nothing():
    admission, clock = busy_model(budget_s=0.05)

    async def body() -> None:
        held = Held(admission)
        ahead = [await held.take(budget_s=1.0) for _ in range(5)]
        waiting = asyncio.create_task(held.take())
        await asyncio.sleep(0)
        waiting.cancel()  # the client disconnected, or the request timed out
        with pytest.raises(asyncio.CancelledError):
            await waiting
        for place in ahead:
            await held.release(place)
        assert admission.admitted == 0 and admission.waiting("m") == 0

    scenario(body)


def test_uploads_in_progress_count_only_during_their_grace_and_never_stretch_the_pace():
    admission, clock = busy_model(budget_s=0.05)

    async def body() -> None:
        held = Held(admission)
        stalled = [await held.take(arrived=False) for _ in range(3)]
        # A burst arriving: they count (twice, a depth not seen lately), 2 x 3 x 10 + 10 ms.
        assert admission.expected_latency_s("m") == pytest.approx(0.070)
        clock.now += 2 * UPLOAD_GRACE_S
        assert admission.expected_latency_s("m") == pytest.approx(0.010)  # stalled: they no longer do
        stalled[1].body_part_arrived()  # moving again: on its way to the model
        assert admission.expected_latency_s("m") == pytest.approx(0.030)
        clock.now += 2 * UPLOAD_GRACE_S
        for _ in range(20):  # a camera beside them: admitted at once, answered at the model's pace
            camera = await held.take()
            clock.now += 0.010
            await held.release(camera)
        assert admission.admitted == len(stalled)  # they still count towards the worker's limit
        clock.now += 1.0
        stalled[0].start_work()  # its upload ends a second later: the model was idle meanwhile
        clock.now += 0.010
        await held.release(stalled[0])
        assert admission.expected_latency_s("m") == pytest.approx(0.010)  # the pace is the model's alone

    scenario(body)


def test_a_requests_own_time_is_the_99th_percentile_of_recent_answers_beyond_their_work_ahead():
    own, now = OwnTime(), 0.0

    def answers(count: int, seconds: Callable[[int], float]) -> None:
        nonlocal now
        for index in range(count):
            now += 0.01
            own.observe(now, 0, seconds(index))

    answers(5, lambda _: 0.150)
    assert own.value_s(now, 0) is None  # too few answers yet: one pace stands for it
    answers(95, lambda _: 0.150)
    assert own.value_s(now, 0) == pytest.approx(0.150)
    answers(200, lambda _: 0.090)  # 200 answers later only the quicker ones are left: it follows both ways
    assert own.value_s(now, 0) == pytest.approx(0.090)
    # 1 answer in 100 late by far: the 99th percentile is the slowest of the other 99.
    answers(200, lambda index: 0.300 if index % 100 == 0 else 0.120)
    assert own.value_s(now, 0) == pytest.approx(0.120)
    # No answers for a while (every request refused as too slow, say): the old evidence is forgotten.
    assert own.value_s(now + OWN_TIME_WINDOW_S + 0.01, 0) is None


def test_each_depth_of_queue_has_its_own_time_and_an_unseen_one_takes_the_nearest_deeper_one_seen():
    own, now = OwnTime(), 0.0
    for _ in range(20):
        now += 0.01
        own.observe(now, 0, 0.050)  # admitted to an idle model
        own.observe(now, 40, 0.500)  # behind 40 others: the pace's error counts 40 times
    assert own.value_s(now, 0) == pytest.approx(0.050)
    assert own.value_s(now, 2) == pytest.approx(0.500)  # 2-3 ahead, not seen: cautious, as 40 ahead
    assert own.value_s(now, 33) == pytest.approx(0.500)  # 32-63 ahead: seen at 40
    assert own.value_s(now, 100) == pytest.approx(0.500)  # none seen deeper: the nearest shallower one


def test_a_request_is_expected_to_take_the_work_ahead_of_it_plus_the_own_time_of_answers_from_as_deep():
    clock = Clock()
    admission = Admission(limit=100, budget_s=1.0, clock=clock)
    paced(admission, clock, answers=20, every_s=0.010)  # the pace: 10 ms

    async def body() -> None:
        held = Held(admission)
        for _ in range(60):  # each answered 30 ms after its admission, with nothing ahead of it
            place = await held.take()
            clock.now += 0.030
            await held.release(place)
        behind = [await held.take() for _ in range(4)]
        # 4 ahead, a depth not seen lately: its work counts twice, and the own time is the nearest seen.
        assert admission.expected_latency_s("m") == pytest.approx(2 * 4 * 0.010 + 0.030)
        for _ in range(10):  # answered 20 ms beyond the work of the 4 ahead of them
            place = await held.take()
            assert place.ahead == 4
            clock.now += 4 * admission.pace_s("m") + 0.020
            await held.release(place)
        pace = admission.pace_s("m")
        assert admission.expected_latency_s("m") == pytest.approx(4 * pace + 0.020)  # seen: as it was
        for place in behind:
            await held.release(place)

    scenario(body)


def test_a_model_is_busy_once_a_request_admitted_now_would_queue():
    admission, clock = busy_model(budget_s=0.1)
    assert admission.expected_latency_s("m") == pytest.approx(0.010)  # idle: one pace
    assert not admission.busy("m") and not admission.busy("never-seen")

    async def body() -> None:
        held = Held(admission)
        await held.take()
        # One at the model, at a depth not seen lately (counted twice): 3 paces, over twice an idle one's.
        assert admission.expected_latency_s("m") == pytest.approx(0.030)
        assert admission.busy("m")
        await held.release_all(clock, 0.010)
        assert not admission.busy("m")

    scenario(body)


def test_the_gauges_show_what_is_admitted_and_what_waits_and_the_counter_each_refusal():
    clock = Clock()
    admission = Admission(limit=100, budget_s=0.1, clock=clock)
    model = "gauged"
    paced(admission, clock, answers=50, every_s=0.010, model=model)
    admission.limit = 7

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"model": model, **labels}) or 0.0

    refused_before = sample("inspection_refusals_total", reason="worker_limit")

    async def body() -> None:
        held = Held(admission)
        ahead = [await held.take(model, budget_s=1.0) for _ in range(6)]
        assert (sample("inspection_in_flight"), sample("inspection_queue_depth")) == (6, 0)
        waiting = asyncio.create_task(held.take(model, arrived=False))  # 130 ms expected: over its 100
        await asyncio.sleep(0)
        assert (sample("inspection_in_flight"), sample("inspection_queue_depth")) == (6, 1)
        for place in ahead[:2]:
            clock.now += 0.001
            await held.release(place)
        await asyncio.wait_for(waiting, 1)
        assert (sample("inspection_in_flight"), sample("inspection_queue_depth")) == (5, 0)
        await held.take(model, budget_s=1.0)
        await held.take(model, budget_s=1.0)
        with pytest.raises(Overloaded):
            await held.take(model, budget_s=1.0)  # the eighth: over the limit of 7
        assert sample("inspection_refusals_total", reason="worker_limit") == refused_before + 1
        await held.release_all()
        assert (sample("inspection_in_flight"), sample("inspection_queue_depth")) == (0, 0)

    scenario(body)
