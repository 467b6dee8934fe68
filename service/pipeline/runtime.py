"""Step 4: onnxruntime sessions.

A model runs either on one session that takes any batch size, or, with fixed batch shapes, on one
session per batch size of `batch_buckets` (1, 2, 4, ... max): a batch is padded up to the next
size with zero rows, whose outputs are cut off before anything reads them. Each session then only
ever sees one input shape. The CUDA provider needs that: it redoes its per-shape set-up (cuDNN
kernel choice, workspaces) whenever a run's shape differs from the previous run's, even a shape it
has run before, 10-60 ms of CPU per run against 0.5 ms for the run itself. Every session runs once
at start-up (`warm_up`), before the service says it is ready, so that the first cameras do not
pay for the kernel search or TensorRT's engine build.

The provider was chosen before any session (`providers.choose_provider`); the one a session
really got is read back, since onnxruntime falls back to CPU without a word. Under TensorRT each
session's engine is cached in a folder named by the model, its weights, the batch shape and the
precision, and built by one worker while the others wait (`engine_cache`).
"""

from __future__ import annotations

import ctypes
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.config import Settings
from service.pipeline.engine_cache import EngineKey, building_engine, graph_sha256, tensorrt_cache
from service.pipeline.providers import (
    CPU,
    CUDA,
    TENSORRT,
    HostGpu,
    check_active_provider,
    choose_provider,
    probe_host_gpu,
)


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc), so that memory released by a session
    shows as released; elsewhere, nothing."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes that fixed shapes run at: powers of two below `max_batch_size`, then it."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    if max_batch_size > sizes[-1]:
        sizes.append(max_batch_size)
    return tuple(sizes)


@dataclass(frozen=True)
class RuntimeOptions:
    """How every session of this process is made: the provider, its options, the threads."""

    provider: str  # the onnxruntime provider that must run the graphs
    threads: int = 1
    cuda: dict[str, str] = field(default_factory=dict)  # CUDA provider options (also under TensorRT)
    tensorrt: dict[str, str] = field(default_factory=dict)  # TensorRT provider options, before profiles
    # Under TensorRT: the cache of this TensorRT version's engines, a folder per engine; None: no engine is kept.
    engine_cache: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings, host: HostGpu | None = None) -> RuntimeOptions:
        """The options `settings` give on `host`, a host's GPU side as probed (this host's unless given)."""
        host = host or probe_host_gpu()
        provider = choose_provider(settings.provider, host)
        assert settings.inference_threads is not None
        cuda = {
            "device_id": str(settings.gpu_device),
            "cudnn_conv_algo_search": settings.cuda_conv_algo_search,
            "cudnn_conv_use_max_workspace": str(int(settings.cuda_conv_max_workspace)),
            "prefer_nhwc": str(int(settings.cuda_prefer_nhwc)),
            "arena_extend_strategy": settings.cuda_arena_extend_strategy,
            "use_tf32": str(int(settings.use_tf32)),
        }
        if settings.cuda_mem_limit_mb is not None:
            cuda["gpu_mem_limit"] = str(settings.cuda_mem_limit_mb * 1024 * 1024)
        tensorrt = {"device_id": str(settings.gpu_device), "trt_fp16_enable": str(settings.fp16)}
        engine_cache = None
        if provider == TENSORRT:
            engine_cache = tensorrt_cache(settings.tensorrt_cache_dir, host.tensorrt or "unknown")
            # Kernel timings hold for any graph on one TensorRT and GPU: shared by every engine it builds.
            tensorrt |= {"trt_timing_cache_enable": "True", "trt_timing_cache_path": str(engine_cache)}
        return cls(provider, settings.inference_threads, cuda, tensorrt, engine_cache)

    @property
    def fp16(self) -> bool:
        return self.tensorrt.get("trt_fp16_enable") == "True"

    def providers(
        self, input_name: str, profile: tuple[tuple[int, ...], tuple[int, ...]] | None, engine: Path | None = None
    ) -> list[str | tuple[str, dict[str, str]]]:
        """The provider list for one session; `profile` is TensorRT's (smallest, largest) input shape, and
        `engine` the folder its engine is cached in (`engine_cache.building_engine`; None: not cached)."""
        if self.provider == CPU:
            return [CPU]
        chain: list[str | tuple[str, dict[str, str]]] = [(CUDA, self.cuda), CPU]
        if self.provider == TENSORRT:
            options = dict(self.tensorrt)
            if profile is not None:
                smallest, largest = ("x".join(map(str, shape)) for shape in profile)
                options |= {
                    "trt_profile_min_shapes": f"{input_name}:{smallest}",
                    "trt_profile_opt_shapes": f"{input_name}:{largest}",
                    "trt_profile_max_shapes": f"{input_name}:{largest}",
                }
            if engine is not None:
                options |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(engine)}
            chain.insert(0, (TENSORRT, options))
        return chain

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.provider != CPU:
            # The CPU side of a GPU session only launches kernels and copies: spinning threads
            # waiting for work would take cores from decoding.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return options


