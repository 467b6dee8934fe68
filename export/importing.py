"""Wrapping an existing ONNX graph (e.g. a YOLO-family detector) with a manifest.

There is no PyTorch model to compare with, so there is no parity figure: instead the graph must
load in onnxruntime, and its input and outputs must fit the declared task, decoder and classes.
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from service.manifest import OutputDecoder, Provenance, Quality
from service.model_store import ModelVersion

from .errors import ExportError, reason
from .exporting import ExportRequest, build_manifest, onnxruntime_session
from .outputs import check_outputs
from .store import write_version

_INPUT_DTYPES: dict[int, Literal["uint8", "float32", "float16"]] = {
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
}


@dataclass(frozen=True)
class GraphInput:
    """The graph's image input; a dimension is None where the graph leaves it dynamic."""

    name: str
    dtype: Literal["uint8", "float32", "float16"]
    batch: int | None
    channels: int | None
    height: int | None
    width: int | None


def read_graph(onnx_path: Path) -> tuple[onnx.ModelProto, GraphInput]:
    """Load the graph (weights included in the file) and describe its single image input."""
    if not onnx_path.is_file():
        raise ExportError(f"ONNX file {onnx_path} does not exist")
    try:
        model = onnx.load(onnx_path, load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{onnx_path} is not an ONNX model: {reason(exc)}") from exc
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in model.graph.initializer):
        raise ExportError(
            f"{onnx_path} keeps its weights in a separate file: save it as one file "
            "(onnx.save(model, path, save_as_external_data=False))"
        )
    weights = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    if len(inputs) != 1:
        raise ExportError(f"the graph takes {len(inputs)} inputs; the service feeds exactly one image tensor")
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.elem_type not in _INPUT_DTYPES:
        kind = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise ExportError(f"the graph's input is {kind}; the service feeds uint8, float32 or float16")
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]
    if len(dims) != 4:
        raise ExportError(f"the graph's input has {len(dims)} dimensions; the service feeds NCHW images")
    return model, GraphInput(inputs[0].name, _INPUT_DTYPES[tensor_type.elem_type], *dims)


# What an ultralytics detector takes and how its trainer predicts (ultralytics' own defaults): frames
# letterboxed with OpenCV's linear resize and scaled by 1/255; confidence 0.25, NMS IoU 0.7, at most
# 300 detections. A graph exported with dynamic image axes (`dynamic=True`) is also padded only up to a
# multiple of its stride (`pad_to_stride`), as `YOLO.predict` letterboxes for such a graph.
ULTRALYTICS_DEFAULTS = {
    "task": "detection",
    "decoder": "yolo",
    "resize": "letterbox",
    "resize_filter": "linear",  # OpenCV's INTER_LINEAR, no antialiasing
    "scale": 1 / 255,
    "thresholds": "0.25",
    "nms_iou": 0.7,
    "max_detections": 300,
}


def ultralytics_fields(model: onnx.ModelProto, graph: GraphInput) -> tuple[dict[str, Any], str, int] | None:
    """The model fields an ultralytics ONNX file implies (its metadata: names, imgsz, stride, task; its
    head's shape), a line saying what was inferred, and the stride; None for a graph ultralytics did
    not write."""
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if meta.get("author", "").lower() != "ultralytics" and not {"names", "imgsz", "task"} <= set(meta):
        return None
    try:
        names = ast.literal_eval(meta["names"])
        size = ast.literal_eval(meta["imgsz"])
        stride = int(meta.get("stride", "32"))
    except (KeyError, ValueError, SyntaxError) as exc:
        raise ExportError(
            f"the ultralytics metadata cannot be read ({reason(exc)}): pass --task, --classes, ..."
        ) from exc
    task = meta.get("task", "detect")
    if task != "detect":
        raise ExportError(
            f"this is an ultralytics {task!r} model; the service serves ultralytics detectors (task 'detect'), "
            "and other graphs with --task and --decoder"
        )
    classes = [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))
    for label, given, made in (("height", graph.height, height), ("width", graph.width, width)):
        if given is not None and given != made:
            raise ExportError(f"the ultralytics metadata says imgsz {label} {made}, the graph's input has {given}")
    head = [dim.dim_value for dim in model.graph.output[0].type.tensor_type.shape.dim]
    if len(head) != 3 or (head[1] and head[1] != 4 + len(classes)):
        raise ExportError(
            f"an ultralytics detector's output is [N, 4 + {len(classes)}, A]; this graph's is {head}: "
            "export it with model.export(format='onnx') and no NMS inside"
        )
    channels = graph.channels or 3
    dynamic_image = graph.height is None and graph.width is None
    fields = {
        **ULTRALYTICS_DEFAULTS,
        "classes": classes,
        "input_size": [height, width],
        "channels": channels,
        "mean": [0.0] * channels,
        "std": [1.0] * channels,
        "pad_to_stride": stride if dynamic_image else None,
    }
    defaults = ULTRALYTICS_DEFAULTS
    padding = f"padded only to a multiple of {stride} (dynamic image axes)" if dynamic_image else "padded to the input"
    said = (
        f"ultralytics detector: {len(classes)} classes ({', '.join(classes)}), input {height}x{width} "
        f"(stride {stride}), letterbox {padding} with OpenCV's linear resize, pixels / 255, confidence "
        f"{defaults['thresholds']}, NMS IoU {defaults['nms_iou']}, at most {defaults['max_detections']} detections; "
        "options override any of these"
    )
    return fields, said, stride


