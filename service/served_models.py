"""The models this worker serves: loaded from the model store at start-up, then as the database says.

A model may have several versions loaded (`INSPECTION_MODELS=weld-classifier:2,weld-classifier:1`):
the first listed is its active version, which answers requests that name none; the others answer
requests that name them (the Open Inference Protocol's `/v2/models/{model}/versions/{version}`),
and one may be its shadow run's candidate (`service.lifecycle.shadow`). Every loaded version of a
model has its task and defect classes, since they share its thresholds.

At run time the worker follows the model's lifecycle revision (`follow`, called by
`service.lifecycle.watcher`): it loads and warms up the versions the revision wants beside those it
serves, switches the active one, and retires those no longer wanted. A retired version answers the
requests that already hold it (`held`), and releases its sessions once the last of them is answered;
a request that meets the switch gets the version switched to.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from service.config import Settings
from service.errors import UnknownModel, VersionRefused
from service.frames import FrameStore, RejectedFrames
from service.lifecycle.shadow import ShadowRun
from service.lifecycle.store import Activation, ActivationKind, VersionStore
from service.metrics import inspection_metrics
from service.model_store import ModelStoreError, ModelVersion, load_version, model_names, parse_ref
from service.pipeline.predictor import Predictor
from service.pipeline.providers import choose_provider, probe_host_gpu, unused_gpu
from service.pipeline.runtime import InferenceSession, RuntimeOptions, batch_buckets, create_session
from service.thresholds.store import ThresholdStore

log = logging.getLogger(__name__)


class ServedModels:
    def __init__(
        self,
        versions: dict[str, dict[int, Predictor]],
        thresholds: ThresholdStore,
        pool: ThreadPoolExecutor,
        settings: Settings | None = None,
    ) -> None:
        """`versions`: per model, its loaded versions, the active one first."""
        # Replaced whole, never changed in place: a request reads them without a lock while a version
        # is loaded or switched to in another thread.
        self._versions = versions  # an unloaded model: no versions
        self._active = {name: next(iter(loaded)) for name, loaded in versions.items()}
        self._manifests = {name: loaded[self._active[name]].manifest for name, loaded in versions.items()}
        self._shadows: dict[str, ShadowRun] = {}
        self._ended_shadows: list[ShadowRun] = []
        self.thresholds = thresholds
        self._pool = pool
        self._settings = settings
        self._loading = threading.Lock()  # one version loads at a time in a worker
        self._following = threading.Lock()  # the watcher and a change's route follow one at a time
        # Which version of each model is active, kept beside the thresholds (`service.lifecycle`).
        self.lifecycle = VersionStore(thresholds.engine)
        configured = settings or Settings()
        self.frames = FrameStore(thresholds.engine, configured.kept_frames_max_bytes)
        # Live frames rejected, kept for review when asked for (`INSPECTION_KEEP_REJECTED_FRAMES`).
        per_model = configured.keep_rejected_frames
        self.rejected = RejectedFrames(self.frames, per_model) if per_model else None

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
        versions: dict[str, dict[int, Predictor]] = {}
        for model in configured_versions(settings):
            versions.setdefault(model.manifest.name, {})[model.manifest.version] = _open(model, settings, pool)
        served = cls(versions, thresholds, pool, settings)
        for name in served.names():
            served._show_active(name)
        return served

    def get(self, name: str, version: int | None = None) -> Predictor:
        """The model's active version; with `version`, that version when it is loaded (404 if not)."""
        try:
            loaded = self._versions[name]
        except KeyError:
            known = ", ".join(sorted(self._versions))
            raise UnknownModel(f"no model named {name!r}; served models: {known}") from None
        if not loaded:
            raise UnknownModel(f"{name} is unloaded; load it with POST /v1/models/{name}/load")
        if version is None:
            predictor = loaded.get(self._active[name])
            if predictor is None:  # switched between the two reads: the versions are read again
                predictor = self._versions[name].get(self._active[name])
            if predictor is None:  # a model coming back from unloaded, its version not yet switched to
                raise UnknownModel(f"{name} is being loaded; retry shortly")
            return predictor
        try:
            return loaded[version]
        except KeyError:
            shown = ", ".join(map(str, sorted(loaded)))
            raise UnknownModel(
                f"version {version} of {name} is not loaded; loaded: {shown} (active: {self._active[name]})"
            ) from None

    @contextmanager
    def held(self, name: str, version: int | None = None) -> Iterator[Predictor]:
        """The version that answers a request (as `get`), held until the request is answered: retired
        meanwhile, it is released after. A request naming no version that meets a switch gets the
        version switched to, never the one the switch has just released."""
        predictor = self.get(name, version)
        while not predictor.hold():  # released between the two: retired by a switch or an unload
            replaced = self.get(name, version)  # 404 if the version or the model is gone
            if replaced is predictor:
                raise UnknownModel(f"version {predictor.manifest.version} of {name} was just unloaded")
            predictor = replaced
        try:
            yield predictor
        finally:
            predictor.let_go()

    def versions(self, name: str) -> list[int]:
        """The model's loaded versions, in order (none when it is unloaded)."""
        self._known(name)
        return sorted(self._versions[name])

    def active_version(self, name: str) -> int:
        """The model's active version, also while it is unloaded (the one it comes back with)."""
        self._known(name)
        return self._active[name]

    def state(self, name: str) -> Activation:
        """The model's lifecycle revision in force; on its first use, what this worker serves becomes revision 1."""
        active = self.active_version(name)
        others = tuple(v for v in sorted(self._versions[name]) if v != active)
        return self.lifecycle.current(name, active, served=bool(self._versions[name]), loaded=others)

    def shadow(self, name: str) -> ShadowRun | None:
        """The model's shadow run in force in this worker, if any."""
        return self._shadows.get(name)

    def load_version(self, name: str, version: int) -> Predictor:
        """`version` of a served model loaded and warmed up beside the others (blocking: call it off the
        event loop), or the one already loaded. Refused (`VersionRefused`) when it cannot go live: not in the
        store, a manifest its graph does not follow, a session that fails or runs on another provider,
        or classes the model's thresholds cannot follow; nothing of it stays loaded then."""
        if self._settings is None:
            raise RuntimeError("these models were not loaded from settings; they cannot load more")
        with self._loading:
            loaded = self._versions.get(name, {})
            if version in loaded:
                return loaded[version]
            try:
                model = load_version(self._settings.model_store, name, version)
            except ModelStoreError as exc:
                raise VersionRefused(f"{name}:{version} cannot go live: {exc}") from None
            manifest = model.manifest
            active = self._manifests.get(name, manifest)
            if (manifest.task, manifest.defect_classes) != (active.task, active.defect_classes):
                raise VersionRefused(
                    f"{manifest.ref} cannot go live: its thresholds would not follow. It is a {manifest.task} model "
                    f"with defect classes {manifest.defect_classes}; {active.ref} is a {active.task} model with "
                    f"{active.defect_classes}, and a model's versions share its thresholds"
                )
            try:
                predictor = _open(model, self._settings, self._pool, "loaded")
            except Exception as exc:  # whatever the graph or the provider says: the version is refused
                log.warning("%s refused: %s", manifest.ref, exc)
                raise VersionRefused(f"{manifest.ref} cannot go live: it failed to load or warm up: {exc}") from None
            self._versions = {**self._versions, name: {**self._versions.get(name, {}), version: predictor}}
            self._manifests.setdefault(name, manifest)
            return predictor

    def switch(self, name: str, version: int) -> None:
        """Make a loaded version the one that answers requests naming none; requests under way finish
        on the version they started with."""
        if version not in self._versions.get(name, {}):
            raise RuntimeError(f"{name}:{version} is not loaded; load it first")
        if self._active.get(name) != version:
            self._active = {**self._active, name: version}
            self._manifests = {**self._manifests, name: self._versions[name][version].manifest}
            log.info("%s:%d is now active", name, version)
        self._show_active(name)

    def follow(self, state: Activation, shadow_run: int | None = None) -> None:
        """Serve what the model's lifecycle revision `state` says: its versions loaded (each warmed up
        beside those serving), its active version switched to, its shadow run (started by revision
        `shadow_run`) in force, and every other version retired. Raises `VersionRefused`, changing
        nothing, when its active version cannot go live; another wanted version that cannot is left
        out, and logged."""
        with self._following:
            self._follow(state, shadow_run)

    def _follow(self, state: Activation, shadow_run: int | None) -> None:
        name = state.model
        wanted = state.wanted
        if state.served:
            self.load_version(name, state.version)
            for version in sorted(wanted - {state.version}):
                try:
                    self.load_version(name, version)
                except VersionRefused as exc:
                    log.error("%s revision %d: %s", name, state.revision, exc)
                    wanted.discard(version)
            self.switch(name, state.version)
        self._follow_shadow(state, shadow_run if state.shadow is not None and state.shadow.version in wanted else None)
        with self._loading:
            loaded = self._versions.get(name, {})
            retired = [predictor for version, predictor in loaded.items() if version not in wanted]
            if retired:
                self._versions = {**self._versions, name: {v: p for v, p in loaded.items() if v in wanted}}
        for predictor in retired:
            log.info("unloading %s", predictor.manifest.ref)
            predictor.retire()
            _show_loaded(predictor, False)
        if name not in self._versions:  # a model this worker never served, unloaded
            self._versions = {**self._versions, name: {}}
        if name not in self._active:
            self._active = {**self._active, name: state.version}

    def _follow_shadow(self, state: Activation, run: int | None) -> None:
        name = state.model
        current = self._shadows.get(name)
        if current is not None and (run is None or current.run != run):
            self._shadows = {n: r for n, r in self._shadows.items() if n != name}
            current.stop()
            self._ended_shadows.append(current)  # its last counts are saved at the next flush
        if run is not None and (current is None or current.run != run):
            assert state.shadow is not None
            candidate = self._versions[name][state.shadow.version]
            shadow = ShadowRun(
                run,
                state.shadow,
                candidate,
                self.lifecycle,
                self.frames,
                max_in_flight=(self._settings or Settings()).max_batch_size,
            )
            self._shadows = {**self._shadows, name: shadow}
            log.info("shadow run %d: %s on %.0f%% of frames", run, candidate.manifest.ref, 100 * state.shadow.share)

    def flush_shadows(self, server: str, worker: int) -> None:
        """Save this worker's counts of every shadow run (blocking)."""
        with self._following:
            ended = self._ended_shadows
            # An ended run is saved until its last frames are counted.
            self._ended_shadows = [run for run in ended if not run.finished]
        for run in [*ended, *self._shadows.values()]:
            run.flush(server, worker)

    def carry_thresholds(self, change: Activation) -> None:
        """The model's thresholds carry over to the version `change` made active, recorded as a thresholds
        revision (`carried`) by its author, with its reason."""
        how = "rolled back to" if change.kind is ActivationKind.ROLLBACK else "activated"
        self.thresholds.carry_over(
            self.get(change.model, change.version).manifest,
            author=change.author,
            reason=f"version {change.version} {how}: {change.reason}",
        )

    def _show_active(self, name: str) -> None:
        metrics = inspection_metrics()
        manifest = self.get(name).manifest
        metrics.active_version.labels(name).set(manifest.version)
        metrics.thresholds_revision.labels(name).set(self.thresholds.active(manifest).revision)

    def _known(self, name: str) -> None:
        if name not in self._versions:
            known = ", ".join(sorted(self._versions))
            raise UnknownModel(f"no model named {name!r}; served models: {known}")

    def __contains__(self, name: str) -> bool:
        return name in self._versions

    def names(self) -> list[str]:
        """The models this worker serves (loaded)."""
        return sorted(name for name, loaded in self._versions.items() if loaded)

    def known(self) -> list[str]:
        """Every model this worker has served, loaded or unloaded now."""
        return sorted(self._versions)

    def close(self) -> None:
        if self.rejected is not None:
            self.rejected.close()
        for run in self._shadows.values():
            run.stop()
        for loaded in self._versions.values():
            for predictor in loaded.values():
                predictor.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.thresholds.close()


def _open(model: ModelVersion, settings: Settings, pool: ThreadPoolExecutor, verb: str = "serving") -> Predictor:
    """A model version's predictor, its session warmed up and a blank frame answered (`check_answers`);
    `verb` says so in the log."""
    manifest = model.manifest
    session = open_session(model, settings, RuntimeOptions.from_settings(settings))
    # Before it answers anything: first runs pay for kernel searches and engine builds.
    warm_up_s = session.warm_up()
    predictor = Predictor(model, session, settings, pool)
    try:
        predictor.check_answers()
    except Exception as exc:
        predictor.close()
        session.release()
        raise RuntimeError(f"{manifest.ref}: its manifest cannot read the graph's outputs: {exc}") from exc
    _show_loaded(predictor, True)
    log.info(
        "%s %s (%s) on %s, batch sizes %s, warmed up in %.2f s",
        verb,
        manifest.ref,
        manifest.task.value,
        session.provider,
        ", ".join(map(str, session.batch_sizes or ("any",))),
        warm_up_s,
    )
    return predictor


def _show_loaded(predictor: Predictor, loaded: bool) -> None:
    manifest = predictor.manifest
    inspection_metrics().model_info.labels(
        manifest.name, str(manifest.version), manifest.task.value, predictor.provider
    ).set(1 if loaded else 0)


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
        extra_output_names=[cam.features] if (cam := model.manifest.activation_map) else None,
        batch_sizes=batch_buckets(settings.max_batch_size)
        if settings.fixed_batch_shapes and spec.dynamic_batch
        else None,
        image_shape=(spec.channels, spec.height, spec.width),
        smallest_image_shape=None if stride is None else (spec.channels, stride, stride),
        model_ref=(model.manifest.name, model.manifest.version),
    )


def configured_versions(settings: Settings) -> list[ModelVersion]:
    """The model versions to serve: those named in settings (the first of each model its active one),
    else every model at its latest. Several versions of one model must share its task and defect classes."""
    refs = settings.models or model_names(settings.model_store)
    if not refs:
        raise ModelStoreError(f"no models in {settings.model_store}; run `python -m export demo` to make some")
    found = [load_version(settings.model_store, *parse_ref(ref)) for ref in refs]
    first: dict[str, ModelVersion] = {}
    seen: set[str] = set()
    for model in found:
        manifest = model.manifest
        if manifest.ref in seen:
            raise ModelStoreError(f"{manifest.ref} is named twice in INSPECTION_MODELS")
        seen.add(manifest.ref)
        active = first.setdefault(manifest.name, model).manifest
        if (manifest.task, manifest.defect_classes) != (active.task, active.defect_classes):
            raise ModelStoreError(
                f"{manifest.ref} cannot be loaded beside {active.ref}: a model's versions share its thresholds, "
                f"so they need one task and the same defect classes ({manifest.task} {manifest.defect_classes} "
                f"against {active.task} {active.defect_classes})"
            )
    return found
