from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from service.config import Provider
from service.runtime import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderUnavailable,
    check_active_provider,
    create_session,
    nvidia_device_present,
    requested_providers,
)

ALL = [TENSORRT, CUDA, CPU]


@pytest.fixture(scope="module")
def doubling_model(tmp_path_factory) -> Path:
    """A real one-node graph: y = x + x, with a dynamic batch axis."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph([helper.make_node("Add", ["images", "images"], ["doubled"])], "double", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path_factory.mktemp("onnx") / "double.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("provider", "gpu", "expected"),
    [
        (Provider.CPU, True, [CPU]),
        (Provider.CUDA, True, [CUDA, CPU]),
        (Provider.TENSORRT, True, [TENSORRT, CUDA, CPU]),
        (Provider.AUTO, True, [TENSORRT, CUDA, CPU]),
        (Provider.AUTO, False, [CPU]),
    ],
)
def test_providers_requested_for_each_setting(provider, gpu, expected):
    assert requested_providers(provider, ALL, gpu_present=gpu) == expected


def test_gpu_provider_missing_from_the_build_is_a_start_up_error():
    with pytest.raises(ProviderUnavailable, match="needs CUDAExecutionProvider, which this onnxruntime build lacks"):
        requested_providers(Provider.CUDA, [CPU], gpu_present=True)


def test_silent_fallback_to_cpu_is_refused_unless_auto():
    with pytest.raises(ProviderUnavailable, match="runs on CPUExecutionProvider"):
        check_active_provider(Provider.CUDA, [CPU])
    with pytest.raises(ProviderUnavailable, match="runs on CUDAExecutionProvider"):
        check_active_provider(Provider.TENSORRT, [CUDA, CPU])
    assert check_active_provider(Provider.AUTO, [CPU]) == CPU
    assert check_active_provider(Provider.CUDA, [CUDA, CPU]) == CUDA


def test_cpu_session_runs_the_graph_at_any_batch_size(doubling_model):
    session = create_session(doubling_model, Provider.CPU, threads=1, input_name="images", output_names=["doubled"])
    assert session.provider == CPU
    for n in (1, 3):
        (out,) = session.run(np.ones((n, 3), dtype=np.float32))
        np.testing.assert_array_equal(out, np.full((n, 3), 2.0))


@pytest.mark.skipif(nvidia_device_present(), reason="this host has a GPU: CUDA would really start")
def test_cuda_asked_for_on_a_host_without_gpu_fails_instead_of_running_on_cpu(doubling_model):
    with pytest.raises(ProviderUnavailable):
        create_session(doubling_model, Provider.CUDA, threads=1, input_name="images", output_names=["doubled"])
    auto = create_session(doubling_model, Provider.AUTO, threads=1, input_name="images", output_names=["doubled"])
    assert auto.provider == CPU


def test_manifest_names_that_do_not_match_the_graph_are_refused(doubling_model):
    with pytest.raises(ValueError, match="graph inputs are \\['images'\\]"):
        create_session(doubling_model, Provider.CPU, threads=1, input_name="pixels", output_names=["doubled"])
    with pytest.raises(ValueError, match="no outputs \\['scores'\\]"):
        create_session(doubling_model, Provider.CPU, threads=1, input_name="images", output_names=["scores"])
