"""Each worker keeps the state it serves from equal to the database's: a thread per worker.

It waits on the database's change feed (`service.changes`) and, when something changed, re-reads
the revisions in force: the model lifecycle first (`VersionWatcher.follow`: versions loaded,
switched, retired), then the thresholds of the models served (`ThresholdStore.refresh`). It also
re-reads everything every `resync_s` whatever the feed says, the safety net for a notification
lost with a connection. Between wake-ups, every `tick_s`, it does the worker's local chores: a new
version in the model store going live by itself (`VersionWatcher.activate_new`), and saving the
counts of its shadow runs.

While the database is unreachable the worker keeps serving what it holds; `health` says since when
and why (the readiness detail, `inspection_shared_state_up`), and the follower catches up as soon as
the feed reconnects.
"""

from __future__ import annotations

import logging
import threading
import time

from service.changes import ChangeFeed, FeedHealth, first_line
from service.lifecycle.watcher import VersionWatcher
from service.metrics import inspection_metrics
from service.served_models import ServedModels

log = logging.getLogger(__name__)

TICK_S = 0.25


class StateFollower:
    def __init__(
        self, models: ServedModels, watcher: VersionWatcher, feed: ChangeFeed, resync_s: float, tick_s: float = TICK_S
    ) -> None:
        self._models = models
        self._watcher = watcher
        self._feed = feed
        self._resync_s = resync_s
        self._tick_s = tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read_failing: str = ""  # why the last re-read failed; empty when it did not
        self._next_resync = 0.0
        self.synced_at = 0.0  # time.time() of the last complete re-read

    @property
    def health(self) -> FeedHealth:
        """The feed's connection, or the re-read's failure when the feed is connected but reading fails."""
        health = self._feed.health
        if health.connected and self._read_failing:
            return FeedHealth(False, self.synced_at, self._read_failing)
        return health

    def sync(self) -> None:
        """Re-read the lifecycle and the thresholds in force. Raises what the database raises."""
        self._watcher.follow()
        self._models.thresholds.refresh(self._models.get(name).manifest for name in self._models.names())
        self.synced_at = time.time()
        self._next_resync = time.monotonic() + self._resync_s

    def start(self) -> None:
        """Read once now (a worker serves the state in force from its first request), then follow in a thread."""
        self._feed.wait(0)  # connect and listen before reading: a change committed meanwhile is notified
        self.sync()
        self._show()
        self._thread = threading.Thread(target=self._run, name="state-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._feed.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            changed = self._feed.wait(self._tick_s)
            if self._stop.is_set():
                return
            due = time.monotonic() >= self._next_resync
            if due:
                self._feed.check()
            try:
                if changed or due:
                    self.sync()
                self._watcher.activate_new()
                self._models.flush_shadows(self._watcher.server, self._watcher.worker)
            except Exception as exc:  # the database away, say: keep serving what is held, try again
                if not self._read_failing:
                    log.exception("cannot read the shared state; serving the state last read")
                self._read_failing = first_line(getattr(exc, "orig", None) or exc)
                self._next_resync = time.monotonic() + min(1.0, self._resync_s)
            else:
                if self._read_failing and (changed or due):
                    log.warning("shared state read again")
                    self._read_failing = ""
            self._show()

    def _show(self) -> None:
        health = self.health
        metrics = inspection_metrics()
        metrics.shared_state_up.set(1 if health.connected else 0)
        if self.synced_at:
            metrics.shared_state_synced.set(self.synced_at)
