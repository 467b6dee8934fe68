"""The GPU path on a real GPU: marked `gpu`, skipped (saying why) where the CUDA provider cannot run.

CUDA is compared with the CPU at two tolerances. With TF32 off both compute in float32 and differ only
in the order of their sums and cuDNN's choice of algorithm: 1e-3 on the raw outputs. With TF32 on
(onnxruntime's default, and the service's), the CUDA provider rounds the inputs of every convolution
and matrix product to a 10-bit mantissa, and the outputs are compared as the service reads them. On
CPU, with those inputs rounded the same way (8 frames), the classifier's probabilities moved by at most
4e-4, the detector's scores by 8e-4 and its boxes by 0.1 px; the U-Net's logits by up to 0.47, its pixel
probabilities by up to 0.022 where two classes' logits are close, with 2 of 2.1 million values past 1e-2
and no pixel's class changed. Hence: probabilities within 1e-2 (a threshold is set in hundredths),
for the U-Net all but 1e-4 of them, and none past 0.1; boxes within a pixel of the 256-pixel input.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from export.synthetic import encode_image, generate_weld
from service.config import Settings
from service.manifest import ModelManifest, OutputDecoder
from service.model_store import load_version
from service.pipeline.engine_cache import KEY_FILE, graph_sha256
from service.pipeline.preprocess import to_batch
from service.pipeline.providers import CPU, CUDA, TENSORRT, probe_host_gpu
from service.pipeline.runtime import RuntimeOptions, batch_buckets, create_session
from service.tasks.classification.postprocess import class_scores
from tests.conftest import MODEL_STORE, running_server
from tests.service.clients import predict
from tests.service.pipeline.inputs import model_inputs

pytestmark = pytest.mark.gpu


def read_off(manifest: ModelManifest, outputs: list[np.ndarray]) -> dict[str, tuple[np.ndarray, float, float]]:
    """What the service reads off a batch's outputs, each with how far TF32 may move it from the CPU's
    value, and the share of values that may go further (up to ten times as far)."""
    raw, decoder = outputs[0], manifest.output.decoder
    if decoder in (OutputDecoder.SOFTMAX, OutputDecoder.SIGMOID):
        return {"class probabilities": (class_scores(raw, decoder), 1e-2, 0.0)}
    if decoder is OutputDecoder.SEGMENTATION_LOGITS:
        exp = np.exp(raw - raw.max(axis=1, keepdims=True))
        return {"pixel class probabilities": (exp / exp.sum(axis=1, keepdims=True), 1e-2, 1e-4)}
    assert decoder is OutputDecoder.YOLO, decoder
    return {"box pixels": (raw[:, :4], 1.0, 0.0), "class scores": (raw[:, 4:], 1e-2, 0.0)}


@pytest.mark.parametrize("use_tf32", [False, True], ids=["float32", "tf32"])
@pytest.mark.parametrize("model", ["weld-classifier", "weld-detector", "weld-segmenter"])
def test_cuda_sessions_at_fixed_batch_shapes_answer_as_the_cpu_does(model, use_tf32):
    version = load_version(MODEL_STORE, model)
    manifest, spec = version.manifest, version.manifest.input
    names = {"input_name": spec.name, "output_names": manifest.output.names}
    on_cpu = create_session(version.onnx_path, RuntimeOptions(CPU), **names)
    cuda = RuntimeOptions.from_settings(Settings(provider="cuda", use_tf32=use_tf32))
    on_gpu = create_session(version.onnx_path, cuda, **names, batch_sizes=batch_buckets(8))
    assert on_gpu.provider == CUDA
    on_gpu.warm_up()
    assert on_gpu.rows_run == {1, 2, 4, 8}
    images = model_inputs(manifest, 5)
    for n in (1, 3, 5):
        gpu = on_gpu.run(to_batch(images[:n], spec, on_gpu.batch_rows(n)), n)
        cpu = on_cpu.run(to_batch(images[:n], spec))
        assert [got.shape for got in gpu] == [want.shape for want in cpu]
        if not use_tf32:
            for got, want in zip(gpu, cpu, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
            continue
        expected = read_off(manifest, cpu)
        for what, (got, atol, share_past) in read_off(manifest, gpu).items():
            error = np.abs(got - expected[what][0])
            past = (error > atol).mean()
            moved = f"{model}, {n} images: {what} moved by up to {error.max():.2g}, a share of {past:.2g} past {atol}"
            assert error.max() <= 10 * atol and past <= share_past, moved


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
    # The server runs with TF32 on, as served: probabilities within 1e-2 (see the top of this module).
    assert all(abs(on_gpu["scores"][k] - on_cpu["scores"][k]) < 1e-2 for k in on_cpu["scores"])


def test_tensorrt_builds_an_engine_per_batch_shape_in_its_own_folder_and_loads_it_at_the_next_start(tmp_path):
    if not probe_host_gpu().runs(TENSORRT):
        pytest.skip(f"TensorRT cannot run here ({probe_host_gpu().missing.get(TENSORRT)} does not load)")
    version = load_version(MODEL_STORE, "weld-classifier")
    manifest, spec = version.manifest, version.manifest.input
    runtime = RuntimeOptions.from_settings(Settings(provider="tensorrt", state_dir=tmp_path))
    assert runtime.engine_cache is not None
    names = {"input_name": spec.name, "output_names": manifest.output.names, "model_ref": (manifest.name, 1)}

    def engines() -> dict[Path, int]:
        return {path: path.stat().st_mtime_ns for path in runtime.engine_cache.rglob("*.engine")}

    session = create_session(version.onnx_path, runtime, **names, batch_sizes=(1, 2))
    assert session.provider == TENSORRT
    session.warm_up()
    built = engines()
    sha = graph_sha256(version.onnx_path)[:16]
    folders = {path.parent.relative_to(runtime.engine_cache) for path in built}
    assert folders == {Path("weld-classifier", "1", f"{sha}-{n}x1x160x160-fp32") for n in (1, 2)}
    assert all((runtime.engine_cache / folder / KEY_FILE).exists() for folder in folders)
    again = create_session(version.onnx_path, runtime, **names, batch_sizes=(1, 2))
    again.warm_up()
    assert engines() == built  # loaded, not built again
