"""Hosts as the GPU probe describes them, for the tests of what a host runs and with which options."""

from __future__ import annotations

from service.pipeline.providers import CPU, CUDA, TENSORRT, HostGpu, NvidiaDriver

DRIVER_575 = NvidiaDriver(release="575.57.08", cuda=12090)  # CUDA 12.9: too old for CUDA 13
DRIVER_580 = NvidiaDriver(release="580.65.06", cuda=13000)

# An NVIDIA GPU where every GPU provider's libraries load, as on the GPU machine.
GPU_HOST = HostGpu(
    device=True,
    built=frozenset({TENSORRT, CUDA, CPU}),
    missing={CUDA: None, TENSORRT: None},
    driver=DRIVER_580,
    tensorrt="10.13.3",
)
