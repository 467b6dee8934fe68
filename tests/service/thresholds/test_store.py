"""The thresholds store on real databases: SQLite in WAL mode, and PostgreSQL where one is running.

PostgreSQL is found through INSPECTION_TEST_POSTGRES_URL (a SQLAlchemy URL such as
postgresql+psycopg://postgres@127.0.0.1:5432/inspection_test); without it, or when it cannot
be reached, the PostgreSQL cases are skipped with that reason.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event

from service.errors import Conflict, InvalidParameters
from service.thresholds.store import RevisionKind, ThresholdStore
from tests.conftest import postgres_url
from tests.service.manifests import make_manifest


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'thresholds.db'}"
    return postgres_url()


@pytest.fixture
def store(database_url: str) -> Iterator[ThresholdStore]:
    store = ThresholdStore.open(database_url)
    yield store
    store.close()


def unique_name() -> str:
    """Every test its own model name: PostgreSQL runs share one database."""
    return f"weld-{uuid.uuid4().hex[:10]}"


def test_manifest_defaults_become_revision_one_on_first_use(store: ThresholdStore):
    manifest = make_manifest(name=unique_name(), threshold=0.4)
    first = store.current(manifest)
    assert (first.revision, first.kind, first.replaces) == (1, RevisionKind.INITIAL, None)
    assert first.thresholds == {"porosity": 0.4, "crack": 0.4, "undercut": 0.4}
    assert first.model_version == 1 and first.reason == f"defaults of {manifest.name}:1"
    assert store.active(manifest).revision == 1
    assert len(store.history(manifest.name)) == 1  # reading again writes nothing


def test_a_partial_change_is_merged_onto_its_base_and_attributed(store: ThresholdStore):
    manifest = make_manifest(name=unique_name())
    written = store.update(
        manifest, thresholds={"crack": 0.2}, nms_iou=None, author="j.moreau", reason="lot 2291", expected_revision=1
    )
    assert (written.revision, written.kind, written.replaces) == (2, RevisionKind.UPDATE, 1)
    assert written.thresholds == {"porosity": 0.5, "crack": 0.2, "undercut": 0.5}
    read = store.current(manifest)
    assert read == written  # every field survives the database, created_at (UTC) included
    assert read.created_at.utcoffset().total_seconds() == 0
    assert store.active(manifest).values == {"porosity": 0.5, "crack": 0.2, "undercut": 0.5}


def test_the_values_carried_over_to_another_version_are_a_revision_of_their_own(store: ThresholdStore):
    name = unique_name()
    first, second = make_manifest(name=name), make_manifest(name=name, version=2)
    store.update(first, thresholds={"crack": 0.2}, nms_iou=None, author="ann", reason="lot 2291", expected_revision=1)
    carried = store.carry_over(second, author="a.lindqvist", reason="version 2 activated: retrained")
    assert (carried.revision, carried.kind, carried.model_version, carried.replaces) == (3, RevisionKind.CARRIED, 2, 2)
    assert carried.thresholds == {"porosity": 0.5, "crack": 0.2, "undercut": 0.5}
    assert (carried.author, carried.reason) == ("a.lindqvist", "version 2 activated: retrained")
    assert store.carry_over(second, author="b", reason="again") == carried  # already this version's: nothing new
    back = store.carry_over(first, author="a.lindqvist", reason="version 1 rolled back to: alarms")
    assert (back.revision, back.model_version, back.thresholds) == (4, 1, carried.thresholds)


def test_a_stale_expected_revision_conflicts_and_writes_nothing(store: ThresholdStore):
    manifest = make_manifest(name=unique_name())
    store.update(manifest, thresholds={"crack": 0.2}, nms_iou=None, author="ann", reason="first", expected_revision=1)
    with pytest.raises(Conflict, match=r"at revision 2 \(by ann: first\), not 1.*send expected_revision 2"):
        store.update(
            manifest, thresholds={"crack": 0.9}, nms_iou=None, author="bob", reason="late", expected_revision=1
        )
    assert [r.revision for r in store.history(manifest.name)] == [2, 1]
    assert store.current(manifest).thresholds["crack"] == 0.2


def test_concurrent_writers_on_the_same_revision_exactly_one_wins(database_url: str):
    manifest = make_manifest(name=unique_name())
    writers = 8
    stores = [ThresholdStore.open(database_url) for _ in range(writers)]  # one engine each, as in separate workers
    stores[0].current(manifest)
    start = threading.Barrier(writers)
    outcomes: list[str] = [""] * writers

    def write(index: int) -> None:
        start.wait()
        try:
            stores[index].update(
                manifest,
                thresholds={"crack": index / 10},
                nms_iou=None,
                author=f"writer-{index}",
                reason="race",
                expected_revision=1,
            )
            outcomes[index] = "won"
        except Conflict:
            outcomes[index] = "conflict"

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(outcomes) == ["conflict"] * (writers - 1) + ["won"]
        winner = outcomes.index("won")
        history = stores[0].history(manifest.name)
        assert [r.revision for r in history] == [2, 1]
        assert history[0].author == f"writer-{winner}" and history[0].thresholds["crack"] == winner / 10
    finally:
        for store in stores:
            store.close()


def test_rollback_brings_back_an_earlier_revisions_values_as_a_new_revision(store: ThresholdStore):
    manifest = make_manifest(name=unique_name())
    store.update(manifest, thresholds={"crack": 0.2}, nms_iou=None, author="ann", reason="a", expected_revision=1)
    store.update(manifest, thresholds={"porosity": 0.7}, nms_iou=None, author="ann", reason="b", expected_revision=2)
    rolled = store.rollback(manifest, to_revision=2, author="bob", reason="porosity alarms missed", expected_revision=3)
    assert (rolled.revision, rolled.kind, rolled.replaces, rolled.restores) == (4, RevisionKind.ROLLBACK, 3, 2)
    assert rolled.thresholds == {"porosity": 0.5, "crack": 0.2, "undercut": 0.5}
    assert [r.revision for r in store.history(manifest.name)] == [4, 3, 2, 1]  # nothing rewritten
    assert store.active(manifest).values == rolled.thresholds


def test_rollback_to_the_active_or_a_later_revision_is_refused(store: ThresholdStore):
    manifest = make_manifest(name=unique_name())
    store.update(manifest, thresholds={"crack": 0.2}, nms_iou=None, author="ann", reason="a", expected_revision=1)
    for to_revision in (2, 3):
        with pytest.raises(InvalidParameters, match="must be an earlier revision of .*: 1 to 1"):
            store.rollback(manifest, to_revision=to_revision, author="bob", reason="x", expected_revision=2)
    with pytest.raises(Conflict):
        store.rollback(manifest, to_revision=1, author="bob", reason="x", expected_revision=1)
    assert len(store.history(manifest.name)) == 2


def test_unknown_classes_values_outside_0_1_and_misplaced_nms_iou_are_refused(store: ThresholdStore):
    classifier = make_manifest(name=unique_name())
    store.current(classifier)
    cases = [
        ({"scratch": 0.3}, None, r"unknown defect classes \['scratch'\]"),
        ({"no_defect": 0.3}, None, r"unknown defect classes \['no_defect'\]"),  # the background never rejects
        ({"crack": 1.5}, None, "between 0 and 1"),
        ({"crack": float("nan")}, None, "between 0 and 1"),
        ({"crack": -0.1}, None, "between 0 and 1"),
        ({}, 0.5, "detection models only"),
        ({}, None, "nothing to change"),
    ]
    for thresholds, nms_iou, message in cases:
        with pytest.raises(InvalidParameters, match=message):
            store.update(
                classifier, thresholds=thresholds, nms_iou=nms_iou, author="a", reason="r", expected_revision=1
            )
    assert len(store.history(classifier.name)) == 1

    detector = make_manifest(name=unique_name(), task="detection")
    with pytest.raises(InvalidParameters, match="nms_iou must lie between 0 and 1"):
        store.update(detector, thresholds={}, nms_iou=1.2, author="a", reason="r", expected_revision=1)
    written = store.update(detector, thresholds={}, nms_iou=0.6, author="a", reason="r", expected_revision=1)
    assert store.active(detector).nms_iou == 0.6 and written.thresholds == detector.thresholds


def test_history_is_newest_first_and_pages_with_before(store: ThresholdStore):
    manifest = make_manifest(name=unique_name())
    for base in range(1, 6):
        store.update(
            manifest, thresholds={"crack": base / 10}, nms_iou=None, author="a", reason="r", expected_revision=base
        )
    assert [r.revision for r in store.history(manifest.name, limit=2)] == [6, 5]
    assert [r.revision for r in store.history(manifest.name, limit=2, before=5)] == [4, 3]
    assert [r.revision for r in store.history(manifest.name, limit=10, before=2)] == [1]
    assert store.history("weld-never-served") == []


def test_a_write_through_one_store_is_announced_to_another_which_then_uses_it(database_url: str):
    manifest = make_manifest(name=unique_name())
    first, second = ThresholdStore.open(database_url), ThresholdStore.open(database_url)
    feed = second.change_feed()
    try:
        assert second.active(manifest).revision == 1
        feed.wait(0)  # listening (PostgreSQL), or the commit count seen (SQLite)
        assert not feed.wait(0.2), "nothing was committed"
        first.update(manifest, thresholds={"crack": 0.3}, nms_iou=None, author="a", reason="r", expected_revision=1)
        assert feed.wait(5.0), "the commit was not announced"
        second.refresh([manifest])
        active = second.active(manifest)
        assert (active.revision, active.values["crack"]) == (2, 0.3)
        assert feed.health.connected
    finally:
        feed.close()
        first.close()
        second.close()


def test_on_sqlite_a_write_through_one_store_is_active_at_once_in_another(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'thresholds.db'}"
    manifest = make_manifest(name=unique_name())
    first, second = ThresholdStore.open(url), ThresholdStore.open(url)
    try:
        assert second.active(manifest).revision == 1
        first.update(manifest, thresholds={"crack": 0.3}, nms_iou=None, author="a", reason="r", expected_revision=1)
        assert second.active(manifest).revision == 2
    finally:
        first.close()
        second.close()


def test_on_postgresql_the_set_held_is_used_without_a_query_until_refreshed():
    url = postgres_url()
    manifest = make_manifest(name=unique_name())
    first, second = ThresholdStore.open(url), ThresholdStore.open(url)
    statements: list[str] = []
    event.listen(second.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        assert second.active(manifest).revision == 1
        first.update(manifest, thresholds={"crack": 0.3}, nms_iou=None, author="a", reason="r", expected_revision=1)
        statements.clear()
        assert {second.active(manifest).revision for _ in range(100)} == {1}
        assert statements == []
        second.refresh([manifest])
        assert second.active(manifest).revision == 2
        assert len(statements) == 2  # every model's newest number, then the revision that changed
        statements.clear()
        second.refresh([manifest])
        assert len(statements) == 1  # nothing changed: the numbers only
    finally:
        first.close()
        second.close()


def test_a_new_model_version_with_other_classes_starts_from_its_own_defaults(store: ThresholdStore):
    name = unique_name()
    old = make_manifest(name=name, classes=("no_defect", "porosity", "crack"))
    store.update(old, thresholds={"crack": 0.2}, nms_iou=None, author="a", reason="r", expected_revision=1)
    new = make_manifest(name=name, version=2, classes=("no_defect", "porosity", "crack", "undercut"), threshold=0.6)
    current = store.current(new)
    assert (current.revision, current.kind, current.replaces, current.model_version) == (3, RevisionKind.INITIAL, 2, 2)
    assert current.thresholds == {"porosity": 0.6, "crack": 0.6, "undercut": 0.6}
    with pytest.raises(InvalidParameters, match="cannot be restored on this model version"):
        store.rollback(new, to_revision=2, author="a", reason="r", expected_revision=3)
    # The same classes in a new version keep the tuned values.
    same = make_manifest(name=name, version=3, classes=("no_defect", "porosity", "crack", "undercut"))
    assert store.current(same).revision == 3


def test_the_gauge_and_the_change_counter_follow_the_writes(store: ThresholdStore):
    manifest = make_manifest(name=unique_name())
    labels = {"model": manifest.name}
    store.active(manifest)
    store.update(manifest, thresholds={"crack": 0.2}, nms_iou=None, author="a", reason="r", expected_revision=1)
    store.rollback(manifest, to_revision=1, author="a", reason="r", expected_revision=2)
    assert REGISTRY.get_sample_value("inspection_thresholds_revision", labels) == 3
    for kind in ("initial", "update", "rollback"):
        assert REGISTRY.get_sample_value("inspection_threshold_changes_total", {**labels, "kind": kind}) == 1


def test_predictions_keep_the_last_revision_while_the_database_is_unreachable(tmp_path: Path):
    folder = tmp_path / "state"
    store = ThresholdStore.open(f"sqlite:///{folder / 'thresholds.db'}")
    manifest = make_manifest(name=unique_name())
    store.update(manifest, thresholds={"crack": 0.2}, nms_iou=None, author="a", reason="r", expected_revision=1)
    assert store.active(manifest).revision == 2
    store.close()  # drop pooled connections: the next read must open the file again
    folder.rename(tmp_path / "moved")
    kept = store.active(manifest)
    assert (kept.revision, kept.values["crack"]) == (2, 0.2)
    store.close()


def test_reading_the_active_revision_costs_well_under_a_millisecond(store: ThresholdStore):
    manifest = make_manifest(name=unique_name())
    store.active(manifest)
    reads = 500
    started = time.perf_counter()
    for _ in range(reads):
        store.active(manifest)
    per_read_ms = (time.perf_counter() - started) / reads * 1000
    assert per_read_ms < 2.0, f"{per_read_ms:.3f} ms per read"


@pytest.mark.parametrize("field", ["author", "reason"])
def test_a_nul_character_in_the_audit_trail_is_refused_alike_on_every_store(store: ThresholdStore, field: str):
    manifest = make_manifest(name=unique_name())
    texts = {"author": "j.moreau", "reason": "lot 2291", field: "lot\x002291"}
    with pytest.raises(InvalidParameters, match=f"{field} must not contain a NUL character"):
        store.update(manifest, thresholds={"crack": 0.2}, nms_iou=None, expected_revision=1, **texts)
    store.update(manifest, thresholds={"crack": 0.2}, nms_iou=None, expected_revision=1, author="qa", reason="r")
    with pytest.raises(InvalidParameters, match=f"{field} must not contain a NUL character"):
        store.rollback(manifest, to_revision=1, expected_revision=2, **texts)
    assert [r.revision for r in store.history(manifest.name)] == [2, 1]
