"""Which versions of each model are served: numbered revisions per model, in the thresholds' database.

A revision is a model's whole lifecycle state from then on: whether the model is loaded at all, its
active version (the one that answers requests naming none), the other versions loaded beside it
(requests may name them), whether it is pinned, and its shadow run (a candidate version answering a
share of the traffic in the background, `service.lifecycle.shadow`). Every change is a new revision
recording that state, who made the change, why, when, the revision it replaced and its kind:
`initial` (the state at first use: served at start-up, or only in the model store), `activate`,
`rollback`, `pin`, `unpin`, `load`, `unload`, `shadow` or `unshadow`. Revisions are never changed or
deleted; the newest one is in force, and every worker of every server loads and unloads to follow it
(`service.lifecycle.watcher`). Pinned, a model keeps its version when a newer one appears in the
model store. Activating the shadow's candidate promotes it and ends the shadow run.

The same database as the thresholds, through the thresholds store's engine, and the same rules:
one row per revision, written in one transaction, and the primary key (model, revision) settling
concurrent writers (both insert base + 1, the database keeps one, the other gets `Conflict`).

A second table records which version each worker of each server has switched to, so that a
change can wait until every worker serves it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
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
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from service.changes import announce
from service.errors import Conflict, InvalidParameters
from service.revisions import STORE_AUTHOR, create_tables, history_query, newest_revisions, utc
from service.thresholds.store import _check_audit

log = logging.getLogger(__name__)

INITIAL_REASON = "served at start-up"
IN_STORE_REASON = "in the model store, not loaded"
MAX_AUTHOR_CHARS = 200
MAX_KEPT_FRAMES = 1000  # disagreeing frames one shadow run may keep

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
    # Added after the columns above: tables made before them gain them, with these defaults.
    Column("served", Boolean, nullable=False, server_default=true()),
    Column("loaded", String(255), nullable=False, server_default=""),  # other versions loaded: "3,4"
    Column("shadow_version", Integer, nullable=True),
    Column("shadow_share", Float, nullable=True),
    Column("shadow_keep", Integer, nullable=True),
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

# Each worker's counts of each shadow run (`service.lifecycle.shadow.Tally`, as JSON), rewritten by it
# about once a second; a run's report adds up its rows.
shadow_tallies = Table(
    "shadow_tallies",
    _metadata,
    Column("model", String(64), primary_key=True),
    Column("run", Integer, primary_key=True, autoincrement=False),
    Column("server", String(255), primary_key=True),
    Column("worker", Integer, primary_key=True, autoincrement=False),
    Column("tally", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


class ActivationKind(StrEnum):
    INITIAL = "initial"
    ACTIVATE = "activate"
    ROLLBACK = "rollback"
    PIN = "pin"
    UNPIN = "unpin"
    LOAD = "load"
    UNLOAD = "unload"
    SHADOW = "shadow"
    UNSHADOW = "unshadow"


@dataclass(frozen=True)
class Shadow:
    """A shadow run: `version` answers `share` of the frames the active version answers, in the
    background, compared with it; up to `keep_frames` disagreeing frames are kept for review."""

    version: int
    share: float  # 0 < share <= 1
    keep_frames: int  # 0: none kept


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
    served: bool = True  # False: the model is unloaded, and answers 404
    loaded: tuple[int, ...] = ()  # versions loaded beside the active one, in order
    shadow: Shadow | None = None  # the shadow run in force, if any

    @property
    def wanted(self) -> set[int]:
        """The versions a worker should have loaded under this revision."""
        if not self.served:
            return set()
        return {self.version, *self.loaded, *([self.shadow.version] if self.shadow else [])}


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

    def current(
        self, model: str, default_version: int, served: bool = True, loaded: tuple[int, ...] = ()
    ) -> Activation:
        """The newest revision; on first use of a model, `default_version` becomes revision 1, with the
        versions `loaded` beside it, served (at start-up) or not (a model only in the model store)."""
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
                served=served,
                loaded=loaded,
                pinned=False,
                author=STORE_AUTHOR,
                reason=INITIAL_REASON if served else IN_STORE_REASON,
            )
        except Conflict:
            # Another worker wrote revision 1 first: theirs is the one in force.
            with self._engine.connect() as conn:
                return _newest(conn, model)

    def newest(self, model: str) -> Activation | None:
        """The newest revision, or None when the model has none yet (nothing is written)."""
        with self._engine.connect() as conn:
            return _newest(conn, model)

    def newest_revisions(self) -> dict[str, int]:
        """Every model's newest revision number: what a worker reads to notice a change anywhere."""
        with self._engine.connect() as conn:
            return newest_revisions(conn, activations)

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
        base = self._base(model, expected_revision, served=True)
        if base.version == version:
            raise InvalidParameters(f"version {version} of {model} is already active (revision {base.revision})")
        return self._append(
            base,
            model=model,
            kind=ActivationKind.ACTIVATE,
            version=version,
            shadow=_promoted(base.shadow, version),
            author=author,
            reason=reason,
        )

    def rollback(self, model: str, *, author: str, reason: str, expected_revision: int) -> Activation:
        """Back to the version active before the current one: that of the newest earlier revision
        with another version (pins, unpins and repeats of the current version are passed over)."""
        _check_change(author, reason, expected_revision)
        with self._engine.connect() as conn:
            base = _newest(conn, model)
            if base is None or base.revision != expected_revision:
                raise _stale(model, expected_revision, base)
            _check_served(base)
            previous = conn.execute(
                _PREVIOUS_VERSION, {"model": model, "revision": base.revision, "version": base.version}
            ).scalar()
        if previous is None:
            raise InvalidParameters(
                f"{model} has no earlier version to roll back to: every revision up to {base.revision} "
                f"has version {base.version}"
            )
        return self._append(
            base,
            model=model,
            kind=ActivationKind.ROLLBACK,
            version=previous,
            shadow=_promoted(base.shadow, previous),
            author=author,
            reason=reason,
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

    def load(self, model: str, version: int | None, *, author: str, reason: str, expected_revision: int) -> Activation:
        """Load the model (`version` None: it answers again, at its active version), or load `version`
        of it beside the active one, for requests that name it. The caller checks that the store has it."""
        _check_change(author, reason, expected_revision)
        base = self._base(model, expected_revision)
        if version is None:
            if base.served:
                raise InvalidParameters(f"{model} is loaded already (revision {base.revision})")
            return self._append(base, model=model, kind=ActivationKind.LOAD, served=True, author=author, reason=reason)
        _check_number("version", version)
        _check_served(base)
        if version == base.version or version in base.loaded:
            raise InvalidParameters(f"version {version} of {model} is loaded already (revision {base.revision})")
        loaded = tuple(sorted({*base.loaded, version}))
        return self._append(base, model=model, kind=ActivationKind.LOAD, loaded=loaded, author=author, reason=reason)

    def unload(
        self, model: str, version: int | None, *, author: str, reason: str, expected_revision: int
    ) -> Activation:
        """Unload the model (`version` None: every version of it; it answers 404 until loaded again,
        and its shadow run ends), or one version loaded beside the active one."""
        _check_change(author, reason, expected_revision)
        base = self._base(model, expected_revision, served=True)
        if version is None:
            return self._append(
                base, model=model, kind=ActivationKind.UNLOAD, served=False, shadow=None, author=author, reason=reason
            )
        if version == base.version:
            raise InvalidParameters(
                f"version {version} is {model}'s active version: activate another first, or unload the model"
            )
        if base.shadow is not None and base.shadow.version == version:
            raise InvalidParameters(f"version {version} of {model} runs in its shadow run: stop the shadow run first")
        if version not in base.loaded:
            raise InvalidParameters(f"version {version} of {model} is not loaded (revision {base.revision})")
        loaded = tuple(v for v in base.loaded if v != version)
        return self._append(base, model=model, kind=ActivationKind.UNLOAD, loaded=loaded, author=author, reason=reason)

    def start_shadow(
        self, model: str, shadow: Shadow, *, author: str, reason: str, expected_revision: int
    ) -> Activation:
        """Run `shadow.version` as the model's candidate (a new shadow run, ending any before it)."""
        _check_number("version", shadow.version)
        if not 0.0 < shadow.share <= 1.0:
            raise InvalidParameters(f"share must be above 0 and at most 1, got {shadow.share!r}")
        if not 0 <= shadow.keep_frames <= MAX_KEPT_FRAMES:
            raise InvalidParameters(f"keep_frames must be 0 to {MAX_KEPT_FRAMES}, got {shadow.keep_frames!r}")
        _check_change(author, reason, expected_revision)
        base = self._base(model, expected_revision, served=True)
        if shadow.version == base.version:
            raise InvalidParameters(f"version {shadow.version} is {model}'s active version: a shadow runs another one")
        return self._append(base, model=model, kind=ActivationKind.SHADOW, shadow=shadow, author=author, reason=reason)

    def stop_shadow(self, model: str, *, author: str, reason: str, expected_revision: int) -> Activation:
        _check_change(author, reason, expected_revision)
        base = self._base(model, expected_revision)
        if base.shadow is None:
            raise InvalidParameters(f"{model} has no shadow run (revision {base.revision})")
        return self._append(base, model=model, kind=ActivationKind.UNSHADOW, shadow=None, author=author, reason=reason)

    def shadow_run(self, model: str, run: int | None = None) -> Activation | None:
        """The revision that started the model's shadow run in force (`run` None), or that started run
        `run`; None when there is none."""
        with self._engine.connect() as conn:
            if run is None:
                newest = _newest(conn, model)
                if newest is None or newest.shadow is None:
                    return None
                run = conn.execute(_RUN_START, {"model": model, "revision": newest.revision}).scalar()
            row = (
                conn.execute(select(activations).where(activations.c.model == model, activations.c.revision == run))
                .mappings()
                .first()
            )
        found = None if row is None else _activation(row)
        return found if found is not None and found.kind is ActivationKind.SHADOW else None

    def run_in_force(self, state: Activation) -> int | None:
        """The shadow run in force under `state` (the revision that started it), if any."""
        if state.shadow is None:
            return None
        if state.kind is ActivationKind.SHADOW:
            return state.revision
        with self._engine.connect() as conn:
            return conn.execute(_RUN_START, {"model": state.model, "revision": state.revision}).scalar()

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

    def save_tally(self, model: str, run: int, server: str, worker: int, tally: str) -> None:
        """Record `worker`'s counts of the shadow run (JSON), replacing those it recorded before."""
        key = (
            (shadow_tallies.c.model == model)
            & (shadow_tallies.c.run == run)
            & (shadow_tallies.c.server == server)
            & (shadow_tallies.c.worker == worker)
        )
        now = datetime.now(UTC)
        with self._engine.begin() as conn:
            done = conn.execute(update(shadow_tallies).where(key).values(tally=tally, updated_at=now))
            if done.rowcount == 0:
                conn.execute(
                    insert(shadow_tallies).values(
                        model=model, run=run, server=server, worker=worker, tally=tally, updated_at=now
                    )
                )

    def tallies(self, model: str, run: int) -> list[tuple[str, datetime]]:
        """Every worker's counts of the shadow run (JSON), with when each was recorded."""
        query = select(shadow_tallies.c.tally, shadow_tallies.c.updated_at).where(
            shadow_tallies.c.model == model, shadow_tallies.c.run == run
        )
        with self._engine.connect() as conn:
            return [(tally, utc(updated_at)) for tally, updated_at in conn.execute(query)]

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

    def _base(self, model: str, expected_revision: int, served: bool = False) -> Activation:
        """The newest revision, when it is `expected_revision` (else Conflict); `served`: refused
        when the model is unloaded."""
        with self._engine.connect() as conn:
            newest = _newest(conn, model)
        if newest is None or newest.revision != expected_revision:
            raise _stale(model, expected_revision, newest)
        if served:
            _check_served(newest)
        return newest

    def _append(self, base: Activation | None, **changes: Any) -> Activation:
        """Write the revision after `base`: its state with `changes` (model, kind, author and reason
        always among them)."""
        if base is None:
            new = Activation(revision=1, created_at=datetime.now(UTC), replaces=None, **changes)
        else:
            new = replace(
                base, revision=base.revision + 1, created_at=datetime.now(UTC), replaces=base.revision, **changes
            )
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(activations).values(**_row(new)))
                announce(conn, "lifecycle", new.model, new.revision)
        except IntegrityError:
            with self._engine.connect() as conn:
                newest = _newest(conn, new.model)
            raise _stale(new.model, new.revision - 1, newest) from None
        log.info(
            "%s version revision %d (%s) by %s: %s: %s",
            new.model,
            new.revision,
            new.kind.value,
            new.author,
            new.reason,
            describe(new),
        )
        return new


