"""How close the served service runs to what this machine can do, on the same model and the same frames.

    python -m loadtests.benchmark                     # from the repository root; a few minutes

For each case (the classifier at 640x480 and at 2448x2048 JPEG frames, the segmenter at 640x480):

1. bare: the in-process pipeline, with the same work and the same threads as the whole service and
   nothing else: the service's own decode and preprocess functions in workers x decode_threads
   threads feeding onnxruntime with workers x inference_threads threads, in batches as large as the
   service's. Two layouts of those threads are measured (one session per worker, as the service
   has, and one session with all of them); the better one is the ceiling, in images/s;
2. served: a server started here on 127.0.0.1 with the default settings, `--concurrency` requests
   in flight (closed loop, a light aiohttp client whose keep-alive connections open one after
   another during the warm-up and serve every phase): images/s, latency p50/p95/p99, CPU time per
   image of the server's processes and of the client (steadier than images/s on a shared
   machine), and how that CPU time spreads over the worker processes;
3. served / bare;
4. single-request latency (one request at a time, p50) and p99 at half the served rate (open loop,
   Poisson arrivals at 0.5x of 2), and their ratio.

Targets: served >= 0.85 x bare; p99 at half rate <= 3 x single-request latency.
`--variant NAME:key=value,...` adds a server with other settings or the code of another commit
(`ref=COMMIT`) or folder (`code=PATH`, where this copy has no .git; see `Variant`), so that a change
can be compared before and after within one run (each server's worker count is read from the server,
whichever code it runs), or a protocol (`protocol=v2-binary`: the Open Inference Protocol with binary
tensors, as `tritonclient` sends; `v2-json`) against `/v1` on the same code, or a shadow run
(`shadow=0.5`: a candidate version, a copy of the active one, answers that share of the frames in the
background) against none, or heat maps (`heatmap=cam`: every answer asks for one) against none;
`model_store=PATH` serves a variant from another store (the one of an older commit); `--rounds N` repeats each case (bare, then every variant) and reports
medians; `--profile FOLDER` records a py-spy flame graph of one worker per saturated phase. Prints a
markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import queue
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import onnxruntime as ort
import psutil

from loadtests.frames import Station, line_frames
from loadtests.server import ROOT, RunningServer, model_samples, running_server, worker_processes
from service.config import Settings
from service.metrics import STAGES
from service.model_store import ModelVersion, load_version
from service.pipeline.decode import decode_image
from service.pipeline.preprocess import decode_target, to_batch, to_model_input
from service.pipeline.runtime import RuntimeOptions
from service.served_models import open_session

SERVED_TARGET = 0.85
LATENCY_TARGET = 3.0


def station(text: str) -> Station:
    """`--case MODEL@WIDTHxHEIGHT`, with argparse's way of refusing a bad one."""
    try:
        return Station.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


CASES = (
    Station("weld-classifier", 640, 480),
    Station("weld-classifier", 2448, 2048),
    Station("weld-segmenter", 640, 480),
)


@dataclass(frozen=True)
class Phases:
    """Seconds of each measurement; warm-ups are not counted."""

    warmup: float = 3.0
    bare: float = 10.0
    served: float = 15.0
    single: float = 8.0
    half_rate: float = 15.0

    def scaled(self, factor: float) -> Phases:
        return Phases(**{name: seconds * factor for name, seconds in asdict(self).items()})


