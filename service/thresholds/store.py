"""Per-model threshold revisions in a database: live, versioned, audited.

Every change of a model's thresholds is a new numbered revision holding the whole
set (every defect class, and the NMS IoU for detectors), who made it, why, when,
the revision it replaced and its kind: `initial` (a manifest's defaults, written
on first use), `update`, `rollback`, or `carried` (the same values, now serving another version of
the model, activated or rolled back to). Revisions are never changed or deleted;
the newest one is active.

One row per revision, written in one transaction: a process killed mid-write
leaves the revision either wholly there or absent. The primary key
(model, revision) settles concurrent writers: both try to insert base + 1, the
database keeps exactly one, and the other gets `Conflict`.

SQLAlchemy Core, so the same code runs on the embedded SQLite file (WAL mode,
shared by every worker on the host) and on PostgreSQL (several replicas).
Each worker holds the revision in force of every model it serves, and a
prediction takes it from there. On SQLite a prediction first asks whether
anything at all was committed since the last look (`PRAGMA data_version`,
microseconds, no query), so a change through any worker takes effect on every
worker's next request. On PostgreSQL a prediction reads no database: a
revision's insert announces itself (`service.changes`), and each worker's
follower re-reads what changed (`refresh`), within milliseconds of the commit.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from service.changes import CommitCounterFeed, CommitWatch, NotificationFeed, announce, connect_timeouts
from service.config import Settings
from service.errors import Conflict, InvalidParameters
from service.manifest import ModelManifest
from service.metrics import inspection_metrics
from service.revisions import STORE_AUTHOR, create_tables, history_query, newest_revisions, utc
from service.tasks import HEADS
from service.thresholds.rules import ThresholdSet, check_review, check_thresholds, is_threshold, unknown_classes

log = logging.getLogger(__name__)

SQLITE_FILE = "thresholds.db"

_metadata = MetaData()
revisions = Table(
    "threshold_revisions",
    _metadata,
    Column("model", String(64), primary_key=True),
    Column("revision", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("thresholds", JSON, nullable=False),
    Column("nms_iou", Float, nullable=True),
    Column("model_version", Integer, nullable=False),
    Column("author", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("replaces", Integer, nullable=True),
    Column("restores", Integer, nullable=True),
    # The review band's lower bound per class that has one; null (tables of earlier releases) or {}: none.
    Column("review_thresholds", JSON, nullable=True),
)


class ThresholdStoreError(Exception):
    """The thresholds database cannot be opened."""


class RevisionKind(StrEnum):
    INITIAL = "initial"
    UPDATE = "update"
    ROLLBACK = "rollback"
    CARRIED = "carried"  # the same values, carried over to another version of the model


@dataclass(frozen=True)
class ThresholdRevision:
    model: str
    revision: int
    kind: RevisionKind
    thresholds: dict[str, float]  # every defect class
    nms_iou: float | None
    model_version: int  # the model version served when it was written
    author: str
    reason: str
    created_at: datetime
    replaces: int | None  # the revision that was active before this one
    restores: int | None  # rollback: the revision whose values this one brings back
    review_thresholds: dict[str, float] = field(default_factory=dict)  # the classes with a review band

    @property
    def threshold_set(self) -> ThresholdSet:
        return ThresholdSet(
            revision=self.revision,
            values=dict(self.thresholds),
            nms_iou=self.nms_iou,
            review=dict(self.review_thresholds),
        )


def database_url(settings: Settings) -> str:
    """`INSPECTION_THRESHOLDS_DB`, or the SQLite file in the state directory."""
    if settings.thresholds_db:
        return settings.thresholds_db
    return URL.create("sqlite", database=str(Path(settings.state_dir).resolve() / SQLITE_FILE)).render_as_string()


class ThresholdStore:
    """Threshold revisions of every model; the newest committed one is the one predictions use."""

    def __init__(self, engine: Engine, commits: CommitWatch | None = None) -> None:
        self._engine = engine
        self._commits = commits
        # The revision in force per model, as this process last read or wrote it: what predictions
        # use, also while the database is unreachable.
        self._held: dict[str, ThresholdSet] = {}
        # Per model, the database's commit count when its revision was last read (SQLite only).
        self._read_at_commit: dict[str, int] = {}
        self._unreachable = False  # log an outage once, not once per prediction

    @property
    def engine(self) -> Engine:
        """The database's engine, shared with the other state kept beside the thresholds (`service.lifecycle`)."""
        return self._engine

    @classmethod
    def open(cls, url: str) -> ThresholdStore:
        """Connect (creating the SQLite file and the table when missing)."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if not parsed.database or parsed.database == ":memory:":
                raise ValueError("the thresholds database must be a file shared by the workers, not in memory")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread off: pooled connections move between the event loop and worker threads.
            engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 10.0})
            event.listen(engine, "connect", _sqlite_pragmas)
            commits = CommitWatch(parsed.database)
        else:
            engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_timeouts(parsed))
            commits = None
        try:
            create_tables(engine, [revisions])
        except SQLAlchemyError as exc:
            engine.dispose()
            shown = parsed.render_as_string(hide_password=True)
            raise ThresholdStoreError(
                f"thresholds database {shown} is not usable ({exc.orig or exc}); "
                "check INSPECTION_THRESHOLDS_DB, or INSPECTION_STATE_DIR for the embedded SQLite file"
            ) from exc
        return cls(engine, commits)

    @classmethod
    def from_settings(cls, settings: Settings) -> ThresholdStore:
        return cls.open(database_url(settings))

    def change_feed(self) -> CommitCounterFeed | NotificationFeed:
        """A feed that wakes when anything in this database changes (`service.changes`), for one follower."""
        url = self._engine.url
        if url.get_backend_name() == "sqlite":
            assert url.database is not None  # a file (`open`)
            return CommitCounterFeed(url.database)
        return NotificationFeed(url)

    def close(self) -> None:
        self._engine.dispose()
        if self._commits is not None:
            self._commits.close()

    # --- reading -------------------------------------------------------------------------

    def active(self, manifest: ModelManifest) -> ThresholdSet:
        """The set a prediction uses now: the one held here. On PostgreSQL the follower keeps it
        current (`refresh`), and nothing is read here once a model's set is held. On SQLite it is
        read again when anything was committed since it was (revisions never change once written,
        so only the newest number is read, and the revision itself when that changed).

        With the database unreachable, the set held is used, and a warning logged.
        """
        name = manifest.name
        held = self._held.get(name)
        if held is not None and self._commits is None:
            return held
        try:
            # Read before the revision: a commit in between only makes the next call look again.
            commit = self._commits.count() if self._commits is not None else None
            if held is not None and self._read_at_commit.get(name) == commit:
                return held
            with self._engine.connect() as conn:
                number = conn.execute(_NEWEST_NUMBER, {"model": name}).scalar()
            current = held if held is not None and held.revision == number else self.current(manifest).threshold_set
            if commit is not None:
                self._read_at_commit[name] = commit
        except (SQLAlchemyError, sqlite3.Error) as exc:
            if held is None:
                raise
            if not self._unreachable:
                self._unreachable = True
                log.warning("thresholds database unreachable (%s); %s keeps revision %d", exc, name, held.revision)
            return held
        if self._unreachable:
            self._unreachable = False
            log.warning("thresholds database reachable again")
        self._hold(name, current)
        return current

    def refresh(self, manifests: Iterable[ModelManifest]) -> None:
        """Read again the sets in force of these models, where the database has a newer revision than
        the one held: one query for every model's newest number, then each revision that changed.
        Raises what the database raises (the follower retries)."""
        with self._engine.connect() as conn:
            newest = newest_revisions(conn, revisions)
        for manifest in manifests:
            held = self._held.get(manifest.name)
            if held is None or newest.get(manifest.name) != held.revision:
                self._hold(manifest.name, self.current(manifest).threshold_set)

    def _hold(self, model: str, thresholds: ThresholdSet) -> None:
        held = self._held.get(model)
        if held is not None and held.revision == thresholds.revision:
            return
        self._held[model] = thresholds
        inspection_metrics().thresholds_revision.labels(model).set(thresholds.revision)

    def current(self, manifest: ModelManifest) -> ThresholdRevision:
        """The active revision; on first use of a model, its manifest's defaults become revision 1."""
        with self._engine.connect() as conn:
            newest = _newest(conn, manifest.name)
        if newest is not None and _fits(newest, manifest):
            return newest
        return self._initialise(manifest, newest)

    def history(self, model: str, limit: int = 50, before: int | None = None) -> list[ThresholdRevision]:
        """Revisions of `model`, newest first: at most `limit`, only those older than `before` if given."""
        with self._engine.connect() as conn:
            return [_revision(row) for row in conn.execute(history_query(revisions, model, limit, before)).mappings()]

    def revision(self, model: str, number: int) -> ThresholdRevision | None:
        query = select(revisions).where(revisions.c.model == model, revisions.c.revision == number)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _revision(row)

    # --- writing -------------------------------------------------------------------------

    def update(
        self,
        manifest: ModelManifest,
        *,
        thresholds: Mapping[str, float],
        nms_iou: float | None,
        author: str,
        reason: str,
        expected_revision: int,
        review_thresholds: Mapping[str, float | None] | None = None,
    ) -> ThresholdRevision:
        """A new revision: `thresholds` (some or all defect classes) merged onto `expected_revision`, and
        `review_thresholds` merged onto its review band (a class given None loses its band).

        Raises InvalidParameters for unknown classes, values outside 0..1 or a review threshold above
        its class's reject threshold, Conflict when `expected_revision` is not the active revision
        (nothing is written then).
        """
        _check_audit(author=author, reason=reason)
        _check_values(manifest, thresholds, nms_iou)
        review_thresholds = dict(review_thresholds or {})
        if not thresholds and nms_iou is None and not review_thresholds:
            raise InvalidParameters("nothing to change: give thresholds, review_thresholds and/or nms_iou")
        base = self._base(manifest, expected_revision)
        merged = {**base.thresholds, **{name: float(value) for name, value in thresholds.items()}}
        review = {**base.review_thresholds}
        for name, value in review_thresholds.items():
            if value is None:
                review.pop(name, None)
            else:
                review[name] = float(value)
        try:
            # Removals too: a band removed from a class the model does not have is a mistake.
            unknown_classes(review_thresholds, manifest.defect_classes, "review_thresholds")
            check_review(review, merged)
        except ValueError as exc:
            raise InvalidParameters(f"{manifest.name}: {exc}") from None
        return self._append(
            manifest,
            base,
            RevisionKind.UPDATE,
            thresholds=merged,
            nms_iou=base.nms_iou if nms_iou is None else float(nms_iou),
            author=author,
            reason=reason,
            review_thresholds=review,
        )

    def rollback(
        self, manifest: ModelManifest, *, to_revision: int, author: str, reason: str, expected_revision: int
    ) -> ThresholdRevision:
        """A new revision with the values of an earlier one; history is kept, never rewritten."""
        _check_audit(author=author, reason=reason)
        base = self._base(manifest, expected_revision)
        if not 1 <= to_revision < base.revision:
            raise InvalidParameters(
                f"to_revision must be an earlier revision of {manifest.name}: 1 to {base.revision - 1}, got {to_revision}"
            )
        target = self.revision(manifest.name, to_revision)
        if target is None:
            raise InvalidParameters(f"{manifest.name} has no revision {to_revision}")
        if not _fits(target, manifest):
            raise InvalidParameters(
                f"revision {to_revision} covers classes {sorted(target.thresholds)}, but {manifest.ref} has "
                f"{sorted(manifest.defect_classes)}: it cannot be restored on this model version"
            )
        return self._append(
            manifest,
            base,
            RevisionKind.ROLLBACK,
            thresholds=target.thresholds,
            nms_iou=target.nms_iou,
            author=author,
            reason=reason,
            restores=to_revision,
            review_thresholds=target.review_thresholds,
        )

    def carry_over(self, manifest: ModelManifest, *, author: str, reason: str) -> ThresholdRevision:
        """Record that the active values now serve `manifest`'s version (a version activated or rolled back
        to): a new revision with the same values, or the current one when it was written for this version.
        The version must have the model's defect classes."""
        current = self.current(manifest)
        if current.model_version == manifest.version:
            return current
        try:
            return self._append(
                manifest,
                current,
                RevisionKind.CARRIED,
                thresholds=current.thresholds,
                nms_iou=current.nms_iou,
                author=author,
                reason=reason,
                review_thresholds=current.review_thresholds,
            )
        except Conflict:  # a change came in between: it was written for this version
            return self.current(manifest)

    def _base(self, manifest: ModelManifest, expected_revision: int) -> ThresholdRevision:
        current = self.current(manifest)
        if current.revision != expected_revision:
            raise _stale(manifest.name, expected_revision, current)
        return current

    def _initialise(self, manifest: ModelManifest, newest: ThresholdRevision | None) -> ThresholdRevision:
        """Write the manifest's defaults as the next revision: the first use of a model, or a new
        version whose defect classes differ from those of the stored revisions."""
        if newest is None:
            reason = f"defaults of {manifest.ref}"
        elif newest.model_version < manifest.version:
            reason = (
                f"defaults of {manifest.ref}: its classes {sorted(manifest.defect_classes)} differ from those "
                f"of revision {newest.revision} ({sorted(newest.thresholds)})"
            )
        else:
            # Another worker or replica serves a newer version of this model with other classes.
            raise RuntimeError(
                f"thresholds revision {newest.revision} of {manifest.name} was written for version "
                f"{newest.model_version} with classes {sorted(newest.thresholds)}; this worker serves "
                f"{manifest.ref}: restart it on the current model version"
            )
        try:
            return self._append(
                manifest,
                newest,
                RevisionKind.INITIAL,
                thresholds=dict(manifest.thresholds),
                nms_iou=manifest.nms_iou,
                author=STORE_AUTHOR,
                reason=reason,
            )
        except Conflict:
            # Another worker initialised it first: theirs is the same set.
            return self.current(manifest)

    def _append(
        self,
        manifest: ModelManifest,
        base: ThresholdRevision | None,
        kind: RevisionKind,
        *,
        thresholds: Mapping[str, float],
        nms_iou: float | None,
        author: str,
        reason: str,
        restores: int | None = None,
        review_thresholds: Mapping[str, float] | None = None,
    ) -> ThresholdRevision:
        new = ThresholdRevision(
            model=manifest.name,
            revision=1 if base is None else base.revision + 1,
            kind=kind,
            thresholds={name: float(thresholds[name]) for name in manifest.defect_classes},
            nms_iou=nms_iou,
            model_version=manifest.version,
            author=author,
            reason=reason,
            created_at=datetime.now(UTC),
            replaces=None if base is None else base.revision,
            restores=restores,
            review_thresholds={name: float(value) for name, value in (review_thresholds or {}).items()},
        )
        row = {**asdict(new), "kind": new.kind.value}
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(revisions).values(**row))
                announce(conn, "thresholds", manifest.name, new.revision)
        except IntegrityError:
            with self._engine.connect() as conn:
                newest = _newest(conn, manifest.name)
            raise _stale(manifest.name, new.revision - 1, newest) from None
        inspection_metrics().threshold_changes.labels(manifest.name, kind.value).inc()
        # In force here at once: this worker's next prediction uses it.
        self._hold(manifest.name, new.threshold_set)
        log.info("%s thresholds revision %d (%s) by %s: %s", manifest.name, new.revision, kind.value, author, reason)
        return new


