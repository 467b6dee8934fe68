"""One command for a GPU host: what the service gets out of its GPU, measured and written as one report.

    python -m loadtests.gpu_check                     # from the repository root; at most ~7.5 minutes
    python -m loadtests.gpu_check --out FOLDER        # or `make gpu-check`

Four phases, each bounded in time and printed as it ends:

1. probe: the NVIDIA device and its driver, the GPU providers' libraries, the provider the service's
   `auto` takes here and the process layout it derives for this host;
2. batch shapes: `python -m loadtests.batch_shapes`, each demo model alone, batches of changing size
   against fixed batch shapes;
3. served: `python -m loadtests.benchmark`, every demo model at 640x480 frames, the default settings,
   short phases: images/s against the bare pipeline, p50/p99, the server's CPU per image, GPU busy;
4. gpu tests: `pytest -m gpu`.

Phases 2-4 are the existing tools run as subprocesses, so that a phase that hangs is stopped at its
budget (its servers with it) and each holds its own CUDA context. Writes gpu-check.md (its first
table is the served figures, ready for the docs) and gpu-check.json into `--out`, beside each
phase's own output and log. On a host where the CUDA provider cannot run, it says why and exits 0
without measuring or writing anything: there are no GPU figures to report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path

import onnxruntime as ort

from loadtests import batch_shapes
from loadtests.benchmark import Phases
from loadtests.server import MODEL_STORE, ROOT, kill_tree
from service.config import Settings, usable_cpus
from service.model_store import model_names
from service.pipeline.providers import HostGpu, Provider, choose_provider, probe_host_gpu, why_no_gpu

FRAME = (640, 480)  # the line cameras' frames, as in the benchmark's standard cases
STOP_GRACE_S = 20.0  # after SIGINT, for a phase to stop the servers it started
PHASE_OUTPUTS = ("batch-shapes.json", "benchmark.json", "gpu.xml")


def nvidia_device() -> dict[str, object]:
    """The GPU's name and memory: from NVML where nvidia-ml-py is installed, else from nvidia-smi."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(Settings().gpu_device)
            name, memory = _text(pynvml.nvmlDeviceGetName(handle)), pynvml.nvmlDeviceGetMemoryInfo(handle).total
            return {"name": name, "memory_mib": memory // 2**20}
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no nvidia-ml-py, or NVML cannot start: ask nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        query = [smi, f"--id={Settings().gpu_device}", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
        found = subprocess.run(query, capture_output=True, text=True, timeout=30)
        if found.returncode == 0 and found.stdout.strip():
            name, memory = (part.strip() for part in found.stdout.splitlines()[0].split(","))
            return {"name": name, "memory_mib": int(memory)}
    return {"name": None, "memory_mib": None}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def probe(host: HostGpu) -> dict[str, object]:
    """The host as the service sees it at start-up: device, driver, providers, and the defaults it derives."""
    settings = Settings()
    return {
        "device": nvidia_device(),
        "driver": None if host.driver is None else str(host.driver),
        "tensorrt": host.tensorrt,
        "onnxruntime": ort.__version__,
        "providers_built": sorted(host.built),
        "libraries_missing": dict(host.missing),
        "auto_provider": choose_provider(Provider.AUTO, host),
        "cpus": usable_cpus(),
        "layout": {
            "workers": settings.workers,
            "decode_threads": settings.decode_threads,
            "inference_threads": settings.inference_threads,
            "fixed_batch_shapes": settings.fixed_batch_shapes,
            "max_batch_size": settings.max_batch_size,
        },
    }


# --- phases 2-4: the existing tools, each in a subprocess with a budget --------------------------------


@dataclass(frozen=True)
class PhaseRun:
    name: str
    status: str  # "ok", "failed (exit N)" or "timed out"
    seconds: float
    budget_s: float
    log: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def module(name: str, *arguments: object) -> list[str]:
    """The command that runs module `name` with this Python."""
    return [sys.executable, "-m", name, *map(str, arguments)]


def run_phase(name: str, command: list[str], budget_s: float, log: Path) -> PhaseRun:
    """`command` from the repository root, its output into `log`; stopped at `budget_s`."""
    started = time.monotonic()
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            # A check started in the background (`cmd &` in a script) passes SIGINT on ignored, and Python
            # then never raises KeyboardInterrupt: the phase could not be stopped the gentle way.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            code = process.wait(timeout=budget_s)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            stop_phase(process)
            status = "timed out"
    run = PhaseRun(name, status, round(time.monotonic() - started, 1), budget_s, log.name)
    print(f"[{name}] {run.status} in {run.seconds:.0f} s (budget {budget_s:.0f} s); log: {log}", flush=True)
    if not run.ok:  # where only the end of the output comes back (a remote run), the cause is in it
        print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:]), flush=True)
    return run