@dataclass(frozen=True)
class Variant:
    """A server configuration: environment overrides on top of the defaults, and the code to serve.

    `NAME:key=value,...`: a lower-case key is a service setting (`max_batch_size=4` sets
    INSPECTION_MAX_BATCH_SIZE), an upper-case one any environment variable of the server, and the
    code is this checkout's unless one of these names another, so that a change can be measured
    against the code before it in the same run:
    - `ref=COMMIT`: the service as it was at that commit of this repository's history;
    - `code=PATH`: the service in that folder, a tree checked out elsewhere (where this copy has no
      git history, as on a host that received a plain copy of the working tree).
    `protocol=` says how its clients send frames (`PROTOCOLS`; default `v1`). `shadow=SHARE` runs a
    shadow run on that share of the frames, its candidate a copy of each model's served version.
    `heatmap=METHOD`: its clients ask every answer for that heat map (`/v1` only). `model_store=PATH`
    (a setting) serves that store instead of the benchmark's, e.g. the one of the commit it runs.
    """

    name: str
    env: dict[str, str] = field(default_factory=dict)
    ref: str | None = None  # the full commit id
    code: Path | None = None
    protocol: str = "v1"
    shadow: float | None = None
    heatmap: str | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, pairs = text.partition(":")
        given = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
        ref, code = given.pop("ref", None), given.pop("code", None)
        if ref is not None and code is not None:
            raise argparse.ArgumentTypeError(f"variant {name!r}: ref= or code=, not both")
        protocol = given.pop("protocol", "v1")
        shadow = given.pop("shadow", None)
        heatmap = given.pop("heatmap", None)
        if heatmap is not None and protocol != "v1":
            raise argparse.ArgumentTypeError(f"variant {name!r}: heatmap= is measured on /v1 only")
        if shadow is not None and not 0.0 < float(shadow) <= 1.0:
            raise argparse.ArgumentTypeError(f"variant {name!r}: shadow is a share of the frames, above 0 up to 1")
        if protocol not in PROTOCOLS:
            raise argparse.ArgumentTypeError(f"variant {name!r}: protocol must be one of {', '.join(PROTOCOLS)}")
        settings = {key: value for key, value in given.items() if not key.isupper()}
        unknown = set(settings) - set(Settings.model_fields)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown settings {sorted(unknown)}; see service/config.py")
        Settings(**settings)  # a bad value fails here, not in the server
        env = {f"INSPECTION_{key.upper()}": value for key, value in settings.items()}
        return cls(
            name,
            {**env, **{key: value for key, value in given.items() if key.isupper()}},
            None if ref is None else commit_of(ref),
            None if code is None else service_tree(Path(code)),
            protocol,
            None if shadow is None else float(shadow),
            heatmap,
        )