def describe(state: Activation) -> str:
    """A revision's state in words, for logs and messages."""
    if not state.served:
        return f"unloaded (version {state.version} when loaded)"
    parts = [f"version {state.version} active"]
    if state.loaded:
        parts.append(f"{', '.join(map(str, state.loaded))} loaded")
    if state.shadow is not None:
        parts.append(f"{state.shadow.version} in shadow on {state.shadow.share:.0%} of frames")
    if state.pinned:
        parts.append("pinned")
    return ", ".join(parts)


def _row(state: Activation) -> dict[str, Any]:
    row = {field.name: getattr(state, field.name) for field in fields(Activation)}
    shadow = row.pop("shadow")
    row["kind"] = state.kind.value
    row["loaded"] = ",".join(map(str, state.loaded))
    row["shadow_version"] = None if shadow is None else shadow.version
    row["shadow_share"] = None if shadow is None else shadow.share
    row["shadow_keep"] = None if shadow is None else shadow.keep_frames
    return row


def _promoted(shadow: Shadow | None, version: int) -> Shadow | None:
    """The shadow run after `version` becomes active: over when it was the candidate."""
    return None if shadow is not None and shadow.version == version else shadow


def _check_served(state: Activation) -> None:
    if not state.served:
        raise InvalidParameters(f"{state.model} is unloaded (revision {state.revision}): load it first")


_NEWEST = (
    select(activations)
    .where(activations.c.model == bindparam("model"))
    .order_by(activations.c.revision.desc())
    .limit(1)
)
# Every worker runs this one a few times a second: built once.
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


# The revision that started the shadow run in force at `revision`: the newest shadow revision up to it.
_RUN_START = select(func.max(activations.c.revision)).where(
    activations.c.model == bindparam("model"),
    activations.c.revision <= bindparam("revision"),
    activations.c.kind == ActivationKind.SHADOW.value,
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
        served=bool(row["served"]),
        loaded=tuple(int(v) for v in row["loaded"].split(",") if v),
        shadow=None
        if row["shadow_version"] is None
        else Shadow(row["shadow_version"], float(row["shadow_share"]), int(row["shadow_keep"])),
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
