"""Which onnxruntime execution provider runs the graphs on this host, and with which options.

onnxruntime falls back to CPU silently when the CUDA or TensorRT provider cannot
start, and prints an error at every session while trying. So the service decides
once, before any session: it looks for an NVIDIA device and loads the shared
libraries each GPU provider links (CUDA 13 and cuDNN 9 from the `gpu` extra's pip
packages, TensorRT 10 from the `tensorrt` extra), and reads the driver's version:
CUDA 13's libraries load under an older driver and fail only at the first session.
A provider asked for by name that cannot run stops the start-up with the missing
piece named; `auto` takes the best one that can run.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

import onnxruntime as ort

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)  # best first


class Provider(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"
    AUTO = "auto"  # the best one that can run here; CPU when no GPU provider can


_NAMED: dict[Provider, str] = {Provider.CPU: CPU, Provider.CUDA: CUDA, Provider.TENSORRT: TENSORRT}

# The libraries that onnxruntime-gpu 1.31's provider libraries link (`readelf -d`), plus cuDNN,
# which the CUDA provider opens when it first runs a convolution. A TensorRT session needs the
# CUDA provider's libraries too.
_LIBRARIES: dict[str, tuple[str, ...]] = {
    CUDA: (
        "libcuda.so.1",
        "libcudart.so.13",
        "libcublasLt.so.13",
        "libcublas.so.13",
        "libcurand.so.10",
        "libcudnn.so.9",
    ),
    TENSORRT: ("libnvinfer.so.10", "libnvonnxparser.so.10"),
}
_INSTALL: dict[str, str] = {
    CUDA: "the CUDA 13 runtime (make serve GPU=cuda, or pip install -e '.[gpu]') and NVIDIA's driver",
    TENSORRT: "TensorRT 10 (make serve GPU=tensorrt, or pip install -e '.[tensorrt]')",
}


CUDA_13_DRIVER = 580  # the first NVIDIA driver release that runs CUDA 13
CUDA_13 = 13000  # CUDA 13.0 as the driver API counts versions (cuDriverGetVersion: 1000 * major + 10 * minor)


class ProviderUnavailable(RuntimeError):
    """The configured execution provider cannot run on this host."""


@dataclass(frozen=True)
class NvidiaDriver:
    """The NVIDIA driver of this host; either part may be unknown."""

    release: str | None  # the kernel module's version, e.g. "580.65.06" (/proc/driver/nvidia/version)
    cuda: int | None  # the newest CUDA its libcuda runs, as cuDriverGetVersion counts: 13000 is 13.0

    @property
    def runs_cuda_13(self) -> bool:
        # libcuda decides: NVIDIA's forward-compatibility package runs CUDA 13 on an older kernel module.
        # Unknown counts as yes; the provider a session really got is still read back.
        if self.cuda is not None:
            return self.cuda >= CUDA_13
        if self.release is not None:
            return int(self.release.split(".")[0]) >= CUDA_13_DRIVER
        return True

    def __str__(self) -> str:
        cuda = None if self.cuda is None else f"CUDA {self.cuda // 1000}.{self.cuda % 1000 // 10}"
        if self.release is None:
            return cuda or "unknown"
        return self.release if cuda is None else f"{self.release} ({cuda})"


@dataclass(frozen=True)
class HostGpu:
    """What this host offers the GPU providers."""

    device: bool  # an NVIDIA device node exists
    built: frozenset[str]  # providers this onnxruntime build has
    missing: Mapping[str, str | None]  # GPU provider -> the first library that does not load (None: all load)
    driver: NvidiaDriver | None = None  # None: not read (no device, or no GPU provider in this build)
    tensorrt: str | None = None  # the version of the TensorRT library that loads, e.g. "10.13.3"

    @property
    def driver_too_old(self) -> bool:
        return self.driver is not None and not self.driver.runs_cuda_13

    def runs(self, provider: str) -> bool:
        return self.device and provider in self.built and not self.driver_too_old and self.missing.get(provider) is None


def nvidia_device_present() -> bool:
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


@lru_cache(maxsize=1)
def probe_host_gpu() -> HostGpu:
    """Look for an NVIDIA device and load the GPU providers' libraries (once per process)."""
    built = frozenset(ort.get_available_providers())
    device = nvidia_device_present()
    if not device or not built & set(GPU_PROVIDERS):
        return HostGpu(device, built, {p: None for p in GPU_PROVIDERS})
    _preload_gpu_libraries()
    missing = {CUDA: _first_unloadable(_LIBRARIES[CUDA])}
    missing[TENSORRT] = missing[CUDA] or _first_unloadable(_LIBRARIES[TENSORRT])
    tensorrt = None if missing[TENSORRT] else _tensorrt_version()
    return HostGpu(device, built, missing, read_nvidia_driver(), tensorrt)


def read_nvidia_driver() -> NvidiaDriver:
    """This host's driver: the kernel module's release and the CUDA version its libcuda runs."""
    try:
        release = parse_driver_release(Path("/proc/driver/nvidia/version").read_text())
    except OSError:  # no driver loaded, or a container that does not show it
        release = None
    return NvidiaDriver(release, _libcuda_version())


