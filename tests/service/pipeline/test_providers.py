import pytest

from service.pipeline.providers import (
    CPU,
    CUDA,
    TENSORRT,
    HostGpu,
    Provider,
    ProviderUnavailable,
    _first_unloadable,
    choose_provider,
    nvidia_device_present,
    probe_host_gpu,
    resolve_provider,
    unused_gpu,
)

BUILT = frozenset({TENSORRT, CUDA, CPU})


def host(device: bool = True, cuda: str | None = None, tensorrt: str | None = None, built=BUILT) -> HostGpu:
    """A host with or without an NVIDIA device, and the first library each GPU provider misses."""
    return HostGpu(device=device, built=built, missing={CUDA: cuda, TENSORRT: cuda or tensorrt})


@pytest.mark.parametrize(
    ("described", "expected"),
    [
        (host(), TENSORRT),
        (host(tensorrt="libnvinfer.so.10"), CUDA),
        (host(cuda="libcublas.so.13"), CPU),
        (host(device=False), CPU),
        (host(built=frozenset({CPU})), CPU),
    ],
)
def test_auto_takes_the_best_provider_whose_libraries_load(described, expected):
    assert choose_provider(Provider.AUTO, described) == expected


def test_auto_on_a_gpu_host_without_cuda_libraries_says_what_to_install_in_one_line():
    note = unused_gpu(Provider.AUTO, host(cuda="libcublas.so.13"))
    assert note is not None and "\n" not in note
    assert "NVIDIA GPU" in note and "libcublas.so.13" in note and "make serve GPU=cuda" in note
    assert unused_gpu(Provider.AUTO, host()) is None
    assert unused_gpu(Provider.AUTO, host(device=False)) is None
    assert unused_gpu(Provider.CPU, host(cuda="libcublas.so.13")) is None


def test_tensorrt_refusal_names_the_missing_tensorrt_library():
    with pytest.raises(ProviderUnavailable, match=r"needs libnvinfer\.so\.10.*make serve GPU=tensorrt"):
        choose_provider(Provider.TENSORRT, host(tensorrt="libnvinfer.so.10"))
    assert choose_provider(Provider.CUDA, host(tensorrt="libnvinfer.so.10")) == CUDA


def test_cuda_refusal_names_the_missing_cuda_library():
    with pytest.raises(ProviderUnavailable, match=r"needs libcudnn\.so\.9.*make serve GPU=cuda"):
        choose_provider(Provider.CUDA, host(cuda="libcudnn.so.9"))
    with pytest.raises(ProviderUnavailable, match=r"needs libcudnn\.so\.9.*make serve GPU=cuda"):
        choose_provider(Provider.TENSORRT, host(cuda="libcudnn.so.9"))


def test_gpu_provider_without_a_gpu_or_missing_from_the_build_is_refused():
    with pytest.raises(ProviderUnavailable, match="needs an NVIDIA GPU and this host has none"):
        choose_provider(Provider.CUDA, host(device=False))
    with pytest.raises(ProviderUnavailable, match="needs CUDAExecutionProvider, which this onnxruntime build lacks"):
        choose_provider(Provider.CUDA, host(built=frozenset({CPU})))
    assert choose_provider(Provider.CPU, host()) == CPU


def test_the_library_probe_names_the_first_library_that_does_not_load():
    assert _first_unloadable(("libc.so.6", "libm.so.6")) is None
    assert _first_unloadable(("libc.so.6", "libnvinfer.so.10", "libm.so.6")) == "libnvinfer.so.10"


@pytest.mark.skipif(nvidia_device_present(), reason="this host has a GPU")
def test_this_host_without_a_gpu_runs_auto_on_cpu():
    probed = probe_host_gpu()
    assert not probed.device
    assert resolve_provider(Provider.AUTO) == CPU
    with pytest.raises(ProviderUnavailable, match="needs an NVIDIA GPU"):
        resolve_provider(Provider.TENSORRT)