_NEWEST = (
    select(revisions).where(revisions.c.model == bindparam("model")).order_by(revisions.c.revision.desc()).limit(1)
)
# On SQLite, a prediction after a commit runs this one: built once, and only the primary key is read.
_NEWEST_NUMBER = (
    select(revisions.c.revision)
    .where(revisions.c.model == bindparam("model"))
    .order_by(revisions.c.revision.desc())
    .limit(1)
)


def _newest(conn: Connection, model: str) -> ThresholdRevision | None:
    row = conn.execute(_NEWEST, {"model": model}).mappings().first()
    return None if row is None else _revision(row)


def _revision(row: Mapping[str, Any]) -> ThresholdRevision:
    return ThresholdRevision(
        model=row["model"],
        revision=row["revision"],
        kind=RevisionKind(row["kind"]),
        thresholds={name: float(value) for name, value in row["thresholds"].items()},
        nms_iou=row["nms_iou"],
        model_version=row["model_version"],
        author=row["author"],
        reason=row["reason"],
        created_at=utc(row["created_at"]),
        replaces=row["replaces"],
        restores=row["restores"],
        review_thresholds={name: float(value) for name, value in (row.get("review_thresholds") or {}).items()},
    )


def _fits(revision: ThresholdRevision, manifest: ModelManifest) -> bool:
    """Whether a stored set can drive this model: the same defect classes, and an NMS IoU iff a detector."""
    return (
        set(revision.thresholds) == set(manifest.defect_classes)
        and set(revision.review_thresholds) <= set(manifest.defect_classes)
        and (revision.nms_iou is not None) == HEADS[manifest.task].carries_nms
    )


