import pytest

from service.pipeline.providers import (
    CPU,
    CUDA,
    TENSORRT,
    HostGpu,
    NvidiaDriver,
    Provider,
    ProviderUnavailable,
    _first_unloadable,
    choose_provider,
    nvidia_device_present,
    parse_driver_release,
    probe_host_gpu,
    read_nvidia_driver,
    resolve_provider,
    tensorrt_release,
    unused_gpu,
)
from tests.service.pipeline.hosts import DRIVER_575, DRIVER_580

BUILT = frozenset({TENSORRT, CUDA, CPU})

# /proc/driver/nvidia/version as the proprietary and the open kernel modules write it.
PROC_575 = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  575.57.08  Sat May 24 07:21:55 UTC 2025\n"
    "GCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04) \n"
)
PROC_580_OPEN = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
    "(dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 06:54:38 UTC 2025\n"
    "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04) \n"
)


def host(
    device: bool = True,
    cuda: str | None = None,
    tensorrt: str | None = None,
    built=BUILT,
    driver: NvidiaDriver | None = DRIVER_580,
) -> HostGpu:
    """A host with or without an NVIDIA device, the first library each GPU provider misses, and its driver."""
    return HostGpu(device=device, built=built, missing={CUDA: cuda, TENSORRT: cuda or tensorrt}, driver=driver)


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


@pytest.mark.parametrize(
    ("text", "release"),
    [
        (PROC_575, "575.57.08"),
        (PROC_580_OPEN, "580.65.06"),
        ("NVRM version: NVIDIA UNIX aarch64 Kernel Module  580.82.07  Fri Aug 22 16:41:25 UTC 2025\n", "580.82.07"),
        ("", None),
        ("GCC version:  gcc version 13.3.0\n", None),
    ],
)
def test_the_driver_release_is_read_from_proc_driver_nvidia_version(text, release):
    assert parse_driver_release(text) == release


@pytest.mark.parametrize(
    ("driver", "runs", "described"),
    [
        (DRIVER_575, False, "575.57.08 (CUDA 12.9)"),
        (DRIVER_580, True, "580.65.06 (CUDA 13.0)"),
        (NvidiaDriver(parse_driver_release(PROC_575), None), False, "575.57.08"),
        (NvidiaDriver(parse_driver_release(PROC_580_OPEN), None), True, "580.65.06"),
        # NVIDIA's forward-compatibility libcuda runs CUDA 13 on an older kernel module: libcuda decides.
        (NvidiaDriver("575.57.08", 13000), True, "575.57.08 (CUDA 13.0)"),
        (NvidiaDriver(None, 12080), False, "CUDA 12.8"),
        (NvidiaDriver(None, None), True, "unknown"),  # the session's provider read-back still decides
    ],
)
def test_cuda_13_needs_a_driver_whose_libcuda_runs_13_0_or_else_release_580(driver, runs, described):
    assert driver.runs_cuda_13 is runs
    assert str(driver) == described


def test_auto_on_a_host_with_an_old_driver_serves_on_cpu_and_says_which_driver_it_needs():
    old = host(driver=DRIVER_575)
    assert not old.runs(CUDA) and not old.runs(TENSORRT)
    assert choose_provider(Provider.AUTO, old) == CPU
    note = unused_gpu(Provider.AUTO, old)
    assert note is not None and "\n" not in note
    assert "575.57.08 (CUDA 12.9)" in note and "580 or later" in note and "upgrade the NVIDIA driver" in note
    assert choose_provider(Provider.AUTO, host(driver=None)) == TENSORRT  # not read: the read-back decides
    assert unused_gpu(Provider.AUTO, host(driver=None)) is None


@pytest.mark.parametrize("named", [Provider.CUDA, Provider.TENSORRT])
def test_cuda_or_tensorrt_named_refuse_an_old_driver_naming_the_one_found_and_the_one_needed(named):
    with pytest.raises(ProviderUnavailable, match=r"needs NVIDIA driver 580 or later.*575\.57\.08 \(CUDA 12\.9\)"):
        choose_provider(named, host(driver=DRIVER_575))


def test_tensorrt_versions_read_as_tensorrt_writes_them():
    assert tensorrt_release(101303) == "10.13.3"
    assert tensorrt_release(100000) == "10.0.0"


def test_the_library_probe_names_the_first_library_that_does_not_load():
    assert _first_unloadable(("libc.so.6", "libm.so.6")) is None
    assert _first_unloadable(("libc.so.6", "libnvinfer.so.10", "libm.so.6")) == "libnvinfer.so.10"


@pytest.mark.skipif(nvidia_device_present(), reason="this host has a GPU")
def test_this_host_without_a_gpu_runs_auto_on_cpu():
    probed = probe_host_gpu()
    assert not probed.device and probed.driver is None
    assert read_nvidia_driver() == NvidiaDriver(release=None, cuda=None)  # no driver, no libcuda: nothing read
    assert resolve_provider(Provider.AUTO) == CPU
    with pytest.raises(ProviderUnavailable, match="needs an NVIDIA GPU"):
        resolve_provider(Provider.TENSORRT)