def stop_phase(process: subprocess.Popen) -> None:
    """SIGINT first: the benchmark and pytest stop the servers they started as they unwind (SIGTERM
    would end them at once and leave their servers serving); whatever is left then is killed."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        kill_tree(process)


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def served_table(benchmark: dict) -> str:
    """The benchmark's figures that matter on a GPU, one row per model: the docs' GPU table."""
    provider = benchmark["settings"]["provider"]
    lines = [
        "| model | frames | provider | workers | served img/s | bare img/s | served/bare | p50 ms | p99 ms "
        "| server CPU ms/img | GPU busy % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in benchmark["results"]:
        busy = "-" if row["gpu_busy_pct"] is None else f"{row['gpu_busy_pct']:.0f}"
        lines.append(
            f"| {row['model']} | {row['frames']} | {provider} | {row['workers']:.0f} | {row['served_rate']:,.0f} "
            f"| {row['bare_rate']:,.0f} | {row['served_ratio']:.2f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} "
            f"| {row['server_cpu_ms_per_image']:.2f} | {busy} |"
        )
    return "\n".join(lines)


def without_rounds(row: dict) -> dict:
    """A benchmark row without its rounds (those stay in benchmark.json)."""
    return {key: value for key, value in row.items() if key != "rounds"}


def junit_outcomes(junit: Path) -> dict[str, str]:
    """Each test's outcome from pytest's JUnit XML: passed, failed, or skipped with pytest's reason."""
    outcomes = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        skipped = case.find("skipped")
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[name] = "failed"
        elif skipped is not None:
            outcomes[name] = f"skipped: {skipped.get('message', '')}"
        else:
            outcomes[name] = "passed"
    return outcomes


def tests_summary(outcomes: dict[str, str]) -> str:
    counts = {kind: sum(outcome.startswith(kind) for outcome in outcomes.values()) for kind in ("passed", "failed")}
    skipped = len(outcomes) - sum(counts.values())
    lines = [f"{counts['passed']} passed, {counts['failed']} failed, {skipped} skipped"]
    lines += [f"- `{name}`: {outcome}" for name, outcome in outcomes.items() if outcome != "passed"]
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------------------


