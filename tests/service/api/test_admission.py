import pytest

from service.api.admission import CORRECTION_STEP, INITIAL_CORRECTION, LATE_SHARE, Admission
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
    admission = Admission(limit=100, budget_s=0.05, clock=clock, initial_correction=1.0)
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
    admission = Admission(limit=100, budget_s=1.0, clock=clock, initial_correction=1.0)
    run_busy(admission, clock, "fast", answers=20, every_s=0.001)
    clock.now += 30.0  # idle: not a measure of the pace
    run_busy(admission, clock, "slow", answers=20, every_s=0.100)
    assert admission.expected_latency_s("fast") == pytest.approx(0.001)
    assert admission.expected_latency_s("slow") == pytest.approx(0.100)
    assert admission.in_flight == 0


def test_a_fresh_model_starts_cautious():
    clock = Clock()
    admission = Admission(limit=100, budget_s=1.0, clock=clock)
    run_busy(admission, clock, "m", answers=20, every_s=0.010)
    assert admission.expected_latency_s("m") == pytest.approx(INITIAL_CORRECTION * 0.010)


def test_answers_late_for_their_budget_tighten_admission_and_answers_on_time_relax_it():
    clock = Clock()
    admission = Admission(limit=100, budget_s=0.015, clock=clock, initial_correction=1.0)
    run_busy(admission, clock, "m", answers=50, every_s=0.010)

    def answer(after_s: float, budget_s: float | None = None) -> None:
        with admission.slot("m", budget_s):
            clock.now += after_s

    answer(0.001, budget_s=1.0)  # admitted far within its budget: no evidence either way
    assert admission.expected_latency_s("m") == pytest.approx(0.010)
    late = 0
    with pytest.raises(Overloaded, match="over the latency budget of 15 ms"):
        while late < 20:
            answer(0.020)  # estimated 10 ms and more, answered after 20: late for 15
            late += 1
    assert 8 <= late <= 10  # up ~5% with each late answer: 1.05 ** 9 > 1.5
    tightened = admission.expected_latency_s("m")
    for _ in range(100):
        answer(0.005, budget_s=0.020)  # close to its budget, on time
    on_time_step = 1 - CORRECTION_STEP * LATE_SHARE
    assert admission.expected_latency_s("m") == pytest.approx(tightened * on_time_step**100)
