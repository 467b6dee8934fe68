"""Where TensorRT's compiled engines are cached, and who builds them.

onnxruntime names a cached engine by a hash of the graph file's name (`model.onnx` for every model),
its tensor names and the library versions it was compiled with: not of the weights, nor of the
input shapes. In one shared folder a retrained version of the same architecture would load the
previous version's engine and serve stale weights without a word, and the sessions of one model's
batch sizes would overwrite one another's engine at every start. So each engine gets a folder of its
own, named by everything that changes what it computes (`EngineKey`):

    <cache>/tensorrt-<TensorRT version>/<model>/<version>/<sha256[:16]>-<shapes>-<fp16|fp32>/

The TensorRT version is at the top because an engine loads only in the TensorRT that built it,
and onnxruntime's name holds the version it was compiled against, not the one installed. Its timing
cache (measured kernel timings, valid for any graph on that TensorRT and GPU) is shared there.

TensorRT builds an engine while onnxruntime makes the session, for minutes on a large model. Several
workers start at once: `building_engine` lets one of them build each engine while the others wait,
then load what it built.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

Shape = tuple[int, ...]

LOCK_FILE = ".lock"
# Written once the session that built the engine exists: without it, what the folder holds is what a
# builder that died left behind (a half-written engine onnxruntime would fail to load at every start).
KEY_FILE = "key.json"
# onnxruntime reads the shared timing cache before each build and rewrites it after, with no lock
# of its own: builds of different engines take turns on it (they would also share the GPU, whose
# timings each build measures).
TIMING_LOCK_FILE = ".timing.lock"


@dataclass(frozen=True)
class EngineKey:
    """Everything that changes what a TensorRT engine computes, or whether it loads."""

    model: str
    version: str
    graph_sha256: str  # of the graph file's bytes: the weights are in it (the model store refuses external data)
    shapes: tuple[Shape, Shape]  # the smallest and the largest input the engine takes (its profile)
    fp16: bool

    def __post_init__(self) -> None:
        for part in (self.model, self.version):
            if not part or "/" in part or part in (".", ".."):
                raise ValueError(f"{part!r} cannot name a folder of the engine cache")

    @property
    def folder(self) -> Path:
        """This engine's folder, relative to the cache of one TensorRT version."""
        smallest, largest = ("x".join(map(str, shape)) for shape in self.shapes)
        shapes = smallest if smallest == largest else f"{smallest}-{largest}"
        precision = "fp16" if self.fp16 else "fp32"
        return Path(self.model, self.version, f"{self.graph_sha256[:16]}-{shapes}-{precision}")


def tensorrt_cache(root: Path, tensorrt_version: str) -> Path:
    """The cache of the engines built by one TensorRT version, under the service's engine cache."""
    return root / f"tensorrt-{tensorrt_version}"


def graph_sha256(path: Path) -> str:
    """The sha256 of a graph file, read once per process for as long as the file is unchanged."""
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Size and modification time are in the cache's key so that a file rewritten in place is read again.
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@contextmanager
def building_engine(cache: Path, key: EngineKey) -> Iterator[Path]:
    """Hold `key`'s engine folder while the session that builds or loads its engine is made; yields the folder.

    The first process in builds the engine, the others wait on the folder's lock and then load it. A
    build also holds the timing cache's lock; loading an engine already built waits for no other key.
    The locks are `flock`s: the kernel releases them when a process dies, so a crashed builder leaves
    no stale lock behind, only a folder without its `key.json`, which the next builder clears.
    """
    folder = cache / key.folder
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / LOCK_FILE):
        if (folder / KEY_FILE).exists():
            yield folder
            return
        for leftover in folder.iterdir():
            if leftover.name != LOCK_FILE and leftover.is_file():
                leftover.unlink()
        with _locked(cache / TIMING_LOCK_FILE):
            yield folder
        (folder / KEY_FILE).write_text(json.dumps(asdict(key), indent=2) + "\n")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as file:  # "a": never truncates a lock file another process holds
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock
