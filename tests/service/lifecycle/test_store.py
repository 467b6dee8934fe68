"""The version store on real databases: SQLite in WAL mode, and PostgreSQL where one is running.

PostgreSQL is found through INSPECTION_TEST_POSTGRES_URL (see tests/with_services.sh); without it,
or when it cannot be reached, the PostgreSQL cases are skipped with that reason.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from service.errors import Conflict, InvalidParameters
from service.lifecycle.store import Activation, ActivationKind, VersionStore
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