def check_stride(height: int, width: int, stride: int) -> None:
    """An input size the network's downsampling divides (ultralytics detectors: stride 32)."""
    if height % stride or width % stride:
        raise ExportError(f"input size {height}x{width} is not a multiple of the model's stride, {stride}")


def import_onnx(
    onnx_path: Path, request: ExportRequest, store: Path, *, quality: Quality | None = None
) -> ModelVersion:
    """Write the ONNX file at `onnx_path` as the next version of `request.name`, with its manifest."""
    if request.fp16:
        raise ExportError("fp16 converts graphs exported from PyTorch; convert an imported graph before importing it")
    model, graph = read_graph(onnx_path)
    for label, declared, actual in (
        ("channels", request.channels, graph.channels),
        ("height", request.height, graph.height),
        ("width", request.width, graph.width),
    ):
        if actual is not None and actual != declared:
            raise ExportError(f"the graph's input has {label} {actual}, not the declared {declared}")
    if graph.batch not in (None, 1):
        raise ExportError(f"the graph's input has a fixed batch of {graph.batch}; use batch 1 or a dynamic batch")
    stride = request.pad_to_stride
    if stride is not None and (graph.height is not None or graph.width is not None):
        raise ExportError(
            f"pad_to_stride feeds images smaller than {request.height}x{request.width}, but the graph's input is "
            f"fixed at {graph.height}x{graph.width}: import it without pad_to_stride"
        )
    # boxes/scores/labels graphs describe one image whatever their input says.
    dynamic_batch = graph.batch is None and request.decoder is not OutputDecoder.BOXES_SCORES_LABELS

    onnx_model = onnx_path.read_bytes()
    session = onnxruntime_session(onnx_model)
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    manifest = build_manifest(
        request,
        input_name=graph.name,
        input_dtype=graph.dtype,
        dynamic_batch=dynamic_batch,
        output_names=[output.name for output in session.get_outputs()],
        provenance=Provenance(
            exporter="import",
            source=str(onnx_path),
            source_sha256=hashlib.sha256(onnx_model).hexdigest(),
            onnx_version=onnx.__version__,
            opset=opset,
            fp16=graph.dtype == "float16",
            created_at=datetime.now(UTC),
        ),
        quality=quality,
    )
    shapes = [(batch, request.height, request.width) for batch in ((1, 2) if dynamic_batch else (1,))]
    if stride is not None:  # a wide frame's input: the service feeds such shapes too
        shapes.append((1, max(stride, request.height // 2 // stride * stride), request.width))
    for batch, height, width in shapes:
        images = np.zeros((batch, request.channels, height, width), dtype=graph.dtype)
        try:
            outputs = session.run(None, {graph.name: images})
        except Exception as exc:
            raise ExportError(
                f"onnxruntime fails to run the graph on a {list(images.shape)} input: {reason(exc)}"
            ) from exc
        check_outputs(request.decoder, request.classes, batch, outputs)
    return write_version(store, manifest, onnx_model)