def commit_of(ref: str, repository: Path = ROOT) -> str:
    """The commit that `ref` names in `repository`'s history; refused, saying what to do instead, where
    there is no history to read."""
    if not (repository / ".git").exists() or shutil.which("git") is None:
        raise argparse.ArgumentTypeError(
            f"ref={ref} needs this repository's git history, and {repository} has none (no .git or no git: "
            f"a plain copy of the working tree?). Check the commit out where the history is, e.g. "
            f"`git archive {ref} | tar -x -C before/`, bring that folder along and pass code=before/ instead"
        )
    found = subprocess.run(
        ["git", "-C", str(repository), "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise argparse.ArgumentTypeError(f"ref {ref!r} is no commit of this repository")
    return found.stdout.strip()


def service_tree(path: Path) -> Path:
    """`path` as the root of a tree that `bentoml serve` can serve; refused where it holds no service."""
    root = path.resolve()
    if not (root / "service" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(
            f"code={path} holds no service/ package: pass the root of a checked-out tree of this repository"
        )
    return root


@dataclass
class Latencies:
    """Completed requests of one phase."""

    seconds: list[float]
    elapsed_s: float
    failures: int

    @property
    def rate(self) -> float:
        return len(self.seconds) / self.elapsed_s

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.seconds, q) * 1000) if self.seconds else float("nan")


# --- 1. the bare in-process pipeline ---------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How the bare pipeline spreads onnxruntime over the service's inference threads."""

    sessions: int
    threads_per_session: int

    @property
    def label(self) -> str:
        return f"{self.sessions}x{self.threads_per_session}"


def layouts(settings: Settings) -> list[Layout]:
    """The service's own layout (one session per worker) and one session with all the threads."""
    own = Layout(settings.workers, settings.inference_threads)
    pooled = Layout(1, settings.workers * settings.inference_threads)
    return [own] if pooled == own else [own, pooled]


@dataclass(frozen=True)
class Throughput:
    images_per_s: float
    cpu_ms_per_image: float  # CPU time of every thread or process doing the work, per image


def own_cpu_seconds() -> float:
    """User + system CPU time of this process alone (not the server it started)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


def server_cpu_seconds(server: psutil.Process) -> dict[int, float]:
    """User + system CPU time so far of the server and each process under it, by PID: their sum is
    the server's, the processes under it are its workers."""
    seconds = {}
    for member in [server, *server.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[member.pid] = times.user + times.system
    return seconds


def bare_pipeline_rate(
    version: ModelVersion, frames: list[bytes], settings: Settings, layout: Layout, phases: Phases
) -> Throughput:
    """Images/s of decode + preprocess feeding onnxruntime in this process: no HTTP, no processes.

    As many decode threads as the whole service has (workers x decode_threads); one inference thread
    per session, each taking batches of up to max_batch_size of whatever is decoded.
    """
    manifest = version.manifest
    spec = manifest.input
    runtime = replace(RuntimeOptions.from_settings(settings), threads=layout.threads_per_session)
    sessions = [open_session(version, settings, runtime) for _ in range(layout.sessions)]
    for session in sessions:
        session.warm_up()
    max_batch = settings.max_batch_size if spec.dynamic_batch else 1
    prepared: queue.Queue[np.ndarray] = queue.Queue(maxsize=2 * max_batch * layout.sessions)
    inferred = [0] * layout.sessions  # images per session; each slot written by its own thread only
    stop = threading.Event()

    def decode_frames(offset: int) -> None:
        index = offset
        while not stop.is_set():
            decoded = decode_image(
                frames[index % len(frames)],
                channels=spec.channels,
                target_size=decode_target(spec),
                max_pixels=settings.max_pixels,
            )
            tensor, _ = to_model_input(decoded, spec)
            while not stop.is_set():
                try:
                    prepared.put(tensor, timeout=0.1)
                    break
                except queue.Full:
                    continue
            index += 1

    def infer(slot: int) -> None:
        session = sessions[slot]
        while not stop.is_set():
            try:
                batch = [prepared.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < max_batch and not prepared.empty():
                batch.append(prepared.get_nowait())
            session.run(to_batch(batch, spec, session.batch_rows(len(batch))), len(batch))
            inferred[slot] += len(batch)

    threads = [
        threading.Thread(target=decode_frames, args=(i,), daemon=True)
        for i in range(settings.workers * settings.decode_threads)
    ] + [threading.Thread(target=infer, args=(i,), daemon=True) for i in range(layout.sessions)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(phases.warmup)
        before, started, cpu_before = sum(inferred), time.perf_counter(), own_cpu_seconds()
        time.sleep(phases.bare)
        images, cpu = sum(inferred) - before, own_cpu_seconds() - cpu_before
        return Throughput(images / (time.perf_counter() - started), 1000 * cpu / images)
    finally:
        stop.set()
        for thread in threads:
            thread.join()


# --- 2-4. the served service -----------------------------------------------------------------------


@contextmanager
def running_service(variant: Variant, model_store: Path, models: list[str], log_dir: Path) -> Iterator[RunningServer]:
    """`bentoml serve` on 127.0.0.1 with the variant's settings and code, every worker up; stopped by PID.
    A shadow variant serves a copy of the store with a candidate version of each model in shadow."""
    code = variant.code or ROOT
    if variant.ref is not None:
        code = export_commit(variant.ref, log_dir / f"code-{variant.name}")
    env, refs = variant.env, models
    model_store = Path(env.get("INSPECTION_MODEL_STORE", model_store))
    if variant.shadow is not None:
        model_store, refs, candidates = store_with_candidates(model_store, models, log_dir / f"store-{variant.name}")
        env = {**env, "INSPECTION_ADMIN_TOKEN": SHADOW_TOKEN}
    with running_server(log_dir, 180.0, env=env, root=code, model_store=model_store, models=",".join(refs)) as server:
        if variant.shadow is not None:
            for model, candidate in candidates.items():
                start_shadow(server.url, model, candidate, variant.shadow)
        yield server


SHADOW_TOKEN = "benchmark-shadow"


def store_with_candidates(store: Path, models: list[str], copy: Path) -> tuple[Path, list[str], dict[str, int]]:
    """A copy of `store` holding `models` with their newest version copied as the next: the store, the
    versions to serve (the newest of each) and the candidate of each."""
    refs, candidates = [], {}
    for model in models:
        newest = load_version(store, model).manifest.version
        shutil.copytree(store / model / str(newest), copy / model / str(newest))
        target = copy / model / str(newest + 1)
        shutil.copytree(store / model / str(newest), target)
        manifest = json.loads((target / "manifest.json").read_text())
        (target / "manifest.json").write_text(json.dumps({**manifest, "version": newest + 1}, indent=2))
        refs.append(f"{model}:{newest}")
        candidates[model] = newest + 1
    return copy, refs, candidates


def start_shadow(url: str, model: str, version: int, share: float) -> None:
    versions = httpx.get(f"{url}/v1/models/{model}/versions").json()
    body = {
        "version": version,
        "share": share,
        "author": "benchmark",
        "reason": "the cost of a shadow run",
        "expected_revision": versions["revision"],
    }
    answer = httpx.post(
        f"{url}/v1/models/{model}/shadow", json=body, headers={"Authorization": f"Bearer {SHADOW_TOKEN}"}, timeout=60
    )
    answer.raise_for_status()


def shadow_counts(url: str, model: str) -> str:
    """How many frames the shadow run compared, shed and failed on, in words."""
    report = httpx.get(f"{url}/v1/models/{model}/shadow").json()
    return f"shadow compared {report['compared']}, shed {report['shed']}, failed {report['failed']}"


def export_commit(commit: str, path: Path, repository: Path = ROOT) -> Path:
    """`repository`'s files at `commit`, written to `path`. `git archive` reads the history and changes
    nothing in the checkout (a worktree would be registered in it, and left there by a killed run)."""
    archive = subprocess.run(["git", "-C", str(repository), "archive", "--format=tar", commit], capture_output=True)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()}")
    path.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(path, filter="data")
    return path


@dataclass(frozen=True)
class Prepared:
    """One frame's request, built before the clients start so that building it costs them nothing."""

    url: str
    body: bytes
    headers: dict[str, str]


def prepare(protocol: str, url: str, model: str, frame: bytes, heatmap: str | None = None) -> Prepared:
    """A frame as a request of `protocol`: `v1` (the JPEG as the body; `heatmap`: asking for that heat
    map), `v2-binary` (the Open Inference Protocol with binary tensor data both ways, as `tritonclient`
    sends by default) or `v2-json` (the JPEG as base64 text in JSON, the answer in JSON)."""
    if protocol == "v1":
        query = "" if heatmap is None else f"?heatmap={heatmap}"
        return Prepared(f"{url}/v1/models/{model}/predict{query}", frame, {"Content-Type": "image/jpeg"})
    infer = f"{url}/v2/models/{model}/infer"
    if protocol == "v2-binary":
        element = struct.pack("<I", len(frame)) + frame
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": len(element)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
        return Prepared(infer, header + element, headers)
    text = base64.b64encode(frame).decode()
    body = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [text]}]}).encode()
    return Prepared(infer, body, {"Content-Type": "application/json"})


