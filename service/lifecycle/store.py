"""Which version of each model is active: numbered revisions per model, in the thresholds' database.

Every change of a model's active version, or of whether it is pinned, is a new revision recording
the version active from then on, who made the change, why, when, the revision it replaced and its
kind: `initial` (the version served at start-up, written on first use), `activate`, `rollback`,
`pin` or `unpin`. Revisions are never changed or deleted; the newest one is in force. Pinned, a
model keeps its version when a newer one appears in the model store; every revision carries the
pinned flag of the one before it unless it is a pin or unpin.

The same database as the thresholds, through the thresholds store's engine, and the same rules:
one row per revision, written in one transaction, and the primary key (model, revision) settling
concurrent writers (both insert base + 1, the database keeps one, the other gets `Conflict`).

A second table records which version each worker of each server has switched to, so that a
change can wait until every worker serves it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from service.errors import Conflict, InvalidParameters
from service.revisions import STORE_AUTHOR, create_tables, history_query, utc
from service.thresholds.store import _check_audit

log = logging.getLogger(__name__)

INITIAL_REASON = "served at start-up"
MAX_AUTHOR_CHARS = 200

_metadata = MetaData()
activations = Table(
    "model_activations",
    _metadata,
    Column("model", String(64), primary_key=True),
    Column("revision", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("pinned", Boolean, nullable=False),
    Column("author", String(MAX_AUTHOR_CHARS), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("replaces", Integer, nullable=True),
)
switches = Table(
    "model_switches",
    _metadata,
    Column("server", String(255), primary_key=True),
    Column("worker", Integer, primary_key=True, autoincrement=False),
    Column("model", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("switched_at", DateTime(timezone=True), nullable=False),
)


class ActivationKind(StrEnum):
    INITIAL = "initial"
    ACTIVATE = "activate"
    ROLLBACK = "rollback"
    PIN = "pin"
    UNPIN = "unpin"


@dataclass(frozen=True)
class Activation:
    model: str
    revision: int
    kind: ActivationKind
    version: int  # the active version from this revision on
    pinned: bool  # pinned: a new version in the store does not go live by itself
    author: str
    reason: str
    created_at: datetime  # UTC
    replaces: int | None  # the revision before this one


class VersionStore:
    """Activation revisions of every model, and the versions each worker has switched to.

    The engine belongs to whoever opened it (the service's `ThresholdStore`, whose database this
    shares) and is disposed of by it; this store only creates its tables on it.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        create_tables(engine, _metadata.sorted_tables)

    def close(self) -> None:
        """Nothing to release: the engine is its opener's to dispose of."""

    # --- reading -------------------------------------------------------------------------

    def current(self, model: str, default_version: int) -> Activation:
        """The newest revision; on first use of a model, `default_version` becomes revision 1."""
        with self._engine.connect() as conn:
            newest = _newest(conn, model)
        if newest is not None:
            return newest
        try:
            return self._append(
                None,
                model=model,
                kind=ActivationKind.INITIAL,
                version=default_version,
                pinned=False,
                author=STORE_AUTHOR,
                reason=INITIAL_REASON,
            )
        except Conflict:
            # Another worker wrote revision 1 first: theirs is the one in force.
            with self._engine.connect() as conn:
                return _newest(conn, model)

    def newest_revisions(self) -> dict[str, int]:
        """Every model's newest revision number: what a worker polls to notice a change anywhere.
        One aggregate over the primary key's index; revisions are rare, so the table stays small."""
        with self._engine.connect() as conn:
            return {model: revision for model, revision in conn.execute(_NEWEST_NUMBERS)}

    def history(self, model: str, limit: int = 50, before: int | None = None) -> list[Activation]:
        """Revisions of `model`, newest first: at most `limit`, only those older than `before` if given."""
        with self._engine.connect() as conn:
            rows = conn.execute(history_query(activations, model, limit, before)).mappings()
            return [_activation(row) for row in rows]

    def previous_version(self, model: str, default_version: int) -> int | None:
        """The version a rollback would bring back now (see `rollback`), or None when there is none."""
        current = self.current(model, default_version)
        with self._engine.connect() as conn:
            return conn.execute(
                _PREVIOUS_VERSION, {"model": model, "revision": current.revision, "version": current.version}
            ).scalar()

    # --- writing -------------------------------------------------------------------------

    def activate(self, model: str, version: int, *, author: str, reason: str, expected_revision: int) -> Activation:
        """Make `version` the active one. The caller checks that the model store has it.

        Raises InvalidParameters when it is active already, Conflict when `expected_revision` is
        not the newest revision (nothing is written then).
        """
        _check_number("version", version)
        _check_change(author, reason, expected_revision)
        base = self._base(model, expected_revision)
        if base.version == version:
            raise InvalidParameters(f"version {version} of {model} is already active (revision {base.revision})")
        return self._append(
            base, model=model, kind=ActivationKind.ACTIVATE, version=version, author=author, reason=reason
        )

    def rollback(self, model: str, *, author: str, reason: str, expected_revision: int) -> Activation:
        """Back to the version active before the current one: that of the newest earlier revision
        with another version (pins, unpins and repeats of the current version are passed over)."""
        _check_change(author, reason, expected_revision)
        with self._engine.connect() as conn:
            base = _newest(conn, model)
            if base is None or base.revision != expected_revision:
                raise _stale(model, expected_revision, base)
            previous = conn.execute(
                _PREVIOUS_VERSION, {"model": model, "revision": base.revision, "version": base.version}
            ).scalar()
        if previous is None:
            raise InvalidParameters(
                f"{model} has no earlier version to roll back to: every revision up to {base.revision} "
                f"has version {base.version}"
            )
        return self._append(
            base, model=model, kind=ActivationKind.ROLLBACK, version=previous, author=author, reason=reason
        )

    def pin(self, model: str, pinned: bool, *, author: str, reason: str, expected_revision: int) -> Activation:
        """Pin the active version (a newer one in the model store does not go live by itself), or unpin it."""
        if not isinstance(pinned, bool):
            raise InvalidParameters(f"pinned must be true or false, got {pinned!r}")
        _check_change(author, reason, expected_revision)
        base = self._base(model, expected_revision)
        if base.pinned == pinned:
            state = "pinned" if pinned else "not pinned"
            raise InvalidParameters(f"{model} is already {state} (revision {base.revision}, version {base.version})")
        kind = ActivationKind.PIN if pinned else ActivationKind.UNPIN
        return self._append(
            base, model=model, kind=kind, version=base.version, pinned=pinned, author=author, reason=reason
        )

    def report_switch(self, server: str, worker: int, model: str, version: int) -> datetime:
        """Record that `worker` of `server` now serves `version` of `model`; returns when (UTC).
        Each worker writes only its own row, so an update, else an insert, cannot race."""
        switched_at = datetime.now(UTC)
        key = (switches.c.server == server) & (switches.c.worker == worker) & (switches.c.model == model)
        with self._engine.begin() as conn:
            done = conn.execute(update(switches).where(key).values(version=version, switched_at=switched_at))
            if done.rowcount == 0:
                conn.execute(
                    insert(switches).values(
                        server=server, worker=worker, model=model, version=version, switched_at=switched_at
                    )
                )
        log.info("%s worker %d serves %s:%d", server, worker, model, version)
        return switched_at

    def switched(self, server: str, model: str, version: int, since: datetime) -> dict[int, datetime]:
        """The workers of `server` that switched to `version` of `model` at or after `since`, and when."""
        if since.tzinfo is None:
            raise ValueError("since must carry a time zone")
        query = select(switches.c.worker, switches.c.switched_at).where(
            switches.c.server == server,
            switches.c.model == model,
            switches.c.version == version,
            # UTC on both sides: SQLite keeps the time without its zone and compares it as text.
            switches.c.switched_at >= since.astimezone(UTC),
        )
        with self._engine.connect() as conn:
            return {worker: utc(switched_at) for worker, switched_at in conn.execute(query)}

    def _base(self, model: str, expected_revision: int) -> Activation:
        with self._engine.connect() as conn:
            newest = _newest(conn, model)
        if newest is None or newest.revision != expected_revision:
            raise _stale(model, expected_revision, newest)
        return newest

    def _append(
        self,
        base: Activation | None,
        *,
        model: str,
        kind: ActivationKind,
        version: int,
        author: str,
        reason: str,
        pinned: bool | None = None,
    ) -> Activation:
        """Write the revision after `base`; `pinned` defaults to the base's."""
        new = Activation(
            model=model,
            revision=1 if base is None else base.revision + 1,
            kind=kind,
            version=version,
            pinned=(base is not None and base.pinned) if pinned is None else pinned,
            author=author,
            reason=reason,
            created_at=datetime.now(UTC),
            replaces=None if base is None else base.revision,
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(activations).values(**{**asdict(new), "kind": new.kind.value}))
        except IntegrityError:
            with self._engine.connect() as conn:
                newest = _newest(conn, model)
            raise _stale(model, new.revision - 1, newest) from None
        log.info(
            "%s version revision %d (%s): version %d%s by %s: %s",
            model,
            new.revision,
            kind.value,
            version,
            ", pinned" if new.pinned else "",
            author,
            reason,
        )
        return new


