import pytest

from service.config import Settings, host_defaults, usable_cpus
from service.pipeline.providers import nvidia_device_present


def test_a_16_core_gpu_host_gets_8_workers_with_fixed_batch_shapes():
    assert host_defaults(16, gpu=True) == {
        "workers": 8,
        "decode_threads": 2,
        "inference_threads": 1,
        "fixed_batch_shapes": True,
    }
    assert host_defaults(64, gpu=True)["workers"] == 8  # the CPU work per image, not the GPU, sets the pace
    assert host_defaults(1, gpu=True)["workers"] == 1


def test_a_cpu_host_gets_a_worker_per_core_and_any_batch_size():
    assert host_defaults(2, gpu=False) == {
        "workers": 2,
        "decode_threads": 2,
        "inference_threads": 1,
        "fixed_batch_shapes": False,
    }
    assert host_defaults(16, gpu=False)["workers"] == 16
    assert host_defaults(96, gpu=False)["workers"] == 16


@pytest.mark.skipif(nvidia_device_present(), reason="this host has a GPU")
def test_settings_left_open_are_derived_from_this_host(monkeypatch):
    for name in ("WORKERS", "DECODE_THREADS", "INFERENCE_THREADS", "FIXED_BATCH_SHAPES", "PROVIDER"):
        monkeypatch.delenv(f"INSPECTION_{name}", raising=False)
    on_cpu = Settings()
    assert (on_cpu.workers, on_cpu.fixed_batch_shapes) == (min(16, usable_cpus()), False)
    on_cuda = Settings(provider="cuda")  # refused at start-up here, but laid out as a GPU host
    assert (on_cuda.workers, on_cuda.fixed_batch_shapes) == (max(1, min(8, usable_cpus() // 2)), True)


def test_settings_given_are_kept(monkeypatch):
    monkeypatch.setenv("INSPECTION_WORKERS", "3")
    monkeypatch.setenv("INSPECTION_FIXED_BATCH_SHAPES", "true")
    settings = Settings(decode_threads=5)
    assert (settings.workers, settings.decode_threads, settings.fixed_batch_shapes) == (3, 5, True)
    assert settings.inference_threads == 1


def test_usable_cpus_is_at_most_the_affinity():
    import os

    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
