"""TensorRT's engine cache, on CPU: the key of an engine, its folder, the locks its build is made under,
and the provider options that carry the folder to onnxruntime."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from service.config import Settings
from service.pipeline.engine_cache import (
    KEY_FILE,
    LOCK_FILE,
    TIMING_LOCK_FILE,
    EngineKey,
    _file_sha256,
    building_engine,
    graph_sha256,
)
from service.pipeline.providers import CPU, CUDA, TENSORRT, ProviderUnavailable, nvidia_device_present
from service.pipeline.runtime import RuntimeOptions, create_session
from tests.conftest import MODEL_STORE
from tests.service.pipeline.engine_builders import ENGINE_FILE, Visit, hold_a_build_forever, make_session
from tests.service.pipeline.hosts import GPU_HOST

CLASSIFIER = MODEL_STORE / "weld-classifier" / "1" / "model.onnx"
BATCH_8 = ((8, 1, 160, 160), (8, 1, 160, 160))
# Spawned, not forked: the test process runs onnxruntime's threads, which a fork would copy mid-flight.
SPAWN = multiprocessing.get_context("spawn")


def key(graph: Path = CLASSIFIER, shapes=BATCH_8, fp16: bool = False, version: str = "1") -> EngineKey:
    return EngineKey("weld-classifier", version, graph_sha256(graph), shapes, fp16)


def retrained(source: Path, target: Path) -> Path:
    """`source` with other weights: one initializer moved, the architecture and every name kept."""
    model = onnx.load(source)
    weights = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.dims)
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) + np.float32(0.01), weights.name))
    target.parent.mkdir(parents=True)
    onnx.save(model, target)
    return target


def run_workers(*workers: tuple) -> dict[str, Visit]:
    """`make_session` in a spawned process per worker, each given as (name, cache, key, its event keywords,
    the event to wait for before starting it or None); their visits by name."""
    visits = SPAWN.Queue()
    processes = []
    for name, cache, engine_key, events, wait_for in workers:
        if wait_for is not None:
            assert wait_for.wait(60), f"{name}: the worker before it never got in"
        process = SPAWN.Process(target=make_session, args=(name, cache, engine_key, visits), kwargs=events)
        process.start()
        processes.append(process)
    found = {visit.worker: visit for visit in (visits.get(timeout=60) for _ in processes)}
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    return found


def test_a_retrained_graph_of_the_same_architecture_never_gets_the_old_engine_key(tmp_path):
    old = tmp_path / "old" / "weld-classifier" / "1" / "model.onnx"
    old.parent.mkdir(parents=True)
    shutil.copyfile(CLASSIFIER, old)
    new = retrained(old, tmp_path / "new" / "weld-classifier" / "1" / "model.onnx")
    # What onnxruntime names its engines by is the same for both: the file's name and the tensors' names.
    before, after = onnx.load(old).graph, onnx.load(new).graph
    assert old.name == new.name
    assert [n.output for n in before.node] == [n.output for n in after.node]
    assert [t.name for t in before.initializer] == [t.name for t in after.initializer]
    # The key differs even under the same model name and version (a version exported again in place).
    assert graph_sha256(old) != graph_sha256(new)
    assert key(old) != key(new) and key(old).folder != key(new).folder


def test_each_batch_shape_and_precision_gets_a_folder_of_its_own_and_the_same_inputs_the_same_one():
    batch_1 = ((1, 1, 160, 160), (1, 1, 160, 160))
    up_to_8 = ((1, 1, 160, 160), (8, 1, 160, 160))
    keys = [key(), key(shapes=batch_1), key(shapes=up_to_8), key(fp16=True), key(version="2")]
    assert len({k.folder for k in keys}) == len(keys)
    assert key() == key() and key().folder == key().folder
    sha = graph_sha256(CLASSIFIER)
    assert key().folder == Path("weld-classifier", "1", f"{sha[:16]}-8x1x160x160-fp32")
    assert key(shapes=up_to_8, fp16=True).folder.name == f"{sha[:16]}-1x1x160x160-8x1x160x160-fp16"


def test_a_key_cannot_name_a_folder_outside_the_cache():
    for model, version in (("..", "1"), ("weld-classifier", "../2"), ("", "1")):
        with pytest.raises(ValueError, match="cannot name a folder"):
            EngineKey(model, version, "0" * 64, BATCH_8, False)


def test_a_graph_is_hashed_once_per_process_and_again_once_the_file_changes(tmp_path):
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"a graph")
    first = graph_sha256(graph)
    hits = _file_sha256.cache_info().hits
    assert graph_sha256(graph) == first
    assert _file_sha256.cache_info().hits == hits + 1
    graph.write_bytes(b"the graph with other weights")
    assert graph_sha256(graph) != first


def test_two_workers_build_one_engine_once_the_second_waits_and_loads_it(tmp_path):
    b_asking, a_inside = SPAWN.Event(), SPAWN.Event()
    visits = run_workers(
        ("a", str(tmp_path), key(), {"inside": a_inside, "build_after": [b_asking]}, None),
        ("b", str(tmp_path), key(), {"asking": b_asking}, a_inside),
    )
    a, b = visits["a"], visits["b"]
    assert not a.found and b.found  # built once, by the first in; loaded by the second
    assert b.asked < a.left <= b.entered  # the second asked during the build and got in only after it
    written = json.loads((tmp_path / key().folder / KEY_FILE).read_text())
    assert written["graph_sha256"] == graph_sha256(CLASSIFIER) and written["shapes"] == [[8, 1, 160, 160]] * 2


def test_builds_of_different_engines_take_turns_and_loading_a_built_one_waits_for_none(tmp_path):
    # The builds share TensorRT's timing cache, which onnxruntime rewrites after each build.
    batch_1, batch_2 = (((n, 1, 160, 160),) * 2 for n in (1, 2))
    with building_engine(tmp_path, key(shapes=batch_2)) as folder:
        (folder / ENGINE_FILE).write_bytes(b"engine")  # built before: the next session loads it
    a_inside, b_asking, c_asking = SPAWN.Event(), SPAWN.Event(), SPAWN.Event()
    visits = run_workers(
        ("a", str(tmp_path), key(), {"inside": a_inside, "build_after": [b_asking, c_asking]}, None),
        ("b", str(tmp_path), key(shapes=batch_1), {"asking": b_asking}, a_inside),
        ("c", str(tmp_path), key(shapes=batch_2), {"asking": c_asking}, a_inside),
    )
    a, b, c = visits["a"], visits["b"], visits["c"]
    assert not a.found and not b.found and c.found
    assert b.asked < a.left <= b.entered  # another build waited for this one
    assert c.entered < a.left  # loading a built engine did not


def test_a_builder_that_dies_leaves_no_lock_and_its_half_written_engine_is_cleared(tmp_path):
    inside = SPAWN.Event()
    builder = SPAWN.Process(target=hold_a_build_forever, args=(str(tmp_path), key(), inside))
    builder.start()
    try:
        assert inside.wait(60)
    finally:
        builder.kill()
        builder.join(30)
    with building_engine(tmp_path, key()) as folder:
        assert [p.name for p in folder.iterdir()] == [LOCK_FILE]  # the half engine is gone: it builds again
        (folder / ENGINE_FILE).write_bytes(b"engine")
    assert (folder / KEY_FILE).exists()


def test_a_build_that_fails_leaves_the_folder_unmarked_and_the_next_session_builds_again(tmp_path):
    with pytest.raises(RuntimeError, match="TensorRT failed"):
        with building_engine(tmp_path, key()) as folder:
            (folder / ENGINE_FILE).write_bytes(b"half an eng")
            raise RuntimeError("TensorRT failed")
    assert not (folder / KEY_FILE).exists()
    with building_engine(tmp_path, key()) as folder:
        assert not (folder / ENGINE_FILE).exists()
        (folder / ENGINE_FILE).write_bytes(b"engine")
    with building_engine(tmp_path, key()) as folder:
        assert (folder / ENGINE_FILE).read_bytes() == b"engine"  # built: loaded as it is


def test_a_tensorrt_session_gets_its_engine_folder_and_the_shared_timing_cache(tmp_path):
    runtime = RuntimeOptions.from_settings(Settings(provider="tensorrt", state_dir=tmp_path, fp16=True), GPU_HOST)
    cache = tmp_path / "tensorrt" / "tensorrt-10.13.3"  # engines load only in the TensorRT that built them
    assert (runtime.provider, runtime.engine_cache, runtime.fp16) == (TENSORRT, cache, True)
    engine = cache / key(fp16=True).folder
    (name, trt), cuda, cpu = runtime.providers("images", BATCH_8, engine)
    assert (name, cuda[0], cpu) == (TENSORRT, CUDA, CPU)
    assert trt == {
        "device_id": "0",
        "trt_fp16_enable": "True",
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": "images:8x1x160x160",
        "trt_profile_opt_shapes": "images:8x1x160x160",
        "trt_profile_max_shapes": "images:8x1x160x160",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(engine),
    }
    assert "trt_engine_cache_path" not in runtime.providers("images", BATCH_8)[0][1]  # no folder: nothing kept
    on_cuda = RuntimeOptions.from_settings(Settings(provider="cuda", state_dir=tmp_path), GPU_HOST)
    assert on_cuda.engine_cache is None and len(on_cuda.providers("images", BATCH_8, engine)) == 2
    assert not (tmp_path / "tensorrt").exists()  # nothing is written before a session is made


@pytest.mark.skipif(nvidia_device_present(), reason="this host has a GPU: TensorRT could really build")
def test_a_session_that_falls_back_from_tensorrt_leaves_its_engine_folder_unmarked(tmp_path):
    runtime = RuntimeOptions(TENSORRT, engine_cache=tmp_path)
    with pytest.raises(ProviderUnavailable, match="asked for TensorrtExecutionProvider"):
        create_session(CLASSIFIER, runtime, input_name="images", output_names=["logits"], batch_sizes=(1, 2))
    # Named as the model store lays the graph out, and at the first batch size's shape.
    (folder,) = (tmp_path / "weld-classifier" / "1").iterdir()
    assert folder.name == f"{graph_sha256(CLASSIFIER)[:16]}-1x1x160x160-fp32"
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]
    assert sorted(os.listdir(tmp_path)) == [TIMING_LOCK_FILE, "weld-classifier"]
