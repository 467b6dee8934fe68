"""Kept frames on real databases (SQLite, and PostgreSQL where one is running: see tests/with_services.sh),
each test in a database of its own, since the bytes bound counts every frame of the store; and a shadow
run's counts (`Tally`), on answers made by the classifier head's own post-processing."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event

from service.frames import FrameStore, KeptFrame
from service.lifecycle.shadow import LATENCY_BUCKETS_MS, ClassCounts, Tally, quantile_ms
from service.tasks.base import ClassAgreement
from service.thresholds.store import ThresholdStore
from tests.service.lifecycle.test_store import fresh_database
from tests.service.tasks.test_agreement import AGREE, classified

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # 1032 bytes


@pytest.fixture(params=["sqlite", "postgresql"])
def open_frames(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[int], FrameStore]]:
    """Opens frame stores with a bytes bound on a fresh database, each on the engine of a thresholds store
    of its own (closed at the end), as in separate workers."""
    owners: list[ThresholdStore] = []
    with fresh_database(request.param, tmp_path) as url:

        def open_one(max_bytes: int) -> FrameStore:
            owners.append(ThresholdStore.open(url))
            return FrameStore(owners[-1].engine, max_bytes)

        try:
            yield open_one
        finally:
            for owner in owners:
                owner.close()


@pytest.fixture
def frames(open_frames: Callable[[int], FrameStore]) -> FrameStore:
    return open_frames(10_000_000)


def keep(
    store: FrameStore, image: bytes = PNG, *, model: str = "weld", run: int = 2, limit: int = 100, **more
) -> int | None:
    return store.keep(
        model=model,
        source=more.pop("source", "shadow"),
        run=run,
        limit=limit,
        image=image,
        content_type=more.pop("content_type", "image/png"),
        details=more.pop("details", {"n": 0}),
    )


def test_a_kept_frame_reads_back_whole(frames: FrameStore):
    details = {
        "active": {"decision": "reject", "defects": ["porosity"]},
        "candidate": {"decision": "accept", "defects": []},
        "classes": {"porosity": {"decision": False, "label": False, "iou": None}},
        "score": 0.625,
    }
    before = datetime.now(UTC)
    frame_id = keep(frames, details=details, content_type="image/png")
    after = datetime.now(UTC)
    assert isinstance(frame_id, int)

    [kept] = frames.list("weld", "shadow", 2)
    assert kept == KeptFrame(
        id=frame_id,
        model="weld",
        source="shadow",
        run=2,
        created_at=kept.created_at,
        content_type="image/png",
        size_bytes=1032,
        details=details,
    )
    assert kept.created_at.utcoffset() == timedelta(0)
    assert before <= kept.created_at <= after
    assert frames.count("weld", "shadow", 2) == 1
    assert frames.image("weld", "shadow", frame_id) == (PNG, "image/png")
    assert frames.count("weld", "shadow", 3) == frames.count("cast", "shadow", 2) == 0

    jpeg = b"\xff\xd8\xff\xe0" + b"\x00\xff" * 10
    other = keep(frames, jpeg, content_type="image/jpeg", details={})
    assert frames.image("weld", "shadow", other) == (jpeg, "image/jpeg")
    assert [(f.id, f.size_bytes, f.details) for f in frames.list("weld", "shadow", 2)] == [
        (frame_id, 1032, details),
        (other, 24, {}),
    ]


def test_a_run_keeps_only_its_first_frames_up_to_its_limit(frames: FrameStore):
    ids = [keep(frames, details={"n": n}, limit=3) for n in range(5)]
    assert all(isinstance(i, int) for i in ids[:3])
    assert ids[3:] == [None, None]
    assert frames.count("weld", "shadow", 2) == 3
    listed = frames.list("weld", "shadow", 2)
    assert [(f.id, f.details["n"]) for f in listed] == [(ids[0], 0), (ids[1], 1), (ids[2], 2)]
    # The limit is each run's own: another run, another model, another source.
    assert keep(frames, run=3, limit=3) is not None
    assert keep(frames, model="cast", limit=3) is not None
    assert keep(frames, source="review", limit=3) is not None
    assert frames.count("weld", "shadow", 2) == 3
    assert keep(frames, run=4, limit=0) is None  # keep_frames 0: none kept
    assert frames.count("weld", "shadow", 4) == 0


def test_no_frame_is_kept_past_the_stores_bytes_in_any_run(open_frames: Callable[[int], FrameStore]):
    frames = open_frames(1000)
    assert keep(frames, b"a" * 600, run=1) is not None
    assert keep(frames, b"b" * 500, run=2) is None  # 1100 bytes: over, though run 2 has none
    assert keep(frames, b"c" * 500, model="cast") is None  # over for every model too
    assert keep(frames, b"d" * 401, run=1) is None
    assert keep(frames, b"e" * 400, run=3) is not None  # exactly 1000: within
    assert keep(frames, b"f", run=4) is None
    counts = [frames.count("weld", "shadow", run) for run in (1, 2, 3, 4)]
    assert counts == [1, 0, 1, 0]
    assert frames.count("cast", "shadow", 2) == 0

    # Another store on the same database with a larger bound sees the bytes already there.
    larger = open_frames(1500)
    assert keep(larger, b"g" * 501, run=5) is None
    assert keep(larger, b"g" * 500, run=5) is not None
    assert [f.size_bytes for f in larger.list("weld", "shadow", 5)] == [500]


def test_listing_pages_oldest_first_through_one_run_only(frames: FrameStore):
    ids = []
    for n in range(5):
        ids.append(keep(frames, details={"n": n}))
        keep(frames, run=3, details={"other run": n})
        keep(frames, model="cast", details={"other model": n})
        keep(frames, source="review", details={"other source": n})

    def page(**paging) -> list[int]:
        return [f.id for f in frames.list("weld", "shadow", 2, **paging)]

    assert page() == ids
    assert page(limit=2) == ids[:2]
    assert page(after=ids[1], limit=2) == ids[2:4]
    assert page(after=ids[3], limit=2) == ids[4:]
    assert page(after=ids[4]) == []
    assert [f.details for f in frames.list("weld", "shadow", 2, after=ids[2])] == [{"n": 3}, {"n": 4}]
    assert [f.details for f in frames.list("weld", "shadow", 3, limit=1)] == [{"other run": 0}]
    assert frames.count("weld", "shadow", 2) == 5


def test_an_image_is_read_only_through_its_own_model_and_source(frames: FrameStore):
    weld = keep(frames, b"weld-image", content_type="image/bmp")
    cast = keep(frames, b"cast-image", model="cast", content_type="image/tiff")
    rejected = keep(frames, b"rejected-image", source="rejected", content_type="image/png")
    assert frames.image("weld", "rejected", rejected) == (b"rejected-image", "image/png")
    assert frames.image("weld", "shadow", rejected) is None
    assert frames.image("weld", "rejected", weld) is None
    assert frames.image("weld", "shadow", weld) == (b"weld-image", "image/bmp")
    assert frames.image("cast", "shadow", cast) == (b"cast-image", "image/tiff")
    assert frames.image("weld", "shadow", cast) is None
    assert frames.image("cast", "shadow", weld) is None
    assert frames.image("weld", "shadow", max(weld, cast) + 100) is None


def pause_before(store: FrameStore, statement: str, signal: threading.Event, wait: threading.Event) -> None:
    """Make `store`'s engine set `signal`, then wait for `wait`, before it runs a statement starting with
    `statement` on the kept frames (once)."""
    armed = [True]

    def hook(_conn, _cursor, sql, *_):
        if armed[0] and sql.lstrip().upper().startswith(statement) and "kept_frames" in sql:
            armed[0] = False
            signal.set()
            assert wait.wait(10), f"the other worker never got there ({statement})"

    event.listen(store._engine, "before_cursor_execute", hook)


def test_two_workers_past_a_runs_limit_never_both_report_their_frame_kept(open_frames: Callable[[int], FrameStore]):
    """Two workers keep a frame of a run that may keep one, at once: both count none, both insert; the
    first one's clean-up deletes the second one's frame; the second one's clean-up then deletes nothing,
    and it must still not report a frame that is gone as kept (its shadow run counts it in `kept`)."""
    first, second = open_frames(10_000_000), open_frames(10_000_000)
    second_counted, first_inserted, second_inserted, first_cleaned = (threading.Event() for _ in range(4))
    pause_before(second, "INSERT", second_counted, first_inserted)  # second: counted none, waits
    pause_before(first, "DELETE", first_inserted, second_inserted)  # first: inserted, waits
    pause_before(second, "DELETE", second_inserted, first_cleaned)  # second: inserted, waits

    def cleaned(_conn, _cursor, sql, *_) -> None:
        if sql.lstrip().upper().startswith("DELETE"):
            first_cleaned.set()

    event.listen(first._engine, "after_cursor_execute", cleaned)
    returned: dict[str, int | None] = {}

    def worker(name: str, store: FrameStore) -> None:
        returned[name] = keep(store, limit=1)

    threads = [threading.Thread(target=worker, args=("second", second))]
    threads[0].start()
    assert second_counted.wait(10)
    threads.append(threading.Thread(target=worker, args=("first", first)))
    threads[1].start()
    for thread in threads:
        thread.join(30)
    listed = [f.id for f in first.list("weld", "shadow", 2)]
    assert len(listed) == 1  # the run's limit held
    assert returned["first"] == listed[0]
    assert returned["second"] is None, f"second worker got id {returned['second']}, which is not kept"


# --- a shadow run's counts ------------------------------------------------------------------------

REJECT = classified(0.1, 0.6, 0.25, 0.05)  # porosity
ACCEPT = classified(0.7, 0.1, 0.1, 0.1)  # no_defect
DISAGREE = ClassAgreement(decision=False, label=False, iou=None)


def three_frames() -> Tally:
    tally = Tally()
    agreed = [
        tally.add(REJECT, REJECT, {"porosity": AGREE, "crack": AGREE, "undercut": AGREE}, 0.004, 0.012),
        tally.add(REJECT, ACCEPT, {"porosity": DISAGREE, "crack": AGREE, "undercut": AGREE}, 0.0015, 0.0008),
        tally.add(
            ACCEPT,
            ACCEPT,
            {
                "porosity": ClassAgreement(decision=True, label=False, iou=0.5),
                "crack": ClassAgreement(decision=True, label=True, iou=0.75),
                "undercut": AGREE,
            },
            0.001,
            6.0,
        ),
    ]
    assert agreed == [True, False, False]  # the third: the decisions agree, a label does not
    return tally


def buckets(*at: int) -> list[int]:
    """Latency buckets with one frame in each bucket of index `at`."""
    counts = [0] * len(LATENCY_BUCKETS_MS)
    for index in at:
        counts[index] += 1
    return counts


def test_a_tally_counts_frames_decisions_classes_and_latencies():
    assert (REJECT.decision, ACCEPT.decision) == ("reject", "accept")
    tally = three_frames()
    assert (tally.compared, tally.agreed, tally.shed, tally.failed, tally.kept) == (3, 1, 0, 0, 0)
    assert tally.confusion == {"reject": {"reject": 1, "accept": 1}, "accept": {"accept": 1}}
    assert tally.classes == {
        "porosity": ClassCounts(decision_agreed=2, label_agreed=1, iou_sum=0.5, iou_count=1),
        "crack": ClassCounts(decision_agreed=3, label_agreed=3, iou_sum=0.75, iou_count=1),
        "undercut": ClassCounts(decision_agreed=3, label_agreed=3, iou_sum=0.0, iou_count=0),
    }
    # 4 ms in (3, 5], 1.5 ms in (1, 2], 1 ms in [0, 1]; 12 ms in (10, 15], 0.8 ms in [0, 1], 6 s over 5 s.
    assert tally.active_ms == buckets(3, 1, 0)
    assert tally.candidate_ms == buckets(6, 0, 19)
    assert tally.active_ms_sum == pytest.approx(6.5)
    assert tally.candidate_ms_sum == pytest.approx(6012.8)


def test_latency_quantiles_are_the_upper_bounds_of_their_buckets():
    tally = three_frames()
    assert quantile_ms(tally.active_ms, 0.5) == 2  # the 1.5th of 3 frames: in (1, 2]
    assert quantile_ms(tally.active_ms, 0.3) == 1
    assert quantile_ms(tally.active_ms, 1.0) == 5
    assert quantile_ms(tally.candidate_ms, 0.5) == 15
    assert quantile_ms(tally.candidate_ms, 0.99) == math.inf
    assert quantile_ms(buckets(*[5] * 99, 12), 0.99) == 10
    assert quantile_ms(buckets(*[5] * 99, 12), 0.995) == 150
    assert quantile_ms([0] * len(LATENCY_BUCKETS_MS), 0.5) is None


def test_tallies_merge_by_adding_every_count():
    total = three_frames()
    other = Tally(shed=4, failed=2, kept=1)
    other.add(ACCEPT, REJECT, {"porosity": DISAGREE, "spatter": AGREE}, 0.2, 0.0075)
    total.merge(other)
    assert (total.compared, total.agreed, total.shed, total.failed, total.kept) == (4, 1, 4, 2, 1)
    assert total.confusion == {"reject": {"reject": 1, "accept": 1}, "accept": {"accept": 1, "reject": 1}}
    assert total.classes["porosity"] == ClassCounts(decision_agreed=2, label_agreed=1, iou_sum=0.5, iou_count=1)
    assert total.classes["spatter"] == ClassCounts(decision_agreed=1, label_agreed=1, iou_sum=0.0, iou_count=0)
    assert total.classes["crack"] == ClassCounts(decision_agreed=3, label_agreed=3, iou_sum=0.75, iou_count=1)
    assert total.active_ms == buckets(3, 1, 0, 13)  # 200 ms in (150, 200]
    assert total.candidate_ms == buckets(6, 0, 19, 4)  # 7.5 ms in (5, 7.5]
    assert total.active_ms_sum == pytest.approx(206.5)
    assert total.candidate_ms_sum == pytest.approx(6020.3)
    # `other` is left as it was, and merging into an empty tally copies it.
    assert (other.compared, other.shed, other.confusion) == (1, 4, {"accept": {"reject": 1}})
    empty = Tally()
    empty.merge(three_frames())
    assert empty == three_frames()


def test_a_tally_survives_json():
    tally = three_frames()
    tally.shed, tally.failed, tally.kept = 7, 1, 2
    text = tally.to_json()
    back = Tally.from_json(text)
    assert back == tally
    assert isinstance(back.classes["crack"], ClassCounts)
    assert Tally.from_json(Tally().to_json()) == Tally()
    # Rows read back from several workers add up as the counts themselves do.
    report = Tally()
    for row in (text, text):
        report.merge(Tally.from_json(row))
    assert (report.compared, report.agreed, report.shed, report.kept) == (6, 2, 14, 4)
    assert report.classes["porosity"] == ClassCounts(decision_agreed=4, label_agreed=2, iou_sum=1.0, iou_count=2)