_NEWEST = (
    select(activations)
    .where(activations.c.model == bindparam("model"))
    .order_by(activations.c.revision.desc())
    .limit(1)
)
# Every worker runs this one a few times a second: built once.
_NEWEST_NUMBERS = select(activations.c.model, func.max(activations.c.revision)).group_by(activations.c.model)
_PREVIOUS_VERSION = (
    select(activations.c.version)
    .where(
        activations.c.model == bindparam("model"),
        activations.c.revision < bindparam("revision"),
        activations.c.version != bindparam("version"),
    )
    .order_by(activations.c.revision.desc())
    .limit(1)
)


def _newest(conn: Connection, model: str) -> Activation | None:
    row = conn.execute(_NEWEST, {"model": model}).mappings().first()
    return None if row is None else _activation(row)


def _activation(row: Mapping[str, Any]) -> Activation:
    return Activation(
        model=row["model"],
        revision=row["revision"],
        kind=ActivationKind(row["kind"]),
        version=row["version"],
        pinned=bool(row["pinned"]),
        author=row["author"],
        reason=row["reason"],
        created_at=utc(row["created_at"]),
        replaces=row["replaces"],
    )


def _check_change(author: str, reason: str, expected_revision: int) -> None:
    for field, text in (("author", author), ("reason", reason)):
        if not isinstance(text, str) or not text.strip():
            raise InvalidParameters(f"{field} is required: say who makes the change and why")
    if len(author) > MAX_AUTHOR_CHARS:
        raise InvalidParameters(f"author must be at most {MAX_AUTHOR_CHARS} characters, got {len(author)}")
    _check_audit(author=author, reason=reason)
    _check_number("expected_revision", expected_revision)


def _check_number(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameters(f"{field} must be an integer of at least 1, got {value!r}")


def _stale(model: str, expected: int, current: Activation | None) -> Conflict:
    if current is None:
        return Conflict(
            f"{model} has no version revisions yet, so {expected} is not current: "
            "it gets revision 1 when it is first served; send expected_revision 1 then"
        )
    return Conflict(
        f"versions of {model} are at revision {current.revision} (version {current.version}, "
        f"{current.kind.value} by {current.author}: {current.reason}), not {expected}: another change came first; "
        f"read them again, and if your change still applies send it with expected_revision {current.revision}"
    )
