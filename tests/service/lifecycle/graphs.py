"""Versions of the demo classifier derived from its graph, for the lifecycle's tests: the same graph, one
whose classes come out swapped, one whose output the manifest cannot read, one that fails on real
frames, and one much slower."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.service.test_versions import CLASSIFIER, add_version

# The demo classifier's classes: no_defect, porosity, crack, undercut. Swapped: porosity and crack.
SWAPPED = [0, 2, 1, 3]


def derive_version(store: Path, version: int, change: Callable[[onnx.GraphProto, str], None] | None = None) -> None:
    """Version 1's graph and manifest as `version` of the classifier in `store`; `change` rewires the graph,
    given the name its logits now come out under (the graph's output `logits` is then `change`'s to make)."""
    add_version(store, version)
    if change is None:
        return
    path = store / CLASSIFIER / str(version) / "model.onnx"
    model = onnx.load(path)
    graph = model.graph
    (last,) = [node for node in graph.node if "logits" in node.output]
    last.output[list(last.output).index("logits")] = "raw_logits"
    change(graph, "raw_logits")
    onnx.checker.check_model(model)
    onnx.save(model, path)


def swap_classes(graph: onnx.GraphProto, logits: str) -> None:
    """The logits of porosity and crack trade places: the candidate says crack where the model says porosity."""
    graph.initializer.append(numpy_helper.from_array(np.array(SWAPPED, dtype=np.int64), "swapped"))
    graph.node.append(helper.make_node("Gather", [logits, "swapped"], ["logits"], axis=1))


def drop_a_class(graph: onnx.GraphProto, logits: str) -> None:
    """Three logits out of four, under an output of unstated width: it loads and warms up, and its
    manifest cannot read its answer."""
    for name, value in (("starts", [0]), ("ends", [3]), ("axes", [1])):
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), name))
    graph.node.append(helper.make_node("Slice", [logits, "starts", "ends", "axes"], ["logits"]))
    output = next(output for output in graph.output if output.name == "logits")
    output.type.tensor_type.shape.dim[1].dim_param = "classes"


def fail_on_real_frames(graph: onnx.GraphProto, logits: str) -> None:
    """The same logits, but the graph fails (an index out of bounds) on any frame that is not one flat
    grey: the warm-up (black) and the blank frame the service answers before going live pass, a weld
    frame does not."""
    graph.initializer.append(numpy_helper.from_array(np.zeros((1, 1), dtype=np.float32), "flat_only"))
    for reduce in ("ReduceMax", "ReduceMin"):
        graph.node.append(helper.make_node(reduce, ["images"], [f"{reduce}_pixel"], keepdims=0))
        graph.node.append(helper.make_node("Cast", [f"{reduce}_pixel"], [f"{reduce}_index"], to=onnx.TensorProto.INT64))
    graph.node.append(helper.make_node("Sub", ["ReduceMax_index", "ReduceMin_index"], ["contrast"]))
    graph.node.append(helper.make_node("Gather", ["flat_only", "contrast"], ["nothing"], axis=0))
    graph.node.append(helper.make_node("Add", [logits, "nothing"], ["logits"]))


def slow_down(graph: onnx.GraphProto, logits: str, convolutions: int = 8, channels: int = 64) -> None:
    """The same logits, plus nothing: a stack of convolutions over the image (about 0.1 s a frame on one
    core), weighted by zero."""
    rng = np.random.default_rng(0)
    graph.node.append(helper.make_node("Cast", ["images"], ["pixels"], to=onnx.TensorProto.FLOAT))
    features = "pixels"
    for index in range(convolutions):
        weights = rng.normal(0, 0.01, (channels, 1 if index == 0 else channels, 3, 3)).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(weights, f"slow_w{index}"))
        graph.node.append(helper.make_node("Conv", [features, f"slow_w{index}"], [f"slow{index}"], pads=[1, 1, 1, 1]))
        features = f"slow{index}"
    graph.initializer.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"))
    graph.initializer.append(numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "slow_axes"))
    graph.node.append(helper.make_node("ReduceMean", [features, "slow_axes"], ["slow_mean"], keepdims=1))
    graph.node.append(helper.make_node("Flatten", ["slow_mean"], ["slow_flat"], axis=1))
    graph.node.append(helper.make_node("Mul", ["slow_flat", "zero"], ["slow_nothing"]))
    graph.node.append(helper.make_node("Add", [logits, "slow_nothing"], ["logits"]))