PROTOCOLS = ("v1", "v2-binary", "v2-json")


async def post_frame(client: aiohttp.ClientSession, request: Prepared) -> bool:
    async with client.post(request.url, data=request.body, headers=request.headers) as response:
        await response.read()
        return response.status == 200


def client_session(connections: int) -> aiohttp.ClientSession:
    """At most `connections` keep-alive connections, kept from one phase to the next, as cameras keep theirs."""
    connector = aiohttp.TCPConnector(limit=connections)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def closed_loop(
    client: aiohttp.ClientSession, frames: list[Prepared], concurrency: int, seconds: float, ramp_s: float = 0.0
) -> Latencies:
    """`concurrency` clients, each sending its next frame as soon as the previous answer arrives.

    With `ramp_s`, the clients start one after another over that time, each opening its connection
    while the others already load the server. Opened in one burst, the connections would all go to
    one worker process (its event loop accepts every pending connection at once) and stay there.
    """
    latencies: list[float] = []
    failures = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def client_loop(offset: int) -> None:
        nonlocal failures
        await asyncio.sleep(ramp_s * offset / concurrency)
        index = offset
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            ok = await post_frame(client, frames[index % len(frames)])
            done = time.perf_counter()
            if done <= deadline:  # an answer after the window is not counted
                if ok:
                    latencies.append(done - sent)
                else:
                    failures += 1
            index += 1

    await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
    return Latencies(latencies, seconds, failures)


