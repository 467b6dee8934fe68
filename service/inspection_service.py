"""The BentoML service: `bentoml serve service.inspection_service:InspectionService`.

Each worker process loads every configured model once (ServedModels), follows the
shared state in the database (`service.shared_state`) and serves the HTTP API in
`service.api`. BentoML supplies /livez, /metrics, the request timeout and the worker
processes; /readyz and the drain on SIGTERM are `service.health`'s.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys

import bentoml

from service.api.app import create_app
from service.api.contract import PlainErrorsAsJson
from service.api.predictions import DirectPredictions
from service.config import get_settings
from service.health import Health, ProbeRoutes, Warmth, drain_on_sigterm
from service.lifecycle.watcher import VersionWatcher, server_identity
from service.listening import bind_in_this_worker, bind_server_socket_for_workers, listeners, worker_argument
from service.served_models import ServedModels
from service.shared_state import StateFollower
from service.warming import answer_while_warming

_PR_SET_PDEATHSIG = 1
_PARENT_AT_IMPORT = os.getppid()
log = logging.getLogger(__name__)
settings = get_settings()
# BentoML opens an OpenTelemetry span per request even though, unless tracing is configured, it
# samples none of them; and its request timeout keeps each request's context, span included,
# alive for the whole timeout. Off unless asked for: set OTEL_SDK_DISABLED=false with tracing.
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
tracing_off = os.environ["OTEL_SDK_DISABLED"].strip().lower() == "true"
# BentoML's log handlers print INFO, but loggers it did not set up stay at WARNING:
# without this, which provider each model runs on and sweep progress would not show.
logging.getLogger("service").setLevel(logging.INFO)
_fd = worker_argument(sys.argv, "--fd")
if _fd is None:  # the `bentoml serve` process
    # Configuration mistakes (missing GPU, empty or broken model store) stop `bentoml serve` here,
    # with their message, instead of leaving a server whose workers cannot start.
    ServedModels.preflight(settings)
    # Each worker listens on a socket of its own (see `listening`): the server's only holds the port,
    # and answers the probes itself until the workers are warm (see `warming`).
    bind_server_socket_for_workers(lambda family, address: answer_while_warming(family, address, settings.workers))
    _own_socket = False
else:  # a worker, before BentoML starts serving on the descriptor it was handed
    # Bound now, listening once the models are warm (uvicorn listens after the service's start-up).
    _own_socket = bind_in_this_worker(_fd)


def die_with_server() -> None:
    """End this worker when the `bentoml serve` process that started it dies, by any signal.

    BentoML starts each worker in a session of its own, so a signal to the server's process group
    (what many supervisors send) never reaches them: they would go on answering, holding the port,
    and a restart would fail with "Address already in use". Linux only (prctl).
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        log.warning("could not tie this worker's life to its server's: errno %d", ctypes.get_errno())
        return
    if os.getppid() != _PARENT_AT_IMPORT:  # the server died before the line above took effect
        os._exit(1)


def _served_models() -> ServedModels:
    return bentoml.get_current_service().models


def _warmth() -> Warmth | None:
    """Every worker listens only once warm (`service.listening`): count the sockets listening."""
    try:
        models: ServedModels = _served_models()
    except Exception:  # the service is not started yet
        return None
    if not models.names():
        return None
    if not _own_socket:
        return Warmth(1, 1, counted=False)  # a shared socket: this worker answering is all that can be known
    assert _fd is not None  # a worker
    listening = listeners(_fd)
    if listening is None:
        return Warmth(1, 1, counted=False)
    workers, server_answers = listening
    return Warmth(min(workers, settings.workers), settings.workers, handing_over=server_answers)


health = Health(_warmth)
api = create_app(settings, _served_models, health.ready)


@bentoml.service(
    name="weld-inspection",
    workers=settings.workers,
    # Admission control is the API's own (503 with a JSON error); BentoML only enforces the timeout.
    traffic={"timeout": settings.request_timeout_s},
    logging={"access": {"enabled": settings.access_log}},
    # With tracing off, BentoML's tracing middleware still builds each request's span attributes:
    # excluding every URL makes it pass requests straight through.
    **({"tracing": {"excluded_urls": ".*"}} if tracing_off else {}),
)
@bentoml.asgi_app(api, path="/")
class InspectionService:
    def __init__(self) -> None:
        die_with_server()
        drain_on_sigterm(health, settings.drain_delay_s, settings.drain_timeout_s)
        self.models = ServedModels.load(settings)
        watcher = VersionWatcher(
            self.models,
            self.models.lifecycle,
            server_identity(),
            os.getpid(),
            settings.model_store,
            activate_new=settings.activate_new_versions,
        )
        # Before the worker listens: it serves the state the database has from its first request.
        self.follower = StateFollower(
            self.models, watcher, self.models.thresholds.change_feed(), settings.state_resync_s
        )
        self.follower.start()
        health.shared_state = lambda: self.follower.health
        if settings.freeze_startup_heap:
            # What start-up loaded (libraries, app, sessions) lives as long as the worker. Frozen, it is
            # skipped by Python's full collections, which otherwise stall the whole worker 50-150 ms.
            gc.freeze()

    def __is_ready__(self) -> bool:
        """Ready when every worker is warm and none drains (`service.health`)."""
        return health.ready()

    @bentoml.on_shutdown
    def close(self) -> None:
        self.follower.stop()
        self.models.close()


# In front of BentoML's router (the first added is the outer): /readyz, and answers that close their
# connection while draining; predictions straight to their endpoint.
InspectionService.add_asgi_middleware(ProbeRoutes, health=health)
InspectionService.add_asgi_middleware(DirectPredictions, routes=api.state.direct_routes, settings=settings)
# Around BentoML's router: its own plain-text errors (a path no route takes) in the error contract.
InspectionService.add_asgi_middleware(PlainErrorsAsJson)
