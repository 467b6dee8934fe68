"""Which onnxruntime execution provider runs the graphs on this host, and with which options.

onnxruntime falls back to CPU silently when the CUDA or TensorRT provider cannot
start, and prints an error at every session while trying. So the service decides
once, before any session: it looks for an NVIDIA device and loads the shared
libraries each GPU provider links (CUDA 13 and cuDNN 9 from the `gpu` extra's pip
packages, TensorRT 10 from the `tensorrt` extra). A provider asked for by name
that cannot run stops the start-up with the missing piece named; `auto` takes the
best one that can run.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
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


class ProviderUnavailable(RuntimeError):
    """The configured execution provider cannot run on this host."""


@dataclass(frozen=True)
class HostGpu:
    """What this host offers the GPU providers."""

    device: bool  # an NVIDIA device node exists
    built: frozenset[str]  # providers this onnxruntime build has
    missing: Mapping[str, str | None]  # GPU provider -> the first library that does not load (None: all load)

    def runs(self, provider: str) -> bool:
        return self.device and provider in self.built and self.missing.get(provider) is None


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
    return HostGpu(device, built, missing)


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
    missing = host.missing.get(wanted)
    if missing is not None:
        needs = TENSORRT if missing in _LIBRARIES[TENSORRT] else CUDA
        raise ProviderUnavailable(
            f"provider {provider.value!r} needs {missing}, which cannot be loaded; install {_INSTALL[needs]}"
        )
    return wanted


def unused_gpu(provider: Provider, host: HostGpu) -> str | None:
    """One line for the operator when `auto` leaves this host's NVIDIA GPU idle for want of libraries."""
    if provider is not Provider.AUTO or choose_provider(provider, host) != CPU:
        return None
    if not host.device or CUDA not in host.built:
        return None
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
