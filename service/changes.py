"""How every worker of every server learns that the shared state changed.

The shared state is numbered revisions (thresholds, model lifecycle) in one database. A worker holds
the revisions in force in memory and answers predictions from them: a prediction reads no database.
What keeps the held state equal to the database's is a change feed per worker, waited on by its
follower thread (`service.shared_state.StateFollower`):

- PostgreSQL (several servers): a revision's insert announces itself in the same transaction
  (`announce`: `pg_notify` on the `inspection_changes` channel, with the kind, model and revision
  number as payload, never the state itself); PostgreSQL delivers it to every listening connection
  when, and only when, the transaction commits. Each worker listens on a connection of its own
  (`NotificationFeed`) and wakes at once. Notifications are not replayed to a connection that was
  lost, so the follower also re-reads everything every `INSPECTION_STATE_RESYNC_S` seconds, and
  after every reconnection (listening first, reading second: a change committed in between is
  either read or notified).
- SQLite (one machine): the workers share the file; `CommitCounterFeed` wakes when anything was
  committed to it since the last look (`PRAGMA data_version`, microseconds).

A feed whose database is unreachable says so (`FeedHealth`), is retried with backoff, and wakes its
follower once reconnected, which then catches up; meanwhile the worker serves what it holds.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection

log = logging.getLogger(__name__)

CHANNEL = "inspection_changes"
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")
_BACKOFF_S = (0.25, 0.5, 1.0, 2.0)
_PG_TIMEOUTS = {"connect_timeout": "3", "tcp_user_timeout": "3000", "keepalives_idle": "5", "keepalives_interval": "2"}


def announce(conn: Connection, kind: str, model: str, revision: int) -> None:
    """Announce, inside the transaction that writes it, that `model` has a new `kind` revision."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": f"{kind} {model} {revision}"})


@dataclass
class FeedHealth:
    """Whether the feed reaches its database, as readiness and metrics report it."""

    connected: bool = True
    since: float = 0.0  # time.time() of the last change of `connected`
    error: str = ""  # why it is not connected

    def describe(self) -> str:
        if self.connected:
            return "reachable"
        return f"unreachable for {time.time() - self.since:.0f} s ({self.error}); serving the state last read"


class ChangeFeed(Protocol):
    health: FeedHealth

    def wait(self, timeout_s: float) -> bool:
        """Wait at most `timeout_s` for a change; True when something changed (or may have: reconnected)."""
        ...

    def check(self) -> None:
        """Notice a connection lost without a word; the follower asks before each periodic re-read."""
        ...

    def close(self) -> None: ...


class CommitWatch:
    """Whether anything was committed to an SQLite file since the last look, by any process.

    `PRAGMA data_version` on a connection of its own that never writes: its value changes exactly
    when another connection commits. A few microseconds, against tens for a query through the pool.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # predictions read it from several decode threads

    def count(self) -> int:
        with self._lock:
            if self._connection is None:
                self._connection = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            return self._connection.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class CommitCounterFeed:
    """SQLite: a change is any commit to the file, by any process (`CommitWatch`)."""

    def __init__(self, path: str, tick_s: float = 0.02) -> None:
        self.health = FeedHealth()
        self._commits = CommitWatch(path)
        self._tick_s = tick_s
        self._seen: int | None = None

    def wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            count = self._commits.count()
            if count != self._seen:
                self._seen = count
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self._tick_s, left))

    def check(self) -> None:
        """Nothing to notice: the file is on this machine."""

    def close(self) -> None:
        self._commits.close()


class NotificationFeed:
    """PostgreSQL: `LISTEN inspection_changes` on a connection of this worker's own."""

    def __init__(self, url: URL) -> None:
        self.health = FeedHealth()
        self._conninfo = _conninfo(url)
        self._shown = url.render_as_string(hide_password=True)
        self._connection = None  # psycopg.Connection
        self._failures = 0
        self._next_try = 0.0

    def wait(self, timeout_s: float) -> bool:
        import psycopg

        if self._connection is None:
            return self._reconnect(timeout_s)
        try:
            woken = False
            # Everything queued at once: one re-read answers them all.
            for _ in self._connection.notifies(timeout=timeout_s, stop_after=1):
                woken = True
            if woken:
                for _ in self._connection.notifies(timeout=0):
                    pass
            return woken
        except psycopg.Error as exc:
            self._lost(exc)
            return False

    def check(self) -> None:
        """Ask the listening connection a question: a connection lost without a word (a cable cut, say)
        is noticed here, not by the next notification that never comes."""
        import psycopg

        if self._connection is None:
            return
        try:
            self._connection.execute("SELECT 1")
        except psycopg.Error as exc:
            self._lost(exc)

    def _reconnect(self, timeout_s: float) -> bool:
        import psycopg

        wait_s = self._next_try - time.monotonic()
        if wait_s > 0:
            time.sleep(min(wait_s, timeout_s))
            if wait_s > timeout_s:
                return False
        try:
            connection = psycopg.connect(self._conninfo, autocommit=True)
            connection.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            self._failures += 1
            self._next_try = time.monotonic() + _BACKOFF_S[min(self._failures, len(_BACKOFF_S)) - 1]
            self._set_health(False, first_line(exc))
            return False
        self._connection = connection
        self._failures = 0
        if not self.health.connected:
            log.warning("shared state: %s reachable again; catching up", self._shown)
        self._set_health(True, "")
        return True  # whatever was committed while away is read now

    def _lost(self, exc: Exception) -> None:
        self.close()
        self._failures = 1
        self._next_try = time.monotonic() + _BACKOFF_S[0]
        self._set_health(False, first_line(exc))

    def _set_health(self, connected: bool, error: str) -> None:
        if connected != self.health.connected:
            if not connected:
                log.warning("shared state: %s unreachable (%s); serving the state last read", self._shown, error)
            self.health = FeedHealth(connected, time.time(), error)
        elif not connected:
            self.health.error = error

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # closing a broken connection
                pass
            self._connection = None


def connect_timeouts(url: URL) -> dict[str, str]:
    """libpq's timeouts that `url` does not set itself: a connection attempt, or a connection whose
    packets go unanswered, fails in seconds rather than after the kernel's TCP retransmissions."""
    return {key: value for key, value in _PG_TIMEOUTS.items() if key not in url.query}


def _conninfo(url: URL) -> str:
    """libpq's connection string for SQLAlchemy's `postgresql+psycopg://` URL, with `connect_timeouts`."""
    from psycopg.conninfo import make_conninfo

    params = {key: str(value) for key, value in url.query.items()} | connect_timeouts(url)
    fields = {"host": url.host, "port": url.port, "user": url.username, "password": url.password}
    fields["dbname"] = url.database
    return make_conninfo("", **{key: value for key, value in fields.items() if value is not None}, **params)


def first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
