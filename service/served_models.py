"""The models this worker serves: loaded from the model store at start-up."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from service.config import Settings
from service.errors import UnknownModel
from service.metrics import inspection_metrics
from service.model_store import ModelStoreError, ModelVersion, load_version, model_names, parse_ref
from service.pipeline.predictor import Predictor
from service.pipeline.providers import choose_provider, probe_host_gpu, unused_gpu
from service.pipeline.runtime import InferenceSession, RuntimeOptions, batch_buckets, create_session
from service.thresholds.store import ThresholdStore

log = logging.getLogger(__name__)


class ServedModels:
    def __init__(self, predictors: dict[str, Predictor], thresholds: ThresholdStore, pool: ThreadPoolExecutor):
        self._predictors = predictors
        self.thresholds = thresholds
        self._pool = pool

    @staticmethod
    def preflight(settings: Settings) -> None:
        """Check the configuration without loading any graph, before any worker starts its sessions."""
        host = probe_host_gpu()
        provider = choose_provider(settings.provider, host)
        note = unused_gpu(settings.provider, host)
        if note:
            log.warning(note)
        log.info(
            "running on %s: %d workers, %d decode threads and %d onnxruntime thread(s) each, %s",
            provider,
            settings.workers,
            settings.decode_threads,
            settings.inference_threads,
            f"batch sizes {', '.join(map(str, batch_buckets(settings.max_batch_size)))}"
            if settings.fixed_batch_shapes
            else "any batch size",
        )
        configured_versions(settings)
        ThresholdStore.from_settings(settings).close()

    @classmethod
    def load(cls, settings: Settings, thresholds: ThresholdStore | None = None) -> ServedModels:
        """Open a session for every configured model; any problem stops the start-up with a clear message."""
        pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        thresholds = thresholds or ThresholdStore.from_settings(settings)
        metrics = inspection_metrics()
        runtime = RuntimeOptions.from_settings(settings)
        predictors: dict[str, Predictor] = {}
        for model in configured_versions(settings):
            manifest = model.manifest
            name = manifest.name
            session = open_session(model, settings, runtime)
            # Before the worker says it is ready: first runs pay for kernel searches and engine builds.
            warm_up_s = session.warm_up()
            predictors[name] = Predictor(model, session, settings, pool)
            metrics.model_info.labels(name, str(manifest.version), manifest.task.value, session.provider).set(1)
            metrics.thresholds_revision.labels(name).set(thresholds.active(manifest).revision)
            log.info(
                "serving %s (%s) on %s, batch sizes %s, warmed up in %.2f s",
                manifest.ref,
                manifest.task.value,
                session.provider,
                ", ".join(map(str, session.batch_sizes or ("any",))),
                warm_up_s,
            )
        return cls(predictors, thresholds, pool)

    def get(self, name: str, version: int | None = None) -> Predictor:
        """The model's predictor; with `version`, only when that is the version loaded (404 if not)."""
        try:
            predictor = self._predictors[name]
        except KeyError:
            known = ", ".join(sorted(self._predictors))
            raise UnknownModel(f"no model named {name!r}; served models: {known}") from None
        if version is not None and version != predictor.manifest.version:
            raise UnknownModel(
                f"version {version} of {name} is not loaded; the version served is {predictor.manifest.version}"
            )
        return predictor

    def __contains__(self, name: str) -> bool:
        return name in self._predictors

    def names(self) -> list[str]:
        return sorted(self._predictors)

    def close(self) -> None:
        for predictor in self._predictors.values():
            predictor.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.thresholds.close()


def open_session(model: ModelVersion, settings: Settings, runtime: RuntimeOptions) -> InferenceSession:
    """One model version's onnxruntime session(s), at the batch sizes and input shape the settings and
    its manifest give."""
    spec = model.manifest.input
    # A model letterboxed only to its stride (`pad_to_stride`) runs at one image shape per frame size
    # its cameras send, which the start-up cannot know: the warm-up runs the full input size alone, and
    # each session (one per batch size with fixed batch shapes) runs whatever shape comes; TensorRT gets
    # an engine profile from stride x stride up to the full size. On CPU a new shape costs nothing more.
    # On the CUDA provider the first batch of a new frame size pays the kernel search, and since the
    # provider redoes its per-shape set-up whenever a run's shape differs from the one before, frame
    # sizes that alternate pay 10-60 ms at each change; cameras of one size pay it once.
    stride = spec.pad_to_stride
    return create_session(
        model.onnx_path,
        runtime,
        input_name=spec.name,
        output_names=model.manifest.output.names,
        batch_sizes=batch_buckets(settings.max_batch_size)
        if settings.fixed_batch_shapes and spec.dynamic_batch
        else None,
        image_shape=(spec.channels, spec.height, spec.width),
        smallest_image_shape=None if stride is None else (spec.channels, stride, stride),
        model_ref=(model.manifest.name, model.manifest.version),
    )


def configured_versions(settings: Settings) -> list[ModelVersion]:
    """The model versions to serve: those named in settings, else every model at its latest."""
    refs = settings.models or model_names(settings.model_store)
    if not refs:
        raise ModelStoreError(f"no models in {settings.model_store}; run `python -m export demo` to make some")
    return [load_version(settings.model_store, *parse_ref(ref)) for ref in refs]
