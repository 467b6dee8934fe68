import pytest

from service.api.admission import Admission
from service.errors import Overloaded


class Clock:
    """Seconds that the test moves on by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_busy(admission: Admission, clock: Clock, model: str, answers: int, every_s: float) -> None:
    """`answers` predictions of `model` answered `every_s` apart while others wait behind them."""
    slots = [admission.slot(model) for _ in range(answers)]
    for slot in slots:
        slot.__enter__()
    for slot in slots:
        clock.now += every_s
        slot.__exit__(None, None, None)


def test_until_a_model_has_been_busy_only_the_in_flight_limit_applies():
    admission = Admission(limit=2, budget_s=0.001, clock=Clock())
    assert admission.expected_latency_s("m") is None
    with admission.slot("m"), admission.slot("m"):
        with pytest.raises(Overloaded, match="2 predictions in progress"):
            with admission.slot("m"):
                pass


def test_a_request_whose_expected_latency_is_over_its_budget_is_refused_at_once():
    clock = Clock()
    admission = Admission(limit=100, budget_s=0.05, clock=clock)
    run_busy(admission, clock, "m", answers=50, every_s=0.010)
    assert admission.expected_latency_s("m") == pytest.approx(0.010)
    with admission.slot("m"), admission.slot("m"), admission.slot("m"), admission.slot("m"):
        # 4 in flight: a fifth would take ~50 ms, the sixth ~60 ms.
        with admission.slot("m"):
            with pytest.raises(Overloaded, match="expected latency, 60 ms, is over the latency budget of 50 ms"):
                with admission.slot("m"):
                    pass
            with admission.slot("m", budget_s=0.1):  # its own, longer budget
                assert admission.expected_latency_s("m") == pytest.approx(0.07)


def test_each_model_has_its_own_pace_and_idle_gaps_do_not_count():
    clock = Clock()
    admission = Admission(limit=100, budget_s=1.0, clock=clock)
    run_busy(admission, clock, "fast", answers=20, every_s=0.001)
    clock.now += 30.0  # idle: not a measure of the pace
    run_busy(admission, clock, "slow", answers=20, every_s=0.100)
    assert admission.expected_latency_s("fast") == pytest.approx(0.001)
    assert admission.expected_latency_s("slow") == pytest.approx(0.100)
    assert admission.in_flight == 0