def report_markdown(host: dict, phases: list[PhaseRun], benchmark: dict | None, timings: list, tests: str) -> str:
    device = host["device"]
    layout = host["layout"]
    fixed = "on" if layout["fixed_batch_shapes"] else "off"
    lines = [
        f"# GPU check: {device['name'] or 'NVIDIA GPU'}, driver {host['driver'] or 'unknown'}",
        "",
        f"{time.strftime('%Y-%m-%d')}, `python -m loadtests.gpu_check`: {host['cpus']} cores, onnxruntime "
        f"{host['onnxruntime']}; `auto` takes {host['auto_provider']}; the layout derived for this host: "
        f"workers {layout['workers']}, decode threads {layout['decode_threads']} and onnxruntime threads "
        f"{layout['inference_threads']} per worker, fixed batch shapes {fixed}.",
        "",
        "## Served, default settings",
        "",
    ]
    if benchmark is None:
        lines.append("No figures: the served phase wrote none (see its log).")
    else:
        lines += [
            f"`python -m loadtests.benchmark`: {benchmark['concurrency']} requests in flight for "
            f"{benchmark['phases_s']['served']:g} s; bare: the same decoding and model in one process, no HTTP.",
            "",
            served_table(benchmark),
        ]
    lines += ["", "## Model alone: batch shapes", ""]
    lines.append(batch_shapes.markdown_table(timings) if timings else "No figures (see the phase's log).")
    lines += ["", "## Tests marked gpu", "", tests, "", "## Phases", ""]
    lines += ["| phase | result | seconds | budget s | log |", "|---|---|---|---|---|"]
    lines += [f"| {p.name} | {p.status} | {p.seconds:.0f} | {p.budget_s:.0f} | {p.log} |" for p in phases]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "gpu-check")
    parser.add_argument("--concurrency", type=int, default=64, help="Requests in flight in the served phase.")
    parser.add_argument("--time-scale", type=float, default=0.5, help="The served phase's, as the benchmark's.")
    parser.add_argument("--runs", type=int, default=96, help="Batches per way of running, as batch_shapes'.")
    args = parser.parse_args(argv)

    host = probe_host_gpu()
    missing = why_no_gpu(host)
    if missing is not None:
        print(f"gpu-check: found no GPU to check on this host: {missing}. Nothing measured, no report written.")
        return 0
    started = time.monotonic()
    found = probe(host)
    device = found["device"]
    print(
        f"[probe] {device['name']}, driver {found['driver']}; auto takes {found['auto_provider']}; "
        f"default layout {found['layout']}",
        flush=True,
    )
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in PHASE_OUTPUTS:  # an earlier run's figures must not stand in for a phase that wrote none
        (out / name).unlink(missing_ok=True)
    cases = [f"--case={model}@{FRAME[0]}x{FRAME[1]}" for model in model_names(MODEL_STORE)]
    # The served phase's measuring time, plus server start-up (every worker warms every batch shape)
    # and the sessions of the bare pipeline.
    scaled = Phases().scaled(args.time_scale)
    per_case = 2 * (scaled.warmup + scaled.bare) + scaled.warmup + scaled.served + scaled.single + scaled.half_rate
    phases = [
        run_phase(
            "batch shapes",
            module("loadtests.batch_shapes", "--runs", args.runs, "--json", out / "batch-shapes.json"),
            80.0,
            out / "batch-shapes.log",
        ),
        run_phase(
            "served",
            module(
                "loadtests.benchmark",
                *cases,
                "--concurrency",
                args.concurrency,
                "--time-scale",
                args.time_scale,
                "--json",
                out / "benchmark.json",
            ),
            90.0 + 1.5 * per_case * len(cases),
            out / "served.log",
        ),
        run_phase(
            "gpu tests",
            module("pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--junitxml", out / "gpu.xml"),
            75.0,
            out / "gpu-tests.log",
        ),
    ]
    shapes = read_json(out / "batch-shapes.json") or {"timings": []}
    timings = [batch_shapes.Timing(**timing) for timing in shapes["timings"]]
    benchmark = read_json(out / "benchmark.json")
    outcomes = junit_outcomes(out / "gpu.xml") if (out / "gpu.xml").is_file() else {}
    tests = tests_summary(outcomes) if outcomes else "No results (see the phase's log)."
    markdown = report_markdown(found, phases, benchmark, timings, tests)
    (out / "gpu-check.md").write_text(markdown)
    report = {
        "command": "python -m loadtests.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"node": platform.node(), **found},
        "phases": [asdict(phase) for phase in phases],
        "served": None if benchmark is None else [without_rounds(row) for row in benchmark["results"]],
        "batch_shapes": shapes["timings"],
        "gpu_tests": outcomes,
        "markdown": markdown,
    }
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{markdown}\nwritten to {out / 'gpu-check.md'} and {out / 'gpu-check.json'}")
    print(f"gpu-check took {time.monotonic() - started:.0f} s", flush=True)
    failed = [phase.name for phase in phases if not phase.ok]
    if failed or any(outcome == "failed" for outcome in outcomes.values()):
        print(f"gpu-check: not clean: {', '.join(failed) or 'tests failed'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
