"""Admission: a prediction is taken on only when it can be answered within its latency budget.

A camera's answer is worthless once its budget has passed, and every request admitted beyond what
the model can answer in time makes all the others behind it late too. So, per worker (one event
loop: plain counters are safe), a request is refused at once with 503 and `Retry-After` when

- `limit` predictions are already in flight, or
- its expected latency is over its budget: (predictions in flight for its model + 1) x the model's
  measured pace, the seconds between two answers while the model was busy (Little's law).

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


@dataclass
class _ModelLoad:
    in_flight: int = 0
    pace_s: float | None = None  # seconds between answers while busy, moving average
    last_answer: float | None = None  # when the last answer went, if requests were still in flight then


class Admission:
    def __init__(self, limit: int, budget_s: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.limit = limit
        self.budget_s = budget_s
        self.in_flight = 0
        self._clock = clock
        self._models: dict[str, _ModelLoad] = {}

    def expected_latency_s(self, model: str) -> float | None:
        """How long a prediction for `model` admitted now would take; None while the pace is unknown."""
        load = self._models.get(model)
        if load is None or load.pace_s is None:
            return None
        return (load.in_flight + 1) * load.pace_s

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
        load = self._models.setdefault(model, _ModelLoad())
        self.in_flight += 1
        load.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            load.in_flight -= 1
            self._answered(load)

    def _answered(self, load: _ModelLoad) -> None:
        now = self._clock()
        if load.last_answer is not None:
            interval = now - load.last_answer
            load.pace_s = (
                interval if load.pace_s is None else (1 - _PACE_WEIGHT) * load.pace_s + _PACE_WEIGHT * interval
            )
        # The next interval measures the pace only if the model stays busy until then.
        load.last_answer = now if load.in_flight > 0 else None
