from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from service.model_store import load_version
from service.pipeline.preprocess import to_batch
from service.pipeline.providers import CPU, CUDA, TENSORRT, ProviderUnavailable, nvidia_device_present
from service.pipeline.runtime import RuntimeOptions, batch_buckets, create_session
from tests.conftest import MODEL_STORE
from tests.service.pipeline.inputs import model_inputs

ON_CPU = RuntimeOptions(CPU)


def _doubling_graph(folder: Path, batch: str | int) -> Path:
    """A real one-node graph: y = x + x, on [batch, 3] inputs."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3])
    y = helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [batch, 3])
    graph = helper.make_graph([helper.make_node("Add", ["images", "images"], ["doubled"])], "double", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = folder / f"double-{batch}.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def doubling_model(tmp_path_factory) -> Path:
    return _doubling_graph(tmp_path_factory.mktemp("onnx"), "n")


@pytest.mark.parametrize(
    ("largest", "expected"),
    [
        (1, (1,)),
        (2, (1, 2)),
        (6, (1, 2, 4, 6)),
        (8, (1, 2, 4, 8)),
        (9, (1, 2, 4, 8, 9)),
        (64, (1, 2, 4, 8, 16, 32, 64)),
    ],
)
def test_batch_buckets_are_powers_of_two_up_to_the_largest_batch(largest, expected):
    assert batch_buckets(largest) == expected


def test_cpu_session_runs_the_graph_at_any_batch_size(doubling_model):
    session = create_session(doubling_model, ON_CPU, input_name="images", output_names=["doubled"])
    assert session.provider == CPU and session.batch_sizes is None
    for n in (1, 3):
        assert session.batch_rows(n) == n
        (out,) = session.run(np.ones((n, 3), dtype=np.float32))
        np.testing.assert_array_equal(out, np.full((n, 3), 2.0))


def test_fixed_batch_shapes_pad_up_to_the_bucket_and_cut_the_padding_off(doubling_model):
    session = create_session(
        doubling_model, ON_CPU, input_name="images", output_names=["doubled"], batch_sizes=(1, 2, 4)
    )
    assert session.batch_sizes == (1, 2, 4)
    assert [session.batch_rows(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    with pytest.raises(ValueError, match="over the largest batch size, 4"):
        session.batch_rows(5)
    batch = np.zeros((4, 3), dtype=np.float32)
    batch[:3] = np.arange(9, dtype=np.float32).reshape(3, 3)
    (out,) = session.run(batch, images=3)
    np.testing.assert_array_equal(out, 2 * np.arange(9, dtype=np.float32).reshape(3, 3))
    assert session.rows_run == {4}


def test_warm_up_runs_every_batch_size_once(doubling_model):
    bucketed = create_session(
        doubling_model, ON_CPU, input_name="images", output_names=["doubled"], batch_sizes=(1, 2, 4, 8)
    )
    assert bucketed.warm_up() > 0
    assert bucketed.rows_run == {1, 2, 4, 8}
    any_size = create_session(doubling_model, ON_CPU, input_name="images", output_names=["doubled"])
    any_size.warm_up()
    assert any_size.rows_run == {1}


def test_a_graph_of_one_image_per_run_keeps_one_session_and_warms_up_with_one_image(tmp_path):
    one_image = create_session(
        _doubling_graph(tmp_path, 1), ON_CPU, input_name="images", output_names=["doubled"], batch_sizes=(1, 2, 4)
    )
    assert one_image.batch_sizes is None and one_image.input_shape == (3,)
    one_image.warm_up()
    assert one_image.rows_run == {1}


@pytest.mark.parametrize("model", ["weld-classifier", "weld-segmenter"])
def test_padded_batches_answer_exactly_as_unpadded_ones(model):
    version = load_version(MODEL_STORE, model, None)
    manifest = version.manifest
    spec = manifest.input
    names = dict(input_name=spec.name, output_names=manifest.output.names)
    any_size = create_session(version.onnx_path, ON_CPU, **names)
    bucketed = create_session(version.onnx_path, ON_CPU, **names, batch_sizes=batch_buckets(8))
    images = model_inputs(manifest, 7)
    for n in (1, 3, 5, 7):
        rows = bucketed.batch_rows(n)
        padded = bucketed.run(to_batch(images[:n], spec, rows), n)
        plain = any_size.run(to_batch(images[:n], spec))
        assert rows > n or n == 1
        for got, want in zip(padded, plain, strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_manifest_names_that_do_not_match_the_graph_are_refused(doubling_model):
    with pytest.raises(ValueError, match="graph inputs are \\['images'\\]"):
        create_session(doubling_model, ON_CPU, input_name="pixels", output_names=["doubled"])
    with pytest.raises(ValueError, match="no outputs \\['scores'\\]"):
        create_session(doubling_model, ON_CPU, input_name="images", output_names=["scores"])


def test_a_manifest_whose_image_size_the_fixed_graph_does_not_take_is_refused():
    version = load_version(MODEL_STORE, "weld-classifier")  # a graph fixed at 1x160x160
    names = {"input_name": "images", "output_names": ["logits"]}
    with pytest.raises(ValueError, match="the graph takes 1x160x160 images; its manifest says 1x96x160"):
        create_session(version.onnx_path, ON_CPU, **names, image_shape=(1, 96, 160))
    create_session(version.onnx_path, ON_CPU, **names, image_shape=(1, 160, 160))  # as the manifest says


def test_gpu_sessions_get_one_thread_without_spinning_and_the_configured_provider_options():
    options = RuntimeOptions(CUDA, cuda={"cudnn_conv_algo_search": "HEURISTIC"}, tensorrt={"trt_fp16_enable": "True"})
    config = options.session_options()
    assert config.intra_op_num_threads == 1
    assert config.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.providers("images", None) == [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    assert ON_CPU.providers("images", None) == [CPU]


def test_tensorrt_gets_an_optimisation_profile_per_batch_shape():
    options = RuntimeOptions(TENSORRT, tensorrt={"trt_fp16_enable": "True"})
    (name, trt), cuda, cpu = options.providers("images", ((4, 1, 64, 64), (4, 1, 64, 64)))
    assert (name, cuda, cpu) == (TENSORRT, (CUDA, {}), CPU)
    assert trt == {
        "trt_fp16_enable": "True",
        "trt_profile_min_shapes": "images:4x1x64x64",
        "trt_profile_opt_shapes": "images:4x1x64x64",
        "trt_profile_max_shapes": "images:4x1x64x64",
    }


@pytest.mark.skipif(nvidia_device_present(), reason="this host has a GPU: CUDA would really start")
def test_a_session_that_falls_back_to_cpu_is_refused(doubling_model):
    # onnxruntime, asked for CUDA without a GPU, silently runs on CPU: the check reads it back.
    with pytest.raises(ProviderUnavailable, match="asked for CUDAExecutionProvider but runs the graph on CPU"):
        create_session(doubling_model, RuntimeOptions(CUDA), input_name="images", output_names=["doubled"])


@pytest.fixture
def dynamic_image_model(tmp_path: Path) -> Path:
    """A graph that doubles its input, with every axis but the channels' dynamic."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 1, "h", "w"])
    y = helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["n", 1, "h", "w"])
    graph = helper.make_graph([helper.make_node("Add", ["images", "images"], ["doubled"])], "double", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, path)
    return path