async def open_loop(
    client: aiohttp.ClientSession, frames: list[Prepared], rate: float, seconds: float, seed: int = 0
) -> Latencies:
    """Poisson arrivals at `rate`/s, each request sent at its time whatever is still in flight.

    Latency counts from the scheduled arrival, so a late client does not hide queueing.
    """
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=int(rate * seconds * 2) + 10)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < seconds]
    latencies: list[float] = []
    failures = 0
    started = time.perf_counter()

    async def request(index: int, due: float) -> None:
        nonlocal failures
        ok = await post_frame(client, frames[index % len(frames)])
        if ok:
            latencies.append(time.perf_counter() - due)
        else:
            failures += 1

    tasks = []
    for index, offset in enumerate(arrivals):
        due = started + float(offset)
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(request(index, due)))
    await asyncio.gather(*tasks)
    return Latencies(latencies, time.perf_counter() - started, failures)


async def stage_totals(url: str, model: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of every stage histogram and of the batch size, from the server's /metrics."""
    totals: dict[str, list[float]] = {}
    for sample in await model_samples(url, model, "inspection_stage_duration_seconds", "inspection_batch_size"):
        entry = totals.setdefault(sample.labels.get("stage", "batch_size"), [0.0, 0.0])
        if sample.name.endswith("_sum"):
            entry[0] = sample.value
        elif sample.name.endswith("_count"):
            entry[1] = sample.value
    return {key: (total, count) for key, (total, count) in totals.items()}


def mean_between(before: dict, after: dict, key: str) -> float:
    total = after.get(key, (0.0, 0.0))[0] - before.get(key, (0.0, 0.0))[0]
    count = after.get(key, (0.0, 0.0))[1] - before.get(key, (0.0, 0.0))[1]
    return total / count if count else float("nan")


@dataclass
class ServedResult:
    variant: str
    workers: int  # worker processes the server ran, read from the server
    served_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu_ms_per_image: float
    client_cpu_ms_per_image: float
    stage_ms: dict[str, float]  # mean per request at saturation, from the server's histograms
    mean_batch_size: float
    single_p50_ms: float
    half_rate: float
    half_rate_p99_ms: float
    failures: int
    worker_cpu_shares: list[float]  # of the server's CPU time at saturation, per worker process
    gpu_busy_pct: float | None  # mean GPU utilisation at saturation; None without an NVIDIA GPU

    @property
    def latency_ratio(self) -> float:
        return self.half_rate_p99_ms / self.single_p50_ms


@contextmanager
def gpu_utilisation(interval_s: float = 0.05) -> Iterator[list[float]]:
    """Samples the GPU's utilisation (percent of time a kernel ran, NVML) into the list it yields, every
    `interval_s`, while the block runs; the list stays empty where there is no NVIDIA GPU or NVML."""
    samples: list[float] = []
    try:
        import pynvml

        pynvml.nvmlInit()
        device = pynvml.nvmlDeviceGetHandleByIndex(Settings().gpu_device)
    except Exception:  # noqa: BLE001 - no NVML library, no driver, no device: nothing to sample
        yield samples
        return
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(device).gpu))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        stop.set()
        sampler.join()
        pynvml.nvmlShutdown()


