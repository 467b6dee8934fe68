"""Shared test fixtures: a real BentoML server on 127.0.0.1, started and stopped by PID."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from loadtests.server import BENTOML, MODEL_STORE, ROOT, RunningServer, kill_tree
from loadtests.server import running_server as serve_in_background
from service.pipeline.providers import Provider, probe_host_gpu, why_no_gpu
from service.thresholds.store import ThresholdStore, ThresholdStoreError

__all__ = ["BENTOML", "MODEL_STORE", "ROOT", "RunningServer", "kill_tree", "postgres_url", "running_server"]

if TYPE_CHECKING:
    from starlette.testclient import TestClient

POSTGRES_ENV = "INSPECTION_TEST_POSTGRES_URL"
PROVIDER_ENV = "INSPECTION_PROVIDER"
# What the environment asked for before the suite pinned the CPU: the `gpu` tests keep it.
HOST_PROVIDER = pytest.StashKey[str | None]()


RELIABILITY = Path(__file__).parent / "reliability"


def pytest_configure(config: pytest.Config) -> None:
    """Every test runs on the CPU provider unless it is marked `gpu`. On a GPU host `auto` means CUDA,
    and the other tests check what the CPU answers (provider names, start-up lines, parity at 2e-6).
    Pinned here, before any fixture of any scope, so that module- and session-scoped servers get it too:
    a server a test starts inherits this environment (`loadtests.server.running_server`)."""
    config.stash[HOST_PROVIDER] = os.environ.get(PROVIDER_ENV)
    os.environ[PROVIDER_ENV] = Provider.CPU.value


def pytest_unconfigure(config: pytest.Config) -> None:
    host = config.stash.get(HOST_PROVIDER, None)
    if host is None:
        os.environ.pop(PROVIDER_ENV, None)
    else:
        os.environ[PROVIDER_ENV] = host


@pytest.fixture(autouse=True)
def provider_of_the_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The CPU for a test not marked `gpu` (again, should anything before it have changed it); for a `gpu`
    test, whatever the environment asked for before the suite pinned the CPU."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv(PROVIDER_ENV, Provider.CPU.value)
        return Provider.CPU.value
    host = request.config.stash[HOST_PROVIDER]
    if host is None:
        monkeypatch.delenv(PROVIDER_ENV, raising=False)
    else:
        monkeypatch.setenv(PROVIDER_ENV, host)
    return host


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/reliability/ are marked `reliability` (`-m "not reliability"` leaves them out).
    Tests marked `gpu` run where the CUDA provider can run, and skip elsewhere saying why."""
    for item in items:
        if RELIABILITY in item.path.parents:
            item.add_marker(pytest.mark.reliability)
        item.add_marker(_tier(item))
    host = probe_host_gpu()
    refusal = why_no_gpu(host)
    if refusal is None:
        return
    reason = "no NVIDIA GPU on this host" if not host.device else f"the CUDA provider cannot run here: {refusal}"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def _tier(item: pytest.Item) -> pytest.MarkDecorator:
    """`e2e` for tests that start a real server (or use the shared one), `api` for the app run in-process,
    `unit` for the rest: `pytest -m unit` runs in seconds."""
    fixtures = getattr(item, "fixturenames", ())
    module = getattr(item, "module", None)
    if "server" in fixtures or (module is not None and "running_server" in vars(module)):
        return pytest.mark.e2e
    if "api" in fixtures or (module is not None and "create_app" in vars(module)):
        return pytest.mark.api
    return pytest.mark.unit


def postgres_url() -> str:
    """The PostgreSQL to test on (`tests/with_services.sh` starts one); skips the test when there is none."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL to test on")
    try:
        ThresholdStore.open(url).close()
    except ThresholdStoreError as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_ENV} is unreachable: {exc}")
    return url


@contextmanager
def app_in_process(model_store: Path, state_dir: Path) -> Iterator[TestClient]:
    """The API on the models of `model_store`, run in this process (no server): Starlette's test client."""
    from starlette.testclient import TestClient

    from service.api.app import create_app
    from service.config import Settings
    from service.served_models import ServedModels

    settings = Settings(model_store=model_store, state_dir=state_dir, workers=1)
    models = ServedModels.load(settings)
    try:
        with TestClient(create_app(settings, lambda: models)) as client:
            yield client
    finally:
        models.close()


@contextmanager
def running_server(
    log_dir: Path, timeout_s: float = 120.0, port: int | None = None, **settings: object
) -> Iterator[RunningServer]:
    """A server on the committed demo models with one worker unless the test asks for more."""
    defaults = {"workers": 1, "model_store": MODEL_STORE}
    with serve_in_background(log_dir, timeout_s, port=port, **{**defaults, **settings}) as server:
        yield server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server on the committed demo models, shared by the end-to-end tests."""
    with running_server(tmp_path_factory.mktemp("server"), max_body_bytes=4_000_000, max_pixels=12_000_000) as s:
        yield s
