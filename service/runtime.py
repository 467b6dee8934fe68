"""Step 4: onnxruntime sessions, and the execution provider check.

onnxruntime silently falls back to CPU when the CUDA or TensorRT provider cannot
start (no GPU, missing libraries). So the providers a session really got are
read back after it is created, and a GPU that was asked for and is missing is a
start-up error, unless the provider is `auto`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .config import Provider

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

# What to ask onnxruntime for, best first, and which provider must be active.
_REQUESTED: dict[Provider, list[str]] = {
    Provider.CPU: [CPU],
    Provider.CUDA: [CUDA, CPU],
    Provider.TENSORRT: [TENSORRT, CUDA, CPU],
    Provider.AUTO: [TENSORRT, CUDA, CPU],
}
_REQUIRED: dict[Provider, str | None] = {
    Provider.CPU: CPU,
    Provider.CUDA: CUDA,
    Provider.TENSORRT: TENSORRT,
    Provider.AUTO: None,
}


def nvidia_device_present() -> bool:
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


class ProviderUnavailable(RuntimeError):
    """The configured execution provider could not be started."""


@dataclass
class InferenceSession:
    """One model's onnxruntime session, with the names it is called by."""

    session: ort.InferenceSession
    input_name: str
    output_names: list[str]
    provider: str  # the execution provider that really runs the graph

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: batch})


def requested_providers(provider: Provider, available: list[str], *, gpu_present: bool) -> list[str]:
    """Providers to ask onnxruntime for: the configured ones that this build has.

    `auto` on a host without an NVIDIA device goes straight to CPU, instead of
    having onnxruntime fail to load the CUDA libraries on every session.
    """
    wanted = _REQUESTED[provider]
    if provider is Provider.AUTO and not gpu_present:
        wanted = [CPU]
    required = _REQUIRED[provider]
    if required is not None and required not in available:
        raise ProviderUnavailable(
            f"provider {provider.value!r} needs {required}, which this onnxruntime build lacks "
            f"(it has {', '.join(available)}); install onnxruntime-gpu or set INSPECTION_PROVIDER=auto"
        )
    return [p for p in wanted if p in available]


def preflight_provider(provider: Provider) -> None:
    """Fail fast, before any worker starts, when the configured provider cannot work on this host."""
    requested_providers(provider, ort.get_available_providers(), gpu_present=True)
    if provider in (Provider.CUDA, Provider.TENSORRT) and not nvidia_device_present():
        raise ProviderUnavailable(
            f"provider {provider.value!r} needs an NVIDIA GPU and this host has none; "
            "set INSPECTION_PROVIDER=cpu or auto to run on CPU"
        )


def check_active_provider(provider: Provider, active: list[str]) -> str:
    """The provider running the graph; raises when a required GPU provider fell back."""
    required = _REQUIRED[provider]
    if required is not None and active[0] != required:
        raise ProviderUnavailable(
            f"provider {provider.value!r} was asked for but onnxruntime runs on {active[0]} "
            f"(no usable GPU or CUDA libraries); set INSPECTION_PROVIDER=cpu or auto to run on CPU"
        )
    if provider is Provider.AUTO and active[0] == CPU:
        log.info("provider auto: running on CPU")
    return active[0]


def create_session(
    model_path: Path,
    provider: Provider,
    *,
    threads: int,
    input_name: str,
    output_names: list[str],
) -> InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = requested_providers(provider, ort.get_available_providers(), gpu_present=nvidia_device_present())
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    active = check_active_provider(provider, session.get_providers())
    graph_inputs = [i.name for i in session.get_inputs()]
    graph_outputs = [o.name for o in session.get_outputs()]
    if graph_inputs != [input_name]:
        raise ValueError(f"{model_path}: graph inputs are {graph_inputs}, manifest says [{input_name!r}]")
    missing = [n for n in output_names if n not in graph_outputs]
    if missing:
        raise ValueError(f"{model_path}: graph has no outputs {missing} (it has {graph_outputs})")
    return InferenceSession(session=session, input_name=input_name, output_names=output_names, provider=active)