def test_a_graph_with_dynamic_image_axes_runs_at_the_shape_the_service_feeds(dynamic_image_model):
    path = dynamic_image_model
    with pytest.raises(ValueError, match="image axes are dynamic"):
        create_session(path, ON_CPU, input_name="images", output_names=["doubled"])
    session = create_session(
        path, ON_CPU, input_name="images", output_names=["doubled"], batch_sizes=(1, 2), image_shape=(1, 8, 6)
    )
    session.warm_up()
    assert session.input_shape == (1, 8, 6) and session.rows_run == {1, 2}


def test_a_graph_padded_only_to_its_stride_runs_smaller_images_at_every_batch_size(dynamic_image_model):
    path = dynamic_image_model
    session = create_session(
        path,
        ON_CPU,
        input_name="images",
        output_names=["doubled"],
        batch_sizes=(1, 2),
        image_shape=(1, 64, 64),
        smallest_image_shape=(1, 32, 32),
    )
    for rows, height, width in ((1, 64, 64), (2, 32, 64), (1, 64, 32)):
        (out,) = session.run(np.ones((rows, 1, height, width), dtype=np.float32))
        assert out.shape == (rows, 1, height, width) and (out == 2.0).all()


def test_a_graph_of_fixed_image_axes_cannot_be_fed_smaller_images(doubling_model):
    with pytest.raises(ValueError, match="image axes are fixed"):
        create_session(doubling_model, ON_CPU, input_name="images", output_names=["doubled"], smallest_image_shape=(2,))