def parse_driver_release(text: str) -> str | None:
    """The driver release in the text of /proc/driver/nvidia/version ("NVRM version: NVIDIA UNIX x86_64
    Kernel Module  580.65.06  ..."), or None when the text is not that."""
    found = re.match(r"NVRM version:.*? Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)(?=\s|$)", text)
    return found.group(1) if found else None


def tensorrt_release(code: int) -> str:
    """TensorRT 10's version number (getInferLibVersion: 10000 * major + 100 * minor + patch) as text."""
    return f"{code // 10000}.{code // 100 % 100}.{code % 100}"


def _libcuda_version() -> int | None:
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    # cuDriverGetVersion needs no cuInit: it answers without touching the device.
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value


def _tensorrt_version() -> str | None:
    try:
        return tensorrt_release(ctypes.CDLL(_LIBRARIES[TENSORRT][0]).getInferLibVersion())
    except (OSError, AttributeError):
        return None


def _preload_gpu_libraries() -> None:
    """Load CUDA, cuDNN and TensorRT from their pip packages, where installed, so that onnxruntime's
    provider libraries find them by name (they are not on the loader's path)."""
    if hasattr(ort, "preload_dlls"):
        # Best effort: it prints a line for every library it cannot find, and the probe that follows
        # names the first missing one itself.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            ort.preload_dlls()
    spec = importlib.util.find_spec("tensorrt_libs")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        for name in _LIBRARIES[TENSORRT]:
            with contextlib.suppress(OSError):
                ctypes.CDLL(str(Path(folder) / name), mode=ctypes.RTLD_GLOBAL)


def _first_unloadable(libraries: tuple[str, ...]) -> str | None:
    for name in libraries:
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            return name
    return None


def choose_provider(provider: Provider, host: HostGpu) -> str:
    """The onnxruntime provider that will run the graphs; raises when a provider named cannot run."""
    if provider is Provider.AUTO:
        return next((candidate for candidate in GPU_PROVIDERS if host.runs(candidate)), CPU)
    wanted = _NAMED[provider]
    if wanted == CPU:
        return CPU
    if wanted not in host.built:
        raise ProviderUnavailable(
            f"provider {provider.value!r} needs {wanted}, which this onnxruntime build lacks "
            f"(it has {', '.join(sorted(host.built))}); install onnxruntime-gpu or set INSPECTION_PROVIDER=auto"
        )
    if not host.device:
        raise ProviderUnavailable(
            f"provider {provider.value!r} needs an NVIDIA GPU and this host has none; "
            "set INSPECTION_PROVIDER=cpu or auto to run on CPU"
        )
    if host.driver_too_old:
        raise ProviderUnavailable(
            f"provider {provider.value!r} needs NVIDIA driver {CUDA_13_DRIVER} or later (CUDA 13), and this "
            f"host's is {host.driver}; upgrade the driver, or set INSPECTION_PROVIDER=cpu or auto to run on CPU"
        )
    missing = host.missing.get(wanted)
    if missing is not None:
        needs = TENSORRT if missing in _LIBRARIES[TENSORRT] else CUDA
        raise ProviderUnavailable(
            f"provider {provider.value!r} needs {missing}, which cannot be loaded; install {_INSTALL[needs]}"
        )
    return wanted


def why_no_gpu(host: HostGpu) -> str | None:
    """Why the CUDA provider cannot run on this host (its refusal: no device, an onnxruntime without it,
    a driver too old for CUDA 13, a library that does not load); None where it can."""
    try:
        choose_provider(Provider.CUDA, host)
    except ProviderUnavailable as refusal:
        return str(refusal)
    return None


def unused_gpu(provider: Provider, host: HostGpu) -> str | None:
    """One line for the operator when `auto` leaves this host's NVIDIA GPU idle for want of libraries
    or of a recent enough driver."""
    if provider is not Provider.AUTO or choose_provider(provider, host) != CPU:
        return None
    if not host.device or CUDA not in host.built:
        return None
    if host.driver_too_old:
        return (
            f"provider auto: this host has an NVIDIA GPU, but its driver is {host.driver} and CUDA 13 needs "
            f"{CUDA_13_DRIVER} or later, so the models run on CPU; upgrade the NVIDIA driver"
        )
    return (
        f"provider auto: this host has an NVIDIA GPU, but {host.missing[CUDA]} cannot be loaded, so the models "
        f"run on CPU; install {_INSTALL[CUDA]}"
    )


def resolve_provider(provider: Provider) -> str:
    """`choose_provider` on this host."""
    return choose_provider(provider, probe_host_gpu())


def check_active_provider(expected: str, active: list[str]) -> str:
    """The provider a session really got; raises when onnxruntime fell back from the one chosen."""
    if active[0] != expected:
        raise ProviderUnavailable(
            f"onnxruntime was asked for {expected} but runs the graph on {active[0]}; "
            "see onnxruntime's messages above, or set INSPECTION_PROVIDER=cpu"
        )
    return active[0]