@dataclass
class InferenceSession:
    """One model's onnxruntime session(s), with the names they are called by.

    `sessions` maps a batch size to the session that runs it; key 0 is a session for any size.
    """

    sessions: dict[int, ort.InferenceSession]
    input_name: str
    output_names: list[str]
    provider: str  # the execution provider that really runs the graph
    input_shape: tuple[int, ...]  # one image's input, without the batch axis
    input_dtype: np.dtype
    # Outputs fetched only on request (a classifier's features, for heat maps): the graph computes
    # them anyway, and a run that does not ask does not copy them out.
    extra_output_names: list[str] = field(default_factory=list)
    rows_run: set[int] = field(default_factory=set)  # the batch sizes run so far (warm-up included)

    @cached_property
    def batch_sizes(self) -> tuple[int, ...] | None:
        """The fixed batch sizes batches are padded up to; None: any size runs as it is."""
        return None if 0 in self.sessions else tuple(sorted(self.sessions))

    def batch_rows(self, images: int) -> int:
        """Rows of the input that carries `images` images: their bucket, or themselves."""
        sizes = self.batch_sizes
        if sizes is None:
            return images
        for size in sizes:
            if size >= images:
                return size
        raise ValueError(f"a batch of {images} images is over the largest batch size, {sizes[-1]}")

    def run(self, batch: np.ndarray, images: int | None = None, extra: bool = False) -> list[np.ndarray]:
        """Run a batch of `batch_rows(images)` rows; the outputs keep the first `images` rows only.
        `extra`: the extra outputs too, after the others."""
        session = self.sessions.get(0) or self.sessions[len(batch)]
        names = [*self.output_names, *self.extra_output_names] if extra else self.output_names
        outputs = session.run(names, {self.input_name: batch})
        self.rows_run.add(len(batch))
        if images is None or images == len(batch):
            return outputs
        return [output[:images] for output in outputs]

    def release(self) -> None:
        """Drop the onnxruntime sessions (their memory goes with them: nothing else refers to them) and
        hand the freed heap back to the system; the session runs nothing after this."""
        self.sessions.clear()
        trim_heap()

    def warm_up(self) -> float:
        """Run every fixed batch size once (or a single image when any size goes); returns the seconds."""
        started = time.perf_counter()
        for rows in self.batch_sizes or (1,):
            self.run(np.zeros((rows, *self.input_shape), dtype=self.input_dtype))
        return time.perf_counter() - started


