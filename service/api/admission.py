"""Admission: a prediction is taken on only when it can be answered within its latency budget.

A camera's answer is worthless once its budget has passed, and every request admitted beyond what
the model can answer in time makes all the others behind it late too. So, per worker (one event
loop: plain counters are safe), a request is refused at once with 503 and `Retry-After` when

- `limit` predictions are already in flight, or
- its expected latency is over its budget: (predictions in flight for its model + 1) x the model's
  measured pace, the seconds between two answers while the model was busy (Little's law), x the
  model's correction.

Little's law gives the mean; answers spread around it (batches form unevenly, threads share the
cores, a short queue still takes a whole decode and run). The correction keeps the spread inside the
budget: it is learnt from the answers to requests admitted close to their budget (an estimate over
half of it), rising a little with each one answered late and falling a little with each one on
time, so that it settles where about 3 in 1,000 of them are late (an online estimate of a
quantile). Aimed below 1 in 100, since load moves faster than it learns: cameras refused together
come back together, one second later.

Until a model has been busy once its pace is unknown, and only the limit applies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from service.errors import Overloaded

# Weight of the newest interval in the pace's moving average: steady, yet a few hundred answers
# follow a change of load or frame size.
_PACE_WEIGHT = 0.05

# The share of answers to requests admitted close to their budget that may come late. A late answer
# raises the correction by (1 - share) x step, one on time lowers it by share x step: it settles
# where `share` of them are late. Steps are relative: doubling takes ~14 late answers.
LATE_SHARE = 0.003
CORRECTION_STEP = 0.05
_CORRECTION_RANGE = (0.5, 4.0)
_CLOSE_TO_BUDGET = 0.5  # an estimate over this share of its budget is evidence for the correction
# Where a model's correction starts: cautious, since a fresh worker has seen none of its spread yet.
INITIAL_CORRECTION = 2.0


@dataclass
class _ModelLoad:
    in_flight: int = 0
    pace_s: float | None = None  # seconds between answers while busy, moving average
    last_answer: float | None = None  # when the last answer went, if requests were still in flight then
    correction: float = 1.0

    def expected_latency_s(self) -> float | None:
        if self.pace_s is None:
            return None
        return (self.in_flight + 1) * self.pace_s * self.correction

    def answered(self, now: float) -> None:
        if self.last_answer is not None:
            interval = now - self.last_answer
            self.pace_s = (
                interval if self.pace_s is None else (1 - _PACE_WEIGHT) * self.pace_s + _PACE_WEIGHT * interval
            )
        # The next interval measures the pace only if the model stays busy until then.
        self.last_answer = now if self.in_flight > 0 else None

    def learn(self, late: bool) -> None:
        step = CORRECTION_STEP * ((1 - LATE_SHARE) if late else -LATE_SHARE)
        low, high = _CORRECTION_RANGE
        self.correction = min(max(self.correction * (1 + step), low), high)


class Admission:
    def __init__(
        self,
        limit: int,
        budget_s: float,
        clock: Callable[[], float] = time.perf_counter,
        initial_correction: float = INITIAL_CORRECTION,
    ) -> None:
        self.limit = limit
        self.budget_s = budget_s
        self.in_flight = 0
        self._clock = clock
        self._initial_correction = initial_correction
        self._models: dict[str, _ModelLoad] = {}

    def expected_latency_s(self, model: str) -> float | None:
        """How long a prediction for `model` admitted now would take; None while the pace is unknown."""
        load = self._models.get(model)
        return None if load is None else load.expected_latency_s()

    @contextmanager
    def slot(self, model: str, budget_s: float | None = None) -> Iterator[None]:
        """Hold a place for one prediction of `model`, or raise `Overloaded` at once."""
        budget_s = self.budget_s if budget_s is None else budget_s
        if self.in_flight >= self.limit:
            raise Overloaded(f"{self.in_flight} predictions in progress on this worker; retry shortly")
        expected = self.expected_latency_s(model)
        if expected is not None and expected > budget_s:
            raise Overloaded(
                f"the expected latency, {1000 * expected:.0f} ms, is over the latency budget of "
                f"{1000 * budget_s:.0f} ms; retry shortly"
            )
        load = self._models.setdefault(model, _ModelLoad(correction=self._initial_correction))
        admitted = self._clock()
        self.in_flight += 1
        load.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            load.in_flight -= 1
            now = self._clock()
            load.answered(now)
            if expected is not None and expected > _CLOSE_TO_BUDGET * budget_s:
                load.learn(late=now - admitted > budget_s)
