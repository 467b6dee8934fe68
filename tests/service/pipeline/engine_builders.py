"""A worker making one session's TensorRT engine, as `create_session` does, for the engine cache's lock
tests. A module of its own that imports little: each test spawns processes that import it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

from service.pipeline.engine_cache import EngineKey, building_engine

ENGINE_FILE = "model.engine"  # what onnxruntime would write; a stand-in here
BUILD_S = 0.5  # a build's stand-in: long enough that two builds at once would overlap


@dataclass(frozen=True)
class Visit:
    """One process's time in an engine's folder (time.monotonic, which all processes share on Linux)."""

    worker: str
    asked: float  # asked for the folder
    entered: float  # got it
    left: float
    found: bool  # the engine was there to load; False: this process built it


def make_session(
    worker: str,
    cache: str,
    key: EngineKey,
    visits: Queue,
    asking: Event | None = None,
    inside: Event | None = None,
    build_after: list[Event] | None = None,
) -> None:
    """Build the engine of `key` unless it is there, then report the visit. `asking` is set just before
    asking for the folder, `inside` once in it; a build starts once every event of `build_after` is set,
    so that the others are already waiting when it runs."""
    asked = time.monotonic()
    if asking is not None:
        asking.set()
    with building_engine(Path(cache), key) as folder:
        entered = time.monotonic()
        if inside is not None:
            inside.set()
        engine = folder / ENGINE_FILE
        found = engine.exists()
        if not found:
            for event in build_after or []:
                event.wait(30)
            time.sleep(BUILD_S)
            engine.write_bytes(b"engine")
        left = time.monotonic()
    visits.put(Visit(worker, asked, entered, left, found))


def hold_a_build_forever(cache: str, key: EngineKey, inside: Event) -> None:
    """A builder that dies mid-build (the test kills it): half an engine written, the folder held."""
    with building_engine(Path(cache), key) as folder:
        (folder / ENGINE_FILE).write_bytes(b"half an eng")
        inside.set()
        time.sleep(600)