@contextmanager
def profiling(server: psutil.Process, seconds: float, svg: Path | None) -> Iterator[None]:
    """With `svg`, py-spy samples one worker process (every thread, 100 Hz, without pausing it) for
    `seconds` and writes a flame graph there; otherwise nothing."""
    if svg is None:
        yield
        return
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    py_spy = shutil.which("py-spy", path=search)
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: pip install -e '.[loadtest]'")
    worker = min(member.pid for member in server.children(recursive=True))
    svg.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy, "record", "--pid", str(worker), "--duration", str(max(1, int(seconds))), "--rate", "100"]
    sampler = subprocess.Popen(
        [*command, "--nonblocking", "--format", "flamegraph", "--output", str(svg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield
    finally:
        _, errors = sampler.communicate(timeout=seconds + 60)
        if sampler.returncode != 0:
            print(f"py-spy could not profile worker {worker}: {errors.strip()}", file=sys.stderr)
        else:
            print(f"profile of worker {worker}: {svg}", flush=True)


async def measure_served(
    url: str,
    server: psutil.Process,
    case: Station,
    frames: list[bytes],
    concurrency: int,
    phases: Phases,
    variant: str,
    profile_svg: Path | None = None,
    protocol: str = "v1",
    heatmap: str | None = None,
) -> ServedResult:
    requests = [prepare(protocol, url, case.model, frame, heatmap) for frame in frames]
    async with client_session(concurrency) as client:
        await closed_loop(client, requests, concurrency, phases.warmup, ramp_s=phases.warmup / 2)
        stages_before = await stage_totals(url, case.model)
        server_before, client_before = server_cpu_seconds(server), own_cpu_seconds()
        with profiling(server, phases.served, profile_svg), gpu_utilisation() as gpu_busy:
            saturated = await closed_loop(client, requests, concurrency, phases.served)
        server_after, client_cpu = server_cpu_seconds(server), own_cpu_seconds() - client_before
        stages_after = await stage_totals(url, case.model)
        single = await closed_loop(client, requests, 1, phases.single)
        half = await open_loop(client, requests, saturated.rate / 2, phases.half_rate)
    server_cpu = sum(server_after.values()) - sum(server_before.values())
    worker_cpu = [cpu - server_before.get(pid, 0.0) for pid, cpu in server_after.items() if pid != server.pid]
    answered = len(saturated.seconds)
    return ServedResult(
        variant=variant,
        workers=len(worker_processes(server)),
        served_rate=saturated.rate,
        p50_ms=saturated.percentile_ms(50),
        p95_ms=saturated.percentile_ms(95),
        p99_ms=saturated.percentile_ms(99),
        server_cpu_ms_per_image=1000 * server_cpu / answered,
        client_cpu_ms_per_image=1000 * client_cpu / answered,
        stage_ms={stage: round(1000 * mean_between(stages_before, stages_after, stage), 2) for stage in STAGES},
        mean_batch_size=mean_between(stages_before, stages_after, "batch_size"),
        single_p50_ms=single.percentile_ms(50),
        half_rate=saturated.rate / 2,
        half_rate_p99_ms=half.percentile_ms(99),
        failures=saturated.failures + single.failures + half.failures,
        worker_cpu_shares=sorted((round(cpu / sum(worker_cpu), 2) for cpu in worker_cpu), reverse=True),
        gpu_busy_pct=statistics.fmean(gpu_busy) if gpu_busy else None,
    )


# --- the run -----------------------------------------------------------------------------------------


MEDIAN_FIELDS = (
    "workers",
    "bare_rate",
    "bare_cpu_ms_per_image",
    "served_rate",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "server_cpu_ms_per_image",
    "client_cpu_ms_per_image",
    "mean_batch_size",
    "single_p50_ms",
    "half_rate",
    "half_rate_p99_ms",
    "served_ratio",
    "latency_ratio",
)


def summary_row(case: Station, variant: str, rounds: list[dict]) -> dict:
    """One table row: the median of each figure over the rounds (ratios taken within each round), the
    most uneven split of CPU over the workers, every failure, and the rounds themselves."""
    return {
        "model": case.model,
        "frames": f"{case.width}x{case.height} JPEG",
        "variant": variant,
        **{name: statistics.median(r[name] for r in rounds) for name in MEDIAN_FIELDS},
        "stage_ms": {stage: statistics.median(r["stage_ms"][stage] for r in rounds) for stage in STAGES},
        "worker_cpu_shares": max((r["worker_cpu_shares"] for r in rounds), key=max),
        "gpu_busy_pct": statistics.median(busy)
        if (busy := [r["gpu_busy_pct"] for r in rounds if r["gpu_busy_pct"] is not None])
        else None,
        "failures": sum(r["failures"] for r in rounds),
        "rounds": rounds,
    }


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| model | frames | server | workers | bare img/s | served img/s | served/bare | p50 ms | p95 ms | p99 ms "
        "| CPU ms/img bare | CPU ms/img server+client | worker CPU shares | single p50 ms | p99 at 0.5x ms "
        "| p99(0.5x)/single | GPU busy % |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['frames']} | {row['variant']} | {row['workers']:.0f} "
            f"| {row['bare_rate']:.1f} | {row['served_rate']:.1f} "
            f"| {row['served_ratio']:.2f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} "
            f"| {row['bare_cpu_ms_per_image']:.2f} "
            f"| {row['server_cpu_ms_per_image']:.2f} + {row['client_cpu_ms_per_image']:.2f} "
            f"| {'/'.join(f'{share:.2f}' for share in row['worker_cpu_shares'])} "
            f"| {row['single_p50_ms']:.1f} | {row['half_rate_p99_ms']:.1f} | {row['latency_ratio']:.2f} "
            f"| {'-' if row['gpu_busy_pct'] is None else format(row['gpu_busy_pct'], '.0f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--case",
        dest="cases",
        action="append",
        type=station,
        help="MODEL@WIDTHxHEIGHT to measure instead of the standard cases; may be repeated.",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="Requests in flight for the served throughput.")
    parser.add_argument("--time-scale", type=float, default=1.0, help="Multiply every phase's duration.")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="Measure each case this many times (bare, then every variant) and report medians.",
    )
    parser.add_argument(
        "--variant",
        action="append",
        type=Variant.parse,
        default=[],
        help="NAME:key=value,... another server configuration, measured after the default one (see Variant).",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FOLDER",
        help="Also record a py-spy flame graph of one worker during each saturated phase, into FOLDER "
        "(costs that worker a little CPU: compare figures from runs without it).",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "loadtests" / "results" / "benchmark.json")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    args = parser.parse_args(argv)

    cases = args.cases or list(CASES)
    phases = Phases().scaled(args.time_scale)
    variants = [Variant("default"), *args.variant]
    settings = Settings(model_store=args.model_store)
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)

    frames = {(case.width, case.height): line_frames(case.width, case.height) for case in cases}
    rows: list[dict] = []
    workers: dict[str, int] = {}
    models = sorted({case.model for case in cases})
    with tempfile.TemporaryDirectory(prefix="benchmark-") as scratch, ExitStack() as servers:
        # Every variant's server is up (idle ones cost nothing). Each round of a case measures the bare
        # pipeline and then every variant, one after another, so that they see the machine in the
        # same state; the figures of a row are medians over the rounds.
        running = []
        for variant in variants:
            server = servers.enter_context(running_service(variant, args.model_store, models, Path(scratch)))
            # Read from the server: another commit's code, or this host, may choose another count than ours.
            workers[variant.name] = len(server.workers())
            print(f"server [{variant.name}]: {workers[variant.name]} workers", flush=True)
            running.append((variant, server.url, psutil.Process(server.process.pid)))
        for case in cases:
            case_frames = frames[(case.width, case.height)]
            version = load_version(args.model_store, case.model)
            rounds: dict[str, list[dict]] = {variant.name: [] for variant in variants}
            for round_number in range(1, args.rounds + 1):
                bare = {
                    layout.label: bare_pipeline_rate(version, case_frames, settings, layout, phases)
                    for layout in layouts(settings)
                }
                ceiling = max(bare.values(), key=lambda t: t.images_per_s)  # the faster layout
                shown = ", ".join(
                    f"{t.images_per_s:.1f} img/s ({t.cpu_ms_per_image:.2f} CPU ms/img) with sessions x threads {label}"
                    for label, t in bare.items()
                )
                print(f"round {round_number} bare {case.label}: {shown}", flush=True)
                for variant, url, server in running:
                    svg = None
                    if args.profile is not None:
                        svg = args.profile / f"{case.model}-{case.width}x{case.height}-{variant.name}.svg"
                    served = asyncio.run(
                        measure_served(
                            url,
                            server,
                            case,
                            case_frames,
                            args.concurrency,
                            phases,
                            variant.name,
                            profile_svg=svg,
                            protocol=variant.protocol,
                            heatmap=variant.heatmap,
                        )
                    )
                    ratio = served.served_rate / ceiling.images_per_s
                    rounds[variant.name].append(
                        {
                            "bare_rate": ceiling.images_per_s,
                            "bare_cpu_ms_per_image": ceiling.cpu_ms_per_image,
                            "bare_by_layout": {label: asdict(t) for label, t in bare.items()},
                            **asdict(served),
                            "served_ratio": ratio,
                            "latency_ratio": served.latency_ratio,
                        }
                    )
                    print(
                        f"round {round_number} served {case.label} [{variant.name}]: {served.served_rate:.1f} img/s "
                        f"({ratio:.2f} of bare), p99 {served.p99_ms:.1f} ms, "
                        f"CPU ms/img {served.server_cpu_ms_per_image:.2f} server "
                        f"+ {served.client_cpu_ms_per_image:.2f} client; "
                        f"p99 at half rate {served.half_rate_p99_ms:.1f} ms vs single {served.single_p50_ms:.1f} ms; "
                        f"stages ms {served.stage_ms}, mean batch {served.mean_batch_size:.2f}, "
                        f"CPU shares of the workers {served.worker_cpu_shares}"
                        + (f"; {shadow_counts(url, case.model)}" if variant.shadow is not None else ""),
                        flush=True,
                    )
            for variant in variants:
                rows.append(summary_row(case, variant.name, rounds[variant.name]))

    load_after = os.getloadavg()
    table = markdown_table(rows)
    print()
    print(table)
    report = {
        "command": "python -m loadtests.benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "profiled": args.profile is not None,
        "phases_s": asdict(phases),
        "settings": {
            "provider": RuntimeOptions.from_settings(settings).provider,
            "fixed_batch_shapes": settings.fixed_batch_shapes,
            "workers": settings.workers,
            "inference_threads": settings.inference_threads,
            "decode_threads": settings.decode_threads,
            "max_batch_size": settings.max_batch_size,
            "batch_window_ms": settings.batch_window_ms,
        },
        "variants": {
            variant.name: {
                "env": variant.env,
                "ref": variant.ref,
                "code": None if variant.code is None else str(variant.code),
                "workers": workers.get(variant.name),
                "protocol": variant.protocol,
                "shadow": variant.shadow,
                "heatmap": variant.heatmap,
            }
            for variant in variants
        },
        "targets": {"served_over_bare_at_least": SERVED_TARGET, "half_rate_p99_over_single_at_most": LATENCY_TARGET},
        "results": rows,
        "table": table,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    failures = sum(row["failures"] for row in rows)
    if failures:
        print(f"{failures} requests failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
