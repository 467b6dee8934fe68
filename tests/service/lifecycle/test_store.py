"""The version store on real databases: SQLite in WAL mode, and PostgreSQL where one is running.

PostgreSQL is found through INSPECTION_TEST_POSTGRES_URL (see tests/with_services.sh); without it,
or when it cannot be reached, the PostgreSQL cases are skipped with that reason.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from service.errors import Conflict, InvalidParameters
from service.lifecycle.store import MAX_KEPT_FRAMES, Activation, ActivationKind, Shadow, VersionStore
from service.thresholds.store import ThresholdStore
from tests.conftest import postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'thresholds.db'}"
    return postgres_url()


@pytest.fixture
def open_store(database_url: str) -> Iterator[Callable[[], VersionStore]]:
    """Opens version stores, each on the engine of a thresholds store of its own (the engine's owner,
    closed at the end), as in separate workers."""
    owners: list[ThresholdStore] = []

    def open_one() -> VersionStore:
        owners.append(ThresholdStore.open(database_url))
        return VersionStore(owners[-1].engine)

    yield open_one
    for owner in owners:
        owner.close()


@pytest.fixture
def store(open_store: Callable[[], VersionStore]) -> VersionStore:
    return open_store()


def unique_name() -> str:
    """Every test its own model name: PostgreSQL runs share one database."""
    return f"weld-{uuid.uuid4().hex[:10]}"


def steps(history: list[Activation]) -> list[tuple[int, str, int, bool, int | None]]:
    """Oldest first: (revision, kind, version, pinned, replaces)."""
    return [(a.revision, a.kind.value, a.version, a.pinned, a.replaces) for a in reversed(history)]


def change(author: str = "j.moreau", reason: str = "lot 2291") -> dict[str, str]:
    return {"author": author, "reason": reason}


def test_the_version_served_at_start_up_becomes_revision_one_once(store: VersionStore):
    model = unique_name()
    first = store.current(model, default_version=3)
    assert (first.model, first.revision, first.kind, first.version, first.pinned, first.replaces) == (
        model,
        1,
        ActivationKind.INITIAL,
        3,
        False,
        None,
    )
    assert (first.author, first.reason) == ("model store", "served at start-up")
    assert first.created_at.utcoffset() == timedelta(0)
    assert store.current(model, default_version=5) == first  # read back whole; the default only applies once
    assert store.history(model) == [first]


def test_workers_starting_together_share_one_initial_revision(open_store: Callable[[], VersionStore]):
    model = unique_name()
    workers = 6
    stores = [open_store() for _ in range(workers)]
    start = threading.Barrier(workers)
    seen: list[Activation | None] = [None] * workers

    def serve(index: int) -> None:
        start.wait()
        seen[index] = stores[index].current(model, default_version=index + 1)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = stores[0].history(model)
    assert len(history) == 1
    assert seen == [history[0]] * workers


def test_activate_pin_unpin_and_rollback_write_numbered_revisions(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    activated = store.activate(model, 2, expected_revision=1, **change())
    assert (activated.revision, activated.kind, activated.version, activated.replaces) == (
        2,
        ActivationKind.ACTIVATE,
        2,
        1,
    )
    assert (activated.author, activated.reason) == ("j.moreau", "lot 2291")
    store.pin(model, True, expected_revision=2, **change())
    store.activate(model, 3, expected_revision=3, **change())  # pinned still: an explicit activation keeps it
    store.rollback(model, expected_revision=4, **change(reason="crack recall fell"))
    store.pin(model, False, expected_revision=5, **change())
    latest = store.activate(model, 4, expected_revision=6, **change())
    assert steps(store.history(model)) == [
        (1, "initial", 1, False, None),
        (2, "activate", 2, False, 1),
        (3, "pin", 2, True, 2),
        (4, "activate", 3, True, 3),
        (5, "rollback", 2, True, 4),
        (6, "unpin", 2, False, 5),
        (7, "activate", 4, False, 6),
    ]
    assert store.current(model, default_version=1) == latest  # every field survives the database


def test_rollback_passes_over_pins_and_repeats_of_the_current_version(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    store.activate(model, 2, expected_revision=1, **change())
    store.pin(model, True, expected_revision=2, **change())
    store.pin(model, False, expected_revision=3, **change())
    store.pin(model, True, expected_revision=4, **change())
    rolled = store.rollback(model, expected_revision=5, **change())
    assert (rolled.revision, rolled.kind, rolled.version, rolled.pinned, rolled.replaces) == (
        6,
        ActivationKind.ROLLBACK,
        1,
        True,
        5,
    )
    # Rolling back again goes back to the version before this one: 2, from revision 5.
    again = store.rollback(model, expected_revision=6, **change())
    assert (again.revision, again.version) == (7, 2)


def test_rollback_walks_back_to_the_newest_other_version_not_the_oldest(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    for base, version in enumerate((2, 3, 2), start=1):
        store.activate(model, version, expected_revision=base, **change())
    store.pin(model, True, expected_revision=4, **change())
    assert store.previous_version(model, default_version=1) == 3  # what the rollback brings back
    rolled = store.rollback(model, expected_revision=5, **change())
    assert (rolled.revision, rolled.version) == (6, 3)


def test_rollback_with_no_earlier_version_is_refused(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    assert store.previous_version(model, default_version=1) is None
    with pytest.raises(InvalidParameters, match="no earlier version to roll back to.*up to 1 has version 1"):
        store.rollback(model, expected_revision=1, **change())
    store.pin(model, True, expected_revision=1, **change())
    with pytest.raises(InvalidParameters, match="no earlier version to roll back to.*up to 2 has version 1"):
        store.rollback(model, expected_revision=2, **change())
    assert [a.revision for a in store.history(model)] == [2, 1]


def test_activating_the_active_version_or_pinning_twice_is_refused(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=4)
    with pytest.raises(InvalidParameters, match="version 4 of .* is already active"):
        store.activate(model, 4, expected_revision=1, **change())
    with pytest.raises(InvalidParameters, match="is already not pinned"):
        store.pin(model, False, expected_revision=1, **change())
    store.pin(model, True, expected_revision=1, **change())
    with pytest.raises(InvalidParameters, match="is already pinned"):
        store.pin(model, True, expected_revision=2, **change())
    assert [a.revision for a in store.history(model)] == [2, 1]


def test_a_stale_expected_revision_conflicts_naming_the_current_one_and_writes_nothing(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    store.activate(model, 2, expected_revision=1, author="ann", reason="new weld line")
    stale = r"at revision 2 \(version 2, activate by ann: new weld line\), not 1.*send it with expected_revision 2"
    with pytest.raises(Conflict, match=stale):
        store.activate(model, 3, expected_revision=1, **change())
    with pytest.raises(Conflict, match=stale):
        store.rollback(model, expected_revision=1, **change())
    with pytest.raises(Conflict, match=stale):
        store.pin(model, True, expected_revision=1, **change())
    with pytest.raises(Conflict, match=r"at revision 2 .*, not 3"):
        store.activate(model, 3, expected_revision=3, **change())
    with pytest.raises(Conflict, match="no version revisions yet"):
        store.activate(unique_name(), 2, expected_revision=1, **change())
    assert [a.revision for a in store.history(model)] == [2, 1]


def test_concurrent_activations_on_the_same_revision_exactly_one_wins(open_store: Callable[[], VersionStore]):
    model = unique_name()
    writers = 8
    stores = [open_store() for _ in range(writers)]  # one engine each, as in separate workers
    stores[0].current(model, default_version=1)
    start = threading.Barrier(writers)
    outcomes: list[str] = [""] * writers

    def write(index: int) -> None:
        start.wait()
        try:
            stores[index].activate(model, index + 2, author=f"writer-{index}", reason="race", expected_revision=1)
            outcomes[index] = "won"
        except Conflict as exc:
            outcomes[index] = "conflict" if "at revision 2" in exc.message else exc.message

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * (writers - 1) + ["won"]
    winner = outcomes.index("won")
    history = stores[0].history(model)
    assert [a.revision for a in history] == [2, 1]
    assert (history[0].author, history[0].version) == (f"writer-{winner}", winner + 2)


@pytest.mark.parametrize("field", ["author", "reason"])
def test_a_nul_character_in_the_audit_trail_is_refused(store: VersionStore, field: str):
    model = unique_name()
    store.current(model, default_version=1)
    texts = {**change(), field: "lot\x002291"}
    message = f"{field} must not contain a NUL character"
    with pytest.raises(InvalidParameters, match=message):
        store.activate(model, 2, expected_revision=1, **texts)
    with pytest.raises(InvalidParameters, match=message):
        store.pin(model, True, expected_revision=1, **texts)
    store.activate(model, 2, expected_revision=1, **change())
    with pytest.raises(InvalidParameters, match=message):
        store.rollback(model, expected_revision=2, **texts)
    assert [a.revision for a in store.history(model)] == [2, 1]


def test_missing_or_oversized_audit_text_and_bad_numbers_are_refused(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    cases = [
        ({"author": ""}, "author is required"),
        ({"reason": "  "}, "reason is required"),
        ({"author": "a" * 201}, "author must be at most 200 characters, got 201"),
        ({"expected_revision": 0}, "expected_revision must be an integer of at least 1, got 0"),
        ({"expected_revision": True}, "expected_revision must be an integer of at least 1, got True"),
        ({"version": -2}, "version must be an integer of at least 1, got -2"),
    ]
    for overrides, message in cases:
        arguments = {"version": 2, "author": "qa", "reason": "r", "expected_revision": 1, **overrides}
        with pytest.raises(InvalidParameters, match=message):
            store.activate(model, **arguments)
    assert store.activate(model, 2, author="a" * 200, reason="r", expected_revision=1).revision == 2


def test_newest_revisions_lists_every_model_in_one_read(store: VersionStore):
    weld, cast, paint = unique_name(), unique_name(), unique_name()
    for model in (weld, cast, paint):
        store.current(model, default_version=1)
    store.activate(cast, 2, expected_revision=1, **change())
    store.activate(cast, 3, expected_revision=2, **change())
    store.pin(paint, True, expected_revision=1, **change())
    newest = store.newest_revisions()
    assert {model: newest[model] for model in (weld, cast, paint)} == {weld: 1, cast: 3, paint: 2}


def test_history_is_newest_first_and_pages_with_before(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    for base in range(1, 6):
        store.activate(model, base + 1, expected_revision=base, **change())
    assert [a.revision for a in store.history(model, limit=2)] == [6, 5]
    assert [a.revision for a in store.history(model, limit=2, before=5)] == [4, 3]
    assert [a.revision for a in store.history(model, limit=10, before=2)] == [1]
    assert store.history(model, before=1) == []
    assert store.history("weld-never-served") == []


def test_switch_reports_are_upserted_per_worker_and_filtered_by_server_version_and_time(store: VersionStore):
    model, here, there = unique_name(), f"host-{uuid.uuid4().hex[:8]}", f"host-{uuid.uuid4().hex[:8]}"
    before = datetime.now(UTC)
    first = {worker: store.report_switch(here, worker, model, 1) for worker in (1, 2, 3)}
    store.report_switch(there, 1, model, 2)
    store.report_switch(here, 1, unique_name(), 2)  # another model on the same worker
    assert store.switched(here, model, 1, since=before) == first
    assert first[1].utcoffset() == timedelta(0)

    started = datetime.now(UTC)
    moved = {worker: store.report_switch(here, worker, model, 2) for worker in (1, 3)}  # worker 2 lags
    assert moved[1] > first[1]
    assert store.switched(here, model, 2, since=started) == moved
    assert store.switched(here, model, 1, since=before) == {2: first[2]}  # rows replaced, not added
    assert store.switched(here, model, 2, since=datetime.now(UTC) + timedelta(seconds=1)) == {}
    assert store.switched(there, model, 2, since=started) == {}  # it switched before `started`
    # A time in another zone means the same instant.
    assert store.switched(here, model, 2, since=started.astimezone(timezone(timedelta(hours=5)))) == moved


def test_a_new_store_on_the_same_database_sees_everything(open_store: Callable[[], VersionStore]):
    model, server = unique_name(), f"host-{uuid.uuid4().hex[:8]}"
    first = open_store()
    first.current(model, default_version=1)
    first.activate(model, 2, expected_revision=1, **change())
    first.pin(model, True, expected_revision=2, **change())
    since = datetime.now(UTC) - timedelta(seconds=1)
    switched_at = first.report_switch(server, 4, model, 2)
    written = first.history(model)

    later = open_store()  # another engine, as in a restarted worker
    assert later.history(model) == written
    assert later.current(model, default_version=9) == written[0]
    assert later.newest_revisions()[model] == 3
    assert later.switched(server, model, 2, since=since) == {4: switched_at}


# --- loading, unloading and shadow runs -----------------------------------------------------------


def state(a: Activation) -> tuple:
    """(kind, version, served, loaded, shadow, replaces, author, reason)."""
    return (a.kind, a.version, a.served, a.loaded, a.shadow, a.replaces, a.author, a.reason)


def test_loading_versions_beside_the_active_one_writes_load_revisions(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=2)
    store.pin(model, True, expected_revision=1, **change())
    four = store.load(model, 4, expected_revision=2, **change(reason="compare on line 3"))
    assert (four.revision, *state(four)) == (
        3,
        ActivationKind.LOAD,
        2,
        True,
        (4,),
        None,
        2,
        "j.moreau",
        "compare on line 3",
    )
    assert four.pinned  # carried over from the pin
    assert four.wanted == {2, 4}
    three = store.load(model, 3, expected_revision=3, **change())
    assert (three.revision, three.loaded, three.replaces) == (4, (3, 4), 3)  # kept in order
    assert three.wanted == {2, 3, 4}
    assert store.current(model, default_version=9) == three  # every field survives the database
    assert store.history(model)[:2] == [three, four]


def test_unloading_a_version_keeps_the_others_loaded(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    store.load(model, 2, expected_revision=1, **change())
    store.load(model, 3, expected_revision=2, **change())
    unloaded = store.unload(model, 2, expected_revision=3, **change(reason="done comparing"))
    assert (unloaded.revision, *state(unloaded)) == (
        4,
        ActivationKind.UNLOAD,
        1,
        True,
        (3,),
        None,
        3,
        "j.moreau",
        "done comparing",
    )
    assert unloaded.wanted == {1, 3}
    assert store.current(model, default_version=1) == unloaded
    last = store.unload(model, 3, expected_revision=4, **change())
    assert (last.loaded, last.served, last.wanted) == ((), True, {1})
    assert store.history(model)[0] == last


def test_unloading_the_model_ends_its_shadow_run_and_loading_it_brings_back_its_versions(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    store.load(model, 3, expected_revision=1, **change())
    store.start_shadow(model, Shadow(2, 0.25, 10), expected_revision=2, **change())
    off = store.unload(model, None, expected_revision=3, **change(author="ops", reason="line stopped"))
    assert (off.revision, *state(off)) == (4, ActivationKind.UNLOAD, 1, False, (3,), None, 3, "ops", "line stopped")
    assert off.wanted == set()  # nothing loaded in any worker
    assert store.current(model, default_version=1) == off
    assert store.shadow_run(model) is None

    on = store.load(model, None, expected_revision=4, **change(author="ops", reason="line restarted"))
    assert (on.revision, *state(on)) == (5, ActivationKind.LOAD, 1, True, (3,), None, 4, "ops", "line restarted")
    assert on.wanted == {1, 3}
    assert store.history(model)[:2] == [on, off]


def test_starting_and_stopping_a_shadow_run_write_shadow_and_unshadow_revisions(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    shadow = Shadow(version=3, share=0.3, keep_frames=40)
    started = store.start_shadow(model, shadow, expected_revision=1, **change(reason="try v3"))
    assert (started.revision, *state(started)) == (
        2,
        ActivationKind.SHADOW,
        1,
        True,
        (),
        Shadow(3, 0.3, 40),
        1,
        "j.moreau",
        "try v3",
    )
    assert started.wanted == {1, 3}
    read = store.current(model, default_version=1)
    assert read == started
    assert (type(read.shadow.share), type(read.shadow.keep_frames)) == (float, int)

    stopped = store.stop_shadow(model, expected_revision=2, **change(reason="enough"))
    assert (stopped.revision, *state(stopped)) == (
        3,
        ActivationKind.UNSHADOW,
        1,
        True,
        (),
        None,
        2,
        "j.moreau",
        "enough",
    )
    assert stopped.wanted == {1}
    assert store.history(model, limit=2) == [stopped, started]


def test_a_shadow_of_a_loaded_version_is_wanted_once(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    store.load(model, 2, expected_revision=1, **change())
    started = store.start_shadow(model, Shadow(2, 1.0, 0), expected_revision=2, **change())
    assert (started.loaded, started.shadow, started.wanted) == ((2,), Shadow(2, 1.0, 0), {1, 2})
    assert store.current(model, default_version=1) == started


def test_the_share_and_kept_frames_bounds_are_inclusive(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    full = store.start_shadow(model, Shadow(2, 1.0, MAX_KEPT_FRAMES), expected_revision=1, **change())
    assert store.current(model, default_version=1).shadow == Shadow(2, 1.0, 1000)
    tiny = store.start_shadow(model, Shadow(3, 0.001, 0), expected_revision=full.revision, **change())
    assert store.current(model, default_version=1).shadow == Shadow(3, 0.001, 0) == tiny.shadow


def test_load_unload_and_shadow_refusals_name_the_reason_and_write_nothing(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    store.load(model, 2, expected_revision=1, **change())
    store.start_shadow(model, Shadow(3, 0.5, 5), expected_revision=2, **change())
    refusals = [
        (lambda: store.unload(model, 1, expected_revision=3, **change()), f"version 1 is {model}'s active version"),
        (
            lambda: store.unload(model, 3, expected_revision=3, **change()),
            f"version 3 of {model} runs in its shadow run: stop the shadow run first",
        ),
        (
            lambda: store.unload(model, 4, expected_revision=3, **change()),
            rf"version 4 of {model} is not loaded \(revision 3\)",
        ),
        (
            lambda: store.load(model, 2, expected_revision=3, **change()),
            rf"version 2 of {model} is loaded already \(revision 3\)",
        ),
        (
            lambda: store.load(model, 1, expected_revision=3, **change()),
            rf"version 1 of {model} is loaded already \(revision 3\)",
        ),
        (
            lambda: store.load(model, None, expected_revision=3, **change()),
            rf"{model} is loaded already \(revision 3\)",
        ),
        (
            lambda: store.start_shadow(model, Shadow(1, 0.5, 5), expected_revision=3, **change()),
            f"version 1 is {model}'s active version: a shadow runs another one",
        ),
        (
            lambda: store.start_shadow(model, Shadow(2, 0, 5), expected_revision=3, **change()),
            "share must be above 0 and at most 1, got 0",
        ),
        (
            lambda: store.start_shadow(model, Shadow(2, 1.5, 5), expected_revision=3, **change()),
            "share must be above 0 and at most 1, got 1.5",
        ),
        (
            lambda: store.start_shadow(model, Shadow(2, 0.5, -1), expected_revision=3, **change()),
            "keep_frames must be 0 to 1000, got -1",
        ),
        (
            lambda: store.start_shadow(model, Shadow(2, 0.5, MAX_KEPT_FRAMES + 1), expected_revision=3, **change()),
            "keep_frames must be 0 to 1000, got 1001",
        ),
        (
            lambda: store.start_shadow(model, Shadow(0, 0.5, 5), expected_revision=3, **change()),
            "version must be an integer of at least 1, got 0",
        ),
        (lambda: store.load(model, 0, expected_revision=3, **change()), "version must be an integer of at least 1"),
    ]
    for refused, message in refusals:
        with pytest.raises(InvalidParameters, match=message):
            refused()
    assert [a.revision for a in store.history(model)] == [3, 2, 1]

    store.stop_shadow(model, expected_revision=3, **change())
    with pytest.raises(InvalidParameters, match=rf"{model} has no shadow run \(revision 4\)"):
        store.stop_shadow(model, expected_revision=4, **change())
    assert [a.revision for a in store.history(model)] == [4, 3, 2, 1]


def test_changes_to_an_unloaded_model_are_refused_until_it_is_loaded(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    store.load(model, 3, expected_revision=1, **change())
    store.activate(model, 2, expected_revision=2, **change())  # something to roll back to
    store.unload(model, None, expected_revision=3, **change())
    unloaded = rf"{model} is unloaded \(revision 4\): load it first"
    refusals = [
        lambda: store.activate(model, 5, expected_revision=4, **change()),
        lambda: store.rollback(model, expected_revision=4, **change()),
        lambda: store.unload(model, None, expected_revision=4, **change()),
        lambda: store.unload(model, 3, expected_revision=4, **change()),
        lambda: store.load(model, 5, expected_revision=4, **change()),
        lambda: store.start_shadow(model, Shadow(5, 0.5, 0), expected_revision=4, **change()),
    ]
    for refused in refusals:
        with pytest.raises(InvalidParameters, match=unloaded):
            refused()
    with pytest.raises(InvalidParameters, match=rf"{model} has no shadow run \(revision 4\)"):
        store.stop_shadow(model, expected_revision=4, **change())
    assert [a.revision for a in store.history(model)] == [4, 3, 2, 1]
    assert store.load(model, None, expected_revision=4, **change()).wanted == {2, 3}
    assert store.activate(model, 5, expected_revision=5, **change()).version == 5


def test_stale_expected_revisions_conflict_on_load_unload_and_shadow_changes(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    store.load(model, 2, expected_revision=1, author="ann", reason="compare")
    stale = r"at revision 2 \(version 1, load by ann: compare\), not 1.*send it with expected_revision 2"
    stale_changes = [
        lambda: store.load(model, 3, expected_revision=1, **change()),
        lambda: store.load(model, None, expected_revision=1, **change()),
        lambda: store.unload(model, 2, expected_revision=1, **change()),
        lambda: store.unload(model, None, expected_revision=1, **change()),
        lambda: store.start_shadow(model, Shadow(3, 0.5, 0), expected_revision=1, **change()),
        lambda: store.stop_shadow(model, expected_revision=1, **change()),
    ]
    for stale_change in stale_changes:
        with pytest.raises(Conflict, match=stale):
            stale_change()
    with pytest.raises(Conflict, match="no version revisions yet"):
        store.start_shadow(unique_name(), Shadow(3, 0.5, 0), expected_revision=1, **change())
    assert [a.revision for a in store.history(model)] == [2, 1]


def test_activating_the_shadow_candidate_promotes_it_and_ends_the_run(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    store.start_shadow(model, Shadow(2, 0.5, 0), expected_revision=1, **change())
    other = store.activate(model, 3, expected_revision=2, **change())  # not the candidate: the run goes on
    assert (other.kind, other.version, other.shadow, other.wanted) == (
        ActivationKind.ACTIVATE,
        3,
        Shadow(2, 0.5, 0),
        {3, 2},
    )
    assert store.shadow_run(model).revision == 2
    promoted = store.activate(model, 2, expected_revision=3, **change(reason="v2 agreed"))
    assert (promoted.revision, *state(promoted)) == (
        4,
        ActivationKind.ACTIVATE,
        2,
        True,
        (),
        None,
        3,
        "j.moreau",
        "v2 agreed",
    )
    assert promoted.wanted == {2}
    assert store.current(model, default_version=1) == promoted
    assert store.shadow_run(model) is None
    assert store.run_in_force(promoted) is None


def test_rolling_back_to_the_shadow_candidate_promotes_it_too(store: VersionStore):
    model = unique_name()
    store.current(model, default_version=1)
    store.activate(model, 2, expected_revision=1, **change())
    store.start_shadow(model, Shadow(1, 0.5, 0), expected_revision=2, **change())
    rolled = store.rollback(model, expected_revision=3, **change())
    assert (rolled.kind, rolled.version, rolled.shadow) == (ActivationKind.ROLLBACK, 1, None)
    assert store.current(model, default_version=1) == rolled
    # A rollback to another version than the candidate keeps the run.
    store.start_shadow(model, Shadow(3, 0.5, 0), expected_revision=4, **change())
    kept = store.rollback(model, expected_revision=5, **change())
    assert (kept.version, kept.shadow) == (2, Shadow(3, 0.5, 0))
    assert store.run_in_force(kept) == 5


def test_shadow_run_is_the_revision_that_started_the_run_in_force(store: VersionStore):
    model = unique_name()
    initial = store.current(model, default_version=1)
    assert store.shadow_run(model) is None
    assert store.run_in_force(initial) is None
    assert store.shadow_run(unique_name()) is None  # a model with no revisions

    started = store.start_shadow(model, Shadow(2, 0.5, 10), expected_revision=1, **change())
    assert store.shadow_run(model) == started
    assert store.run_in_force(started) == 2
    loaded = store.load(model, 3, expected_revision=2, **change())
    pinned = store.pin(model, True, expected_revision=3, **change())
    assert store.shadow_run(model) == started  # later revisions keep the run in force
    assert (store.run_in_force(loaded), store.run_in_force(pinned)) == (2, 2)
    assert store.shadow_run(model, 2) == started
    assert store.shadow_run(model, 3) is None  # a load started no run
    assert store.shadow_run(model, 99) is None
    assert store.shadow_run(unique_name(), 2) is None  # the run number is the model's own

    second = store.start_shadow(model, Shadow(3, 1.0, 0), expected_revision=4, **change())
    assert store.shadow_run(model) == second  # a new run, ending the one before
    assert store.run_in_force(second) == 5
    assert store.shadow_run(model, 2) == started  # the earlier run can still be looked up

    stopped = store.stop_shadow(model, expected_revision=5, **change())
    assert store.shadow_run(model) is None
    assert store.run_in_force(stopped) is None
    assert store.shadow_run(model, 5) == second

    third = store.start_shadow(model, Shadow(2, 0.5, 1), expected_revision=6, **change())
    after = store.unload(model, 3, expected_revision=7, **change())
    assert store.run_in_force(after) == third.revision == 7  # the newest run, not an earlier one
    assert store.shadow_run(model) == third


def test_first_use_of_a_model_only_in_the_store_writes_an_unloaded_initial_revision(store: VersionStore):
    model = unique_name()
    first = store.current(model, 2, served=False, loaded=(3,))
    assert (first.revision, *state(first)) == (
        1,
        ActivationKind.INITIAL,
        2,
        False,
        (3,),
        None,
        None,
        "model store",
        "in the model store, not loaded",
    )
    assert first.wanted == set()
    assert store.current(model, 5) == first  # served and loaded only apply on first use
    assert store.history(model) == [first]
    loaded = store.load(model, None, expected_revision=1, **change())
    assert (loaded.served, loaded.loaded, loaded.wanted) == (True, (3,), {2, 3})

    served = unique_name()
    at_start = store.current(served, 4, loaded=(5, 6))
    assert (at_start.served, at_start.loaded, at_start.reason, at_start.wanted) == (
        True,
        (5, 6),
        "served at start-up",
        {4, 5, 6},
    )
    assert store.newest(served) == at_start


def test_newest_reads_without_writing(store: VersionStore):
    model = unique_name()
    assert store.newest(model) is None
    assert store.history(model) == []
    store.current(model, default_version=1)
    pinned = store.pin(model, True, expected_revision=1, **change())
    assert store.newest(model) == pinned


def test_tallies_keep_one_row_per_worker_of_a_run(store: VersionStore):
    model, other = unique_name(), unique_name()
    here, there = f"host-{uuid.uuid4().hex[:8]}", f"host-{uuid.uuid4().hex[:8]}"
    before = datetime.now(UTC)
    store.save_tally(model, 2, here, 1, '{"compared": 1}')
    [(_, first_saved)] = store.tallies(model, 2)
    store.save_tally(model, 2, here, 1, '{"compared": 5}')  # replaces worker 1's row
    store.save_tally(model, 2, here, 2, '{"compared": 7}')
    store.save_tally(model, 2, there, 1, '{"compared": 11}')  # worker 1 of another server
    store.save_tally(model, 3, here, 1, '{"run": 3}')
    store.save_tally(other, 2, here, 1, '{"model": "other"}')
    after = datetime.now(UTC)

    rows = store.tallies(model, 2)
    assert sorted(tally for tally, _ in rows) == ['{"compared": 11}', '{"compared": 5}', '{"compared": 7}']
    for _, updated_at in rows:
        assert updated_at.utcoffset() == timedelta(0)
        assert before <= updated_at <= after
    assert dict(rows)['{"compared": 5}'] > first_saved  # rewritten, with the time of the rewrite
    assert [tally for tally, _ in store.tallies(model, 3)] == ['{"run": 3}']
    assert [tally for tally, _ in store.tallies(other, 2)] == ['{"model": "other"}']
    assert store.tallies(model, 4) == []


# --- tables made by an earlier release ------------------------------------------------------------

OLD_ACTIVATIONS = """CREATE TABLE model_activations (
    model VARCHAR(64) NOT NULL,
    revision INTEGER NOT NULL,
    kind VARCHAR(16) NOT NULL,
    version INTEGER NOT NULL,
    pinned BOOLEAN NOT NULL,
    author VARCHAR(200) NOT NULL,
    reason TEXT NOT NULL,
    created_at {timestamp} NOT NULL,
    replaces INTEGER,
    PRIMARY KEY (model, revision)
)"""
OLD_ROW = """INSERT INTO model_activations
    (model, revision, kind, version, pinned, author, reason, created_at, replaces)
    VALUES (:model, :revision, :kind, :version, :pinned, :author, :reason, :created_at, :replaces)"""
NEW_COLUMNS = {"served", "loaded", "shadow_version", "shadow_share", "shadow_keep"}


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a database of its own: a new SQLite file, or a new PostgreSQL database (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh' / 'thresholds.db'}"
        return
    server = make_url(postgres_url())
    name = f"fresh_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_table_from_an_earlier_release_gains_the_new_columns_with_their_defaults(kind: str, tmp_path: Path):
    with fresh_database(kind, tmp_path) as url:
        owner = ThresholdStore.open(url)
        try:
            engine = owner.engine
            sqlite = engine.dialect.name == "sqlite"
            made_at = "2024-05-01 08:30:00.000000" if sqlite else datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
            old = {
                "model": "weld-old",
                "kind": "activate",
                "version": 3,
                "pinned": True,
                "author": "ann",
                "reason": "old release",
                "created_at": made_at,
            }
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS model_activations"))
                conn.execute(text(OLD_ACTIVATIONS.format(timestamp="DATETIME" if sqlite else "TIMESTAMPTZ")))
                conn.execute(text(OLD_ROW), {**old, "revision": 1, "replaces": None})
            assert {c["name"] for c in inspect(engine).get_columns("model_activations")}.isdisjoint(NEW_COLUMNS)

            store = VersionStore(engine)
            assert NEW_COLUMNS <= {c["name"] for c in inspect(engine).get_columns("model_activations")}
            read = store.current("weld-old", default_version=9)
            assert read == Activation(
                model="weld-old",
                revision=1,
                kind=ActivationKind.ACTIVATE,
                version=3,
                pinned=True,
                author="ann",
                reason="old release",
                created_at=datetime(2024, 5, 1, 8, 30, tzinfo=UTC),
                replaces=None,
                served=True,
                loaded=(),
                shadow=None,
            )
            assert read.wanted == {3}

            started = store.start_shadow("weld-old", Shadow(4, 0.5, 2), expected_revision=1, **change())
            assert store.history("weld-old") == [started, read]
            # A worker of the earlier release still running writes rows without the new columns.
            with engine.begin() as conn:
                conn.execute(text(OLD_ROW), {**old, "revision": 3, "version": 5, "replaces": 2})
            again = VersionStore(engine)  # a second start finds every column there
            newest = again.current("weld-old", default_version=9)
            assert (newest.revision, newest.version, newest.served, newest.loaded, newest.shadow) == (
                3,
                5,
                True,
                (),
                None,
            )
            loaded = again.load("weld-old", 6, expected_revision=3, **change())
            assert again.current("weld-old", default_version=9) == loaded
        finally:
            owner.close()