def _check_audit(**texts: str) -> None:
    """The audit trail's text as every store can keep it: PostgreSQL cannot store a NUL character, so
    no store takes one (SQLite would), and the same change gets the same answer on both."""
    for name, text in texts.items():
        if "\x00" in text:
            raise InvalidParameters(f"{name} must not contain a NUL character (\\u0000)")


def _check_values(manifest: ModelManifest, thresholds: Mapping[str, float], nms_iou: float | None) -> None:
    try:
        check_thresholds(thresholds, manifest.defect_classes)
    except ValueError as exc:
        raise InvalidParameters(f"{manifest.name}: {exc}") from None
    if nms_iou is not None:
        if not HEADS[manifest.task].carries_nms:
            carrying = " and ".join(head.task for head in HEADS.values() if head.carries_nms)
            raise InvalidParameters(f"nms_iou applies to {carrying} models only; {manifest.name} is {manifest.task}")
        if not is_threshold(nms_iou):
            raise InvalidParameters(f"nms_iou must lie between 0 and 1, got {nms_iou}")


def _stale(model: str, expected: int, current: ThresholdRevision | None) -> Conflict:
    now = current.revision if current is not None else "none"
    by = f" (by {current.author}: {current.reason})" if current is not None else ""
    return Conflict(
        f"thresholds of {model} are at revision {now}{by}, not {expected}: another change came first; "
        f"read them again, redo your change on revision {now} and send expected_revision {now}"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (every prediction) never wait for a writer. FULL: a commit is on disk before it is acknowledged.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
