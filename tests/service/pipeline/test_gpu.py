"""The GPU path on a real GPU: marked `gpu`, skipped (saying why) where the CUDA provider cannot run."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from export.synthetic import encode_image, generate_weld
from service.model_store import load_version
from service.pipeline.preprocess import to_batch
from service.pipeline.providers import CPU, CUDA, TENSORRT, probe_host_gpu
from service.pipeline.runtime import RuntimeOptions, batch_buckets, create_session
from tests.conftest import MODEL_STORE, running_server
from tests.service.clients import predict
from tests.service.pipeline.inputs import model_inputs

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("model", ["weld-classifier", "weld-detector", "weld-segmenter"])
def test_cuda_sessions_at_fixed_batch_shapes_answer_as_the_cpu_does(model):
    version = load_version(MODEL_STORE, model)
    manifest, spec = version.manifest, version.manifest.input
    names = {"input_name": spec.name, "output_names": manifest.output.names}
    on_cpu = create_session(version.onnx_path, RuntimeOptions(CPU), **names)
    on_gpu = create_session(version.onnx_path, RuntimeOptions(CUDA), **names, batch_sizes=batch_buckets(8))
    assert on_gpu.provider == CUDA
    on_gpu.warm_up()
    assert on_gpu.rows_run == {1, 2, 4, 8}
    images = model_inputs(manifest, 5)
    for n in (1, 3, 5):
        gpu = on_gpu.run(to_batch(images[:n], spec, on_gpu.batch_rows(n)), n)
        cpu = on_cpu.run(to_batch(images[:n], spec))
        for got, want in zip(gpu, cpu, strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_a_server_on_cuda_runs_warmed_fixed_shapes_and_answers_as_on_cpu(tmp_path):
    frame = encode_image(generate_weld(72_000, 640, 480, label="crack").image)
    answers = {}
    for provider in ("cuda", "cpu"):
        with running_server(tmp_path / provider, provider=provider, models="weld-classifier") as server:
            described = httpx.get(f"{server.url}/v1/models/weld-classifier").json()
            answers[provider] = (described, predict(server, "weld-classifier", frame))
    described, on_gpu = answers["cuda"]
    assert described["provider"] == CUDA and described["batch_sizes"] == [1, 2, 4, 8]
    assert answers["cpu"][0]["batch_sizes"] is None
    on_cpu = answers["cpu"][1]
    assert on_gpu["label"] == on_cpu["label"] == "crack"
    assert all(abs(on_gpu["scores"][k] - on_cpu["scores"][k]) < 1e-3 for k in on_cpu["scores"])


def test_tensorrt_builds_cached_engines_per_batch_shape(tmp_path):
    if not probe_host_gpu().runs(TENSORRT):
        pytest.skip(f"TensorRT cannot run here ({probe_host_gpu().missing.get(TENSORRT)} does not load)")
    version = load_version(MODEL_STORE, "weld-classifier")
    spec = version.manifest.input
    runtime = RuntimeOptions(
        TENSORRT, tensorrt={"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path)}
    )
    session = create_session(
        version.onnx_path, runtime, input_name=spec.name, output_names=version.manifest.output.names, batch_sizes=(1, 2)
    )
    assert session.provider == TENSORRT
    session.warm_up()
    assert any(tmp_path.iterdir())  # engines written for the next start