def create_session(
    model_path: Path,
    runtime: RuntimeOptions,
    *,
    input_name: str,
    output_names: list[str],
    extra_output_names: list[str] | None = None,
    batch_sizes: tuple[int, ...] | None = None,
    image_shape: tuple[int, ...] | None = None,
    smallest_image_shape: tuple[int, ...] | None = None,
    model_ref: tuple[str, int] | None = None,
) -> InferenceSession:
    """A model's session(s): one per batch size of `batch_sizes`, or one for any batch size.

    `image_shape` (C, H, W) is what the service feeds a graph whose image axes are left dynamic;
    `smallest_image_shape`, when it feeds smaller images too (letterboxed only to a stride): the
    low end of TensorRT's profile. Other providers run any shape the graph takes.
    `model_ref` (name, version) names the folder of its TensorRT engines; by default the graph's
    folder and the one above it, as the model store lays them out."""
    path = str(model_path)
    # A CPU session without graph optimisation reads the graph's signature at little cost.
    signature = ort.SessionOptions()
    signature.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    probe = ort.InferenceSession(path, sess_options=signature, providers=[CPU])
    graph_inputs = probe.get_inputs()
    graph_outputs = [o.name for o in probe.get_outputs()]
    if [i.name for i in graph_inputs] != [input_name]:
        names = [i.name for i in graph_inputs]
        raise ValueError(f"{model_path}: graph inputs are {names}, manifest says [{input_name!r}]")
    extra_output_names = list(extra_output_names or [])
    missing = [n for n in [*output_names, *extra_output_names] if n not in graph_outputs]
    if missing:
        raise ValueError(f"{model_path}: graph has no outputs {missing} (it has {graph_outputs})")
    shape, element = graph_inputs[0].shape, graph_inputs[0].type
    if element not in _ONNX_DTYPES:
        raise ValueError(f"{model_path}: the input must be uint8, float or float16, got {element}")
    fixed = all(isinstance(d, int) for d in shape[1:])
    if not fixed and image_shape is None:
        raise ValueError(f"{model_path}: the input's image axes are dynamic ({shape}): give the shape to feed")
    if fixed and smallest_image_shape is not None:
        raise ValueError(f"{model_path}: the input's image axes are fixed ({shape}): it cannot take smaller images")
    if fixed and image_shape is not None and tuple(image_shape) != tuple(shape[1:]):
        fed = "x".join(map(str, image_shape))
        raise ValueError(
            f"{model_path}: the graph takes {'x'.join(map(str, shape[1:]))} images; its manifest says {fed}"
        )
    dynamic_batch = not isinstance(shape[0], int)  # else one image per run (torchvision detectors)
    image_shape = tuple(shape[1:]) if fixed else tuple(image_shape)
    smallest = image_shape if smallest_image_shape is None else tuple(smallest_image_shape)

    name, version = model_ref or (model_path.parent.parent.name, model_path.parent.name)

    def make(profile: tuple[tuple[int, ...], tuple[int, ...]] | None) -> ort.InferenceSession:
        options = runtime.session_options()
        if runtime.provider != TENSORRT or runtime.engine_cache is None:
            return ort.InferenceSession(path, sess_options=options, providers=runtime.providers(input_name, profile))
        shapes = profile or ((shape[0], *image_shape),) * 2  # no profile: every axis is fixed
        key = EngineKey(name, str(version), graph_sha256(model_path), shapes, runtime.fp16)
        # TensorRT builds the engine while the session is made: one worker builds it, the others wait and load it.
        with building_engine(runtime.engine_cache, key) as folder:
            providers = runtime.providers(input_name, profile, folder)
            session = ort.InferenceSession(path, sess_options=options, providers=providers)
            # Checked inside: a session that fell back from TensorRT built nothing, and its folder must not
            # be marked as holding an engine.
            check_active_provider(TENSORRT, session.get_providers())
            return session

    if batch_sizes and dynamic_batch:
        sessions = {rows: make(((rows, *smallest), (rows, *image_shape))) for rows in batch_sizes}
    else:
        largest = max(batch_sizes or (1,))
        low, high = (1, largest) if dynamic_batch else (shape[0], shape[0])
        # A graph with any axis left dynamic gets a profile, so that TensorRT builds its engine as the
        # session is made (under the engine's lock), not at the first run.
        static = fixed and not dynamic_batch
        sessions = {0: make(None if static else ((low, *smallest), (high, *image_shape)))}
    active = {check_active_provider(runtime.provider, s.get_providers()) for s in sessions.values()}
    return InferenceSession(
        sessions, input_name, output_names, active.pop(), image_shape, _ONNX_DTYPES[element], extra_output_names
    )


_ONNX_DTYPES = {
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
}
