"""The suite's own set-up (tests/conftest.py): tests not marked `gpu` run on the CPU provider, whatever the host."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.config import Settings
from service.pipeline.providers import CPU, TENSORRT, Provider
from service.pipeline.runtime import RuntimeOptions
from tests.conftest import HOST_PROVIDER
from tests.service.pipeline.hosts import GPU_HOST


@pytest.fixture(scope="module")
def provider_at_module_set_up() -> str | None:
    """What a module-scoped fixture, such as one starting a shared server, sees: it is set up before any
    function-scoped fixture runs."""
    return os.environ.get("INSPECTION_PROVIDER")


def test_a_test_not_marked_gpu_runs_on_the_cpu_even_where_auto_would_take_the_gpu(provider_of_the_test):
    assert provider_of_the_test == os.environ["INSPECTION_PROVIDER"] == "cpu"
    settings = Settings()
    assert settings.provider is Provider.CPU and settings.fixed_batch_shapes is False
    assert RuntimeOptions.from_settings(settings, GPU_HOST).provider == CPU
    # The same host under `auto`, as the environment of `make test GPU=cuda` leaves it, would take TensorRT.
    assert RuntimeOptions.from_settings(Settings(provider="auto"), GPU_HOST).provider == TENSORRT


def test_fixtures_set_up_before_the_test_and_the_servers_they_start_see_the_cpu_too(provider_at_module_set_up):
    assert provider_at_module_set_up == "cpu"
    # A server inherits the test's environment (loadtests.server.running_server starts from os.environ).
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['INSPECTION_PROVIDER'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "cpu"


@pytest.mark.gpu
def test_a_gpu_test_sees_the_provider_the_environment_asked_for(provider_of_the_test, request):
    assert os.environ.get("INSPECTION_PROVIDER") == provider_of_the_test == request.config.stash[HOST_PROVIDER]
