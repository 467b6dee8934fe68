import pytest

from service.config import Settings, host_defaults, usable_cpus
from service.pipeline.providers import CPU, CUDA, TENSORRT, nvidia_device_present
from service.pipeline.runtime import RuntimeOptions
from tests.service.pipeline.hosts import GPU_HOST


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


def test_tf32_is_on_by_default_as_in_onnxruntime_and_the_setting_reaches_the_cuda_provider(tmp_path):
    on_cuda = RuntimeOptions.from_settings(Settings(provider="cuda", state_dir=tmp_path), GPU_HOST)
    assert on_cuda.providers("images", None) == [(CUDA, on_cuda.cuda), CPU]
    assert on_cuda.cuda["use_tf32"] == "1"
    for provider, first in (("cuda", CUDA), ("tensorrt", TENSORRT)):  # TensorRT hands the CUDA provider the rest
        settings = Settings(provider=provider, state_dir=tmp_path, use_tf32=False)
        chain = RuntimeOptions.from_settings(settings, GPU_HOST).providers("images", None)
        *_, (name, cuda), cpu = chain
        assert (chain[0][0], name, cpu) == (first, CUDA, CPU)
        assert cuda["use_tf32"] == "0"


def test_tf32_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("INSPECTION_USE_TF32", "false")
    assert Settings().use_tf32 is False
