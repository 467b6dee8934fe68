"""Every worker follows the model lifecycle recorded in the database.

A change (an activation, a rollback, a load or unload, a shadow run) is written once, by the worker
that took the request; every worker of every server on that database learns of it from its state
follower (`service.shared_state`, woken by the database's change feed), reads the newest revision
numbers (one cheap query), and on a change does what the model's new revision says
(`ServedModels.follow`): loads the versions it wants beside the others (off the request path, in
this thread: a load never holds up a request), switches the active one, and reports the switch, which
the activation's answer waits for; versions no longer wanted are released once their last request is
answered. A model another server loaded at run time is loaded here too when this server's model store
has it. A worker that starts follows the database from its first request on; one that cannot load a
version keeps serving the one it has, and says why once.

With `INSPECTION_ACTIVATE_NEW_VERSIONS`, a version newer than any the model has had that appears in
the model store (an export writes it whole, at once) goes live by itself once it loads and warms up,
unless the model is pinned: every worker tries, the database keeps the first activation, and a
version that cannot go live is refused once and left alone.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from service.errors import Conflict, InvalidParameters, VersionRefused
from service.lifecycle.store import VersionStore
from service.model_store import version_numbers
from service.revisions import STORE_AUTHOR
from service.served_models import ServedModels

log = logging.getLogger(__name__)


def server_identity() -> str:
    """This server, as the switches of its workers are recorded: every worker of one `bentoml serve`
    shares its host and its parent process."""
    return f"{socket.gethostname()}:{os.getppid()}"


class VersionWatcher:
    def __init__(
        self,
        models: ServedModels,
        store: VersionStore,
        server: str,
        worker: int,
        model_store: Path,
        activate_new: bool = False,
    ) -> None:
        """`activate_new`: a new version in `model_store` goes live by itself."""
        self._models = models
        self._model_store = model_store
        self._activate_new = activate_new
        # (model, version) in the store that will not go live by itself: refused, or not newer than
        # a version the model has had (the history only grows, so that never changes).
        self._passed_over: set[tuple[str, int]] = set()
        self._store = store
        self.server = server
        self.worker = worker
        self._seen: dict[str, int] = {}  # model -> the revision this worker has followed

    def follow(self) -> None:
        """Follow every model whose revision changed since the last look."""
        newest = self._store.newest_revisions()
        known = set(self._models.known())
        for name in sorted(known | set(newest)):
            if name in self._seen and newest.get(name) == self._seen[name]:
                continue
            if name not in known and not (self._model_store / name).is_dir():
                self._seen[name] = newest[name]  # another server's model: not in this one's store
                continue
            current = self._models.state(name) if name in known else self._store.newest(name)
            assert current is not None  # a model in the database
            try:
                self._models.follow(current, self._store.run_in_force(current))
            except VersionRefused as exc:
                log.error("%s revision %d: keeping what is served: %s", name, current.revision, exc)
            else:  # an unload too: the change's answer waits for every worker to have followed it
                self._store.report_switch(self.server, self.worker, name, current.version)
            self._seen[name] = current.revision

    def activate_new(self) -> None:
        """Activate, on the database, each model's newest stored version when it is newer than any the
        model has had and the model is not pinned."""
        if not self._activate_new:
            return
        for name in self._models.names():
            newest = max(version_numbers(self._model_store / name), default=0)
            active = self._models.active_version(name)
            if newest <= active or (name, newest) in self._passed_over:
                continue
            current = self._models.state(name)
            if current.pinned:
                continue
            if newest <= max(r.version for r in self._store.history(name, limit=1000)):
                self._passed_over.add((name, newest))
                continue
            try:
                self._models.load_version(name, newest)
                change = self._store.activate(
                    name,
                    newest,
                    author=STORE_AUTHOR,
                    reason=f"version {newest} appeared in the model store",
                    expected_revision=current.revision,
                )
                self._models.carry_thresholds(change)
            except VersionRefused as exc:
                self._passed_over.add((name, newest))
                log.error("%s:%d did not go live by itself: %s", name, newest, exc)
            except (Conflict, InvalidParameters):
                pass  # another worker or server activated it first, or something else changed: look again
