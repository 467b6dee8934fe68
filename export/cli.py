"""`python -m export`: ship a checkpoint or an ONNX graph into the model store, and browse the store.

    python -m export torch --arch resnet18 --checkpoint best.pt --name weld-classifier \\
        --classes no_defect,porosity,crack,undercut --background-class no_defect \\
        --input-size 224x224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --thresholds crack=0.3
    python -m export import --onnx yolo.onnx --name weld-yolo --task detection --decoder yolo \\
        --classes porosity,crack,undercut --mean 0,0,0 --std 1,1,1 --resize letterbox
    python -m export list
    python -m export show weld-classifier:2

Any model field may come from a JSON sidecar file instead (`--sidecar model.json`, keys as the
option names with underscores, plus `quality`); options given on the command line win.
Refusals print one line on stderr and exit with status 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from service.manifest import ModelManifest, OutputDecoder, Quality, Task
from service.model_store import ModelStoreError, ModelVersion, load_version, model_names, parse_ref, version_numbers
from service.thresholds.rules import parse_class_values

from .errors import ExportError, validation_message

if TYPE_CHECKING:
    from .exporting import ExportRequest

DEFAULT_STORE = Path("model_store")
_TASK_DECODER = {Task.CLASSIFICATION: OutputDecoder.SOFTMAX, Task.SEGMENTATION: OutputDecoder.SEGMENTATION_LOGITS}

# Model fields: (option, help). A sidecar uses the same names with underscores.
_MODEL_OPTIONS = {
    "name": ("--name", "model name in the store, e.g. weld-classifier"),
    "task": ("--task", "classification, detection or segmentation (implied by most architectures)"),
    "decoder": ("--decoder", "softmax, sigmoid, yolo, boxes_scores_labels or segmentation_logits"),
    "classes": ("--classes", "class names in output order, comma-separated"),
    "background_class": ("--background-class", "the class that means no defect (never rejects a part)"),
    "input_size": ("--input-size", "model input as HEIGHTxWIDTH, e.g. 224x224"),
    "channels": ("--channels", "1 (grayscale) or 3 (RGB); default: one per --mean value"),
    "mean": ("--mean", "per-channel mean after scaling, comma-separated"),
    "std": ("--std", "per-channel std after scaling, comma-separated"),
    "scale": ("--scale", "pixel scale applied before mean/std (default 1/255)"),
    "resize": ("--resize", "stretch (default) or letterbox"),
    "resize_filter": (
        "--resize-filter",
        "bilinear_antialias (default: Pillow/torchvision training) or linear (OpenCV INTER_LINEAR, ultralytics)",
    ),
    "pad_to_stride": (
        "--pad-to-stride",
        "letterbox padding only up to a multiple of this stride, for a graph with dynamic image axes (default for "
        "such ultralytics files: the model's stride, as YOLO.predict); none: pad to the full input size",
    ),
    "thresholds": (
        "--thresholds",
        "default thresholds, per class (crack=0.3,porosity=0.6; others 0.5) or one for every class (0.25)",
    ),
    "nms_iou": ("--nms-iou", "default NMS IoU for detectors (default 0.5)"),
    "max_detections": ("--max-detections", "most detections per image (default 100)"),
    "description": ("--description", "one line shown with the model"),
}
_SIDECAR_ONLY = {"quality"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export", description="Ship models into the model store and browse it."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    torch_command = commands.add_parser("torch", help="export a PyTorch checkpoint to a verified ONNX version")
    torch_command.add_argument(
        "--arch",
        required=True,
        help="torchvision model name, weld-classifier, weld-detector, unet, "
        "or 'module' for a model saved whole with torch.save(model)",
    )
    torch_command.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="state_dict (or a dict with 'state_dict' or 'model'), or the saved module",
    )
    torch_command.add_argument("--fp16", action="store_true", help="float16 weights (input stays uint8)")
    torch_command.add_argument(
        "--heatmap-scale",
        type=_positive,
        help="classifiers with class activation maps: the activation their heat maps show at full intensity "
        "(default: the largest on the parity images; set it from frames with defects)",
    )
    _add_model_options(torch_command)
    torch_command.set_defaults(handler=_export_torch)

    import_command = commands.add_parser("import", help="add an existing ONNX graph with a manifest")
    import_command.add_argument("--onnx", required=True, type=Path, help="the ONNX file (weights inside)")
    _add_model_options(import_command)
    import_command.set_defaults(handler=_import_onnx)

    list_command = commands.add_parser("list", help="list every model version in the store")
    list_command.add_argument("--store", type=Path, default=DEFAULT_STORE)
    list_command.set_defaults(handler=_list)

    show_command = commands.add_parser("show", help="show one version's manifest (the latest by default)")
    show_command.add_argument("ref", metavar="NAME[:VERSION]")
    show_command.add_argument("--store", type=Path, default=DEFAULT_STORE)
    show_command.set_defaults(handler=_show)

    demo_command = commands.add_parser("demo", help="train the demo weld models on synthetic data and export them")
    demo_command.add_argument("--store", type=Path, default=DEFAULT_STORE)
    demo_command.add_argument("--seed", type=int, default=0)
    demo_command.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ExportError, ModelStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _add_model_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--store", type=Path, default=DEFAULT_STORE, help="model store folder (default model_store)")
    command.add_argument("--sidecar", type=Path, help="JSON file with any of the model fields below")
    for field, (option, help_text) in _MODEL_OPTIONS.items():
        command.add_argument(option, dest=field, help=help_text)


def _export_torch(args: argparse.Namespace) -> int:
    # torch loads only for the commands that need it: list and show stay quick.
    from .exporting import export_model
    from .registry import SAVED_MODULE, load_checkpoint_model, load_saved_module, resolve_architecture

    fields = _fields(args)
    if args.arch == SAVED_MODULE:
        request = _request(fields, fp16=args.fp16)
        model = load_saved_module(args.checkpoint)
    else:
        architecture = resolve_architecture(args.arch)
        request = _request(fields, fp16=args.fp16, task=architecture.task, decoders=architecture.decoders)
        model = load_checkpoint_model(
            architecture, args.checkpoint, request.channels, len(request.classes), (request.height, request.width)
        )
    request.heatmap_scale = args.heatmap_scale
    with open(args.checkpoint, "rb") as file:
        checkpoint_sha256 = hashlib.file_digest(file, "sha256").hexdigest()
    version = export_model(
        model,
        request,
        args.store,
        source=str(args.checkpoint),
        source_sha256=checkpoint_sha256,
        architecture=args.arch,
        quality=_quality(fields),
    )
    _report_written(version)
    return 0


def _import_onnx(args: argparse.Namespace) -> int:
    from .importing import check_stride, import_onnx, read_graph, ultralytics_fields

    model, graph = read_graph(args.onnx)
    fields = _fields(args)
    inferred = ultralytics_fields(model, graph)
    if inferred is not None:
        implied, said, stride = inferred
        print(said)
        fields = {**implied, **fields}  # what the options say wins
    graph_size = (graph.height, graph.width) if graph.height and graph.width else None
    request = _request(fields, fp16=False, channels=graph.channels, input_size=graph_size)
    if inferred is not None:
        check_stride(request.height, request.width, stride)
    version = import_onnx(args.onnx, request, args.store, quality=_quality(fields))
    _report_written(version)
    return 0


def _list(args: argparse.Namespace) -> int:
    names = model_names(args.store)
    if not names:
        print(f"no models in {args.store}")
        return 0
    rows = [("MODEL", "VERSION", "TASK", "DECODER", "CLASSES", "INPUT", "EXPORTER", "PARITY", "CREATED (UTC)")]
    for name in names:
        for number in version_numbers(args.store / name):
            try:
                manifest = load_version(args.store, name, number).manifest
            except ModelStoreError as exc:
                rows.append((name, str(number), f"unreadable: {exc}", "", "", "", "", "", ""))
                continue
            parity = manifest.provenance.parity
            rows.append(
                (
                    name,
                    str(number),
                    manifest.task,
                    manifest.output.decoder,
                    str(len(manifest.classes)),
                    _input_text(manifest),
                    manifest.provenance.exporter,
                    f"{parity.max_abs_diff:.1e}" if parity else "-",
                    f"{manifest.provenance.created_at:%Y-%m-%d %H:%M}",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _show(args: argparse.Namespace) -> int:
    name, number = parse_ref(args.ref)
    version = load_version(args.store, name, number)
    manifest, provenance = version.manifest, version.manifest.provenance
    classes = ", ".join(f"{c} (background)" if c == manifest.background_class else c for c in manifest.classes)
    spec = manifest.input
    lines = [
        ("model", f"{manifest.ref}  ({version.path})"),
        ("description", manifest.description or "-"),
        ("task", f"{manifest.task}, decoder {manifest.output.decoder}, outputs {', '.join(manifest.output.names)}"),
        ("classes", classes),
        (
            "input",
            f"{spec.name} {_input_text(manifest)}, {'dynamic batch' if spec.dynamic_batch else 'one image per run'}"
            + (f", padded only to a multiple of {spec.pad_to_stride}" if spec.pad_to_stride else ""),
        ),
        (
            "normalisation",
            f"(pixels * {spec.scale:.6g} - {list(spec.mean)}) / {list(spec.std)}, "
            f"{'inside the graph' if spec.normalization_in_graph else 'by the service'}",
        ),
        ("thresholds", ", ".join(f"{c}={t:g}" for c, t in manifest.thresholds.items()) or "-"),
    ]
    if manifest.nms_iou is not None:
        lines.append(("nms", f"IoU {manifest.nms_iou:g}, at most {manifest.max_detections} detections"))
    lines += [
        (
            "created",
            f"{provenance.created_at:%Y-%m-%d %H:%M:%S} UTC by {provenance.exporter}, "
            f"opset {provenance.opset}, fp16 {'yes' if provenance.fp16 else 'no'}",
        ),
        ("source", provenance.source + (f"  sha256 {provenance.source_sha256}" if provenance.source_sha256 else "")),
        ("architecture", provenance.architecture or "-"),
        (
            "built with",
            ", ".join(
                f"{tool} {release}"
                for tool, release in (
                    ("torch", provenance.torch_version),
                    ("torchvision", provenance.torchvision_version),
                    ("onnx", provenance.onnx_version),
                )
                if release
            )
            or "-",
        ),
    ]
    parity = provenance.parity
    if parity is None:
        lines.append(("parity", "none (imported graph)"))
    else:
        lines.append(
            (
                "parity",
                f"max |onnxruntime - torch| {parity.max_abs_diff:.2g} within {parity.tolerance:.2g}, "
                f"{parity.samples} images at batch size {', '.join(map(str, parity.batch_sizes))}",
            )
        )
        if parity.details:
            lines.append(("", ", ".join(f"{key} {value:.2g}" for key, value in parity.details.items())))
    if manifest.activation_map is not None:
        cam = manifest.activation_map
        lines.append(
            ("heat maps", f"class activation (output {cam.features}, weights {cam.weights}, full at {cam.scale:g})")
        )
    if manifest.quality is None:
        lines.append(("quality", "not measured"))
    else:
        lines.append(("quality", manifest.quality.dataset))
        lines.append(("", ", ".join(f"{key} {value:.3g}" for key, value in manifest.quality.metrics.items())))
    size = version.onnx_path.stat().st_size
    lines.append(("model file", f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"))
    for label, text in lines:
        print(f"{label:<14}{text}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    demo.main(args)
    return 0


def _report_written(version: ModelVersion) -> None:
    parity = version.manifest.provenance.parity
    check = (
        f"parity {parity.max_abs_diff:.2g} within {parity.tolerance:.2g} on {parity.samples} images"
        if parity
        else "shapes checked in onnxruntime"
    )
    print(f"wrote {version.manifest.ref} to {version.path} ({check})")


def _input_text(manifest: ModelManifest) -> str:
    spec = manifest.input
    return f"{spec.channels}x{spec.height}x{spec.width} {spec.dtype} {spec.resize}"


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """The sidecar's fields, overridden by the options given on the command line."""
    fields: dict[str, Any] = {}
    if args.sidecar is not None:
        try:
            fields = json.loads(args.sidecar.read_text())
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read sidecar {args.sidecar}: {exc}") from exc
        if not isinstance(fields, dict):
            raise ExportError(f"sidecar {args.sidecar} must hold a JSON object")
        unknown = sorted(set(fields) - set(_MODEL_OPTIONS) - _SIDECAR_ONLY)
        if unknown:
            known = ", ".join(sorted({*_MODEL_OPTIONS, *_SIDECAR_ONLY}))
            raise ExportError(f"sidecar {args.sidecar}: unknown field(s) {', '.join(unknown)} (known: {known})")
    for field in _MODEL_OPTIONS:
        if getattr(args, field) is not None:
            fields[field] = getattr(args, field)
    return fields


def _request(
    fields: dict[str, Any],
    *,
    fp16: bool,
    task: Task | None = None,
    decoders: Sequence[OutputDecoder] = (),
    channels: int | None = None,
    input_size: tuple[int, int] | None = None,
) -> ExportRequest:
    """Parse the fields (strings from options, JSON values from a sidecar) into a request.

    `task`, `decoders`, `channels` and `input_size` are what the architecture or graph implies:
    defaults that the fields may repeat but not contradict (the graph's own checks catch the latter).
    """
    from .exporting import ExportRequest

    given_task = _parse(fields, "task", Task)
    if task is not None and given_task not in (None, task):
        raise ExportError(f"this architecture is a {task} model, not {given_task}")
    task = task or given_task
    if task is None:
        raise ExportError("missing --task: classification, detection or segmentation")
    decoder = _parse(fields, "decoder", OutputDecoder)
    if decoders and decoder not in (None, *decoders):
        raise ExportError(f"this architecture's output reads with {' or '.join(decoders)}, not {decoder}")
    decoder = decoder or (decoders[0] if decoders else _TASK_DECODER.get(task))
    if decoder is None:
        raise ExportError("missing --decoder: detection graphs are read with yolo or boxes_scores_labels")
    mean = _require(fields, "mean", _numbers)
    height, width = _parse(fields, "input_size", _size) or input_size or _missing("input_size")
    classes = _require(fields, "classes", _names)
    background_class = _parse(fields, "background_class", str)
    defects = [name for name in classes if name != background_class]
    return ExportRequest(
        name=_require(fields, "name", str),
        task=task,
        classes=classes,
        background_class=background_class,
        channels=_parse(fields, "channels", int, default=len(mean) if channels is None else channels),
        height=height,
        width=width,
        resize=_parse(fields, "resize", str, default="stretch"),
        resize_filter=_parse(fields, "resize_filter", str, default="bilinear_antialias"),
        pad_to_stride=_parse(fields, "pad_to_stride", _stride),
        mean=mean,
        std=_require(fields, "std", _numbers),
        decoder=decoder,
        scale=_parse(fields, "scale", _fraction, default=1 / 255),
        thresholds=_parse(fields, "thresholds", lambda value: _thresholds(value, defects)),
        nms_iou=_parse(fields, "nms_iou", _fraction),
        max_detections=_parse(fields, "max_detections", int, default=100),
        description=_parse(fields, "description", str, default=""),
        fp16=fp16,
    )


def _quality(fields: dict[str, Any]) -> Quality | None:
    if "quality" not in fields:
        return None
    try:
        return Quality.model_validate(fields["quality"])
    except ValidationError as exc:
        raise ExportError(f"bad quality in the sidecar: {validation_message(exc)}") from exc


def _parse(fields: dict[str, Any], field: str, convert: Callable[[Any], Any], default: Any = None) -> Any:
    if fields.get(field) is None:
        return default
    try:
        return convert(fields[field])
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        option = _MODEL_OPTIONS[field][0]
        raise ExportError(f"bad {option} {fields[field]!r}: {_MODEL_OPTIONS[field][1]}") from exc


def _require(fields: dict[str, Any], field: str, convert: Callable[[Any], Any]) -> Any:
    value = _parse(fields, field, convert)
    return _missing(field) if value is None else value


def _missing(field: str) -> Any:
    raise ExportError(f"missing {_MODEL_OPTIONS[field][0]} (or {field!r} in the sidecar): {_MODEL_OPTIONS[field][1]}")


def _items(value: Any) -> list[Any]:
    """A comma-separated option or a JSON list (or a single JSON value)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return list(value) if isinstance(value, list) else [value]


def _names(value: Any) -> list[str]:
    names = _items(value)
    if not names or not all(isinstance(name, str) for name in names):
        raise ValueError("expected names")
    return names


def _numbers(value: Any) -> tuple[float, ...]:
    numbers = tuple(_fraction(item) for item in _items(value))
    if not numbers:
        raise ValueError("expected numbers")
    return numbers


def _fraction(value: Any) -> float:
    # Fraction reads "0.5" and "1/255" alike; bool is not a number here.
    if isinstance(value, bool):
        raise TypeError("expected a number")
    return float(Fraction(str(value)))


def _stride(value: Any) -> int | None:
    """A positive stride; `none` or 0 for none."""
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    if isinstance(value, bool):
        raise TypeError("expected a stride")
    stride = int(value)
    if stride < 0:
        raise ValueError("expected a positive stride")
    return stride or None


def _size(value: Any) -> tuple[int, int]:
    parts = value.lower().split("x") if isinstance(value, str) else value
    height, width = (int(part) for part in parts)
    return height, width


def _thresholds(value: Any, defect_classes: list[str]) -> dict[str, float]:
    """`crack=0.3,porosity=0.6` (or `crack:0.3`), one value for every defect class, or a JSON object."""
    if isinstance(value, dict):
        return {str(name): _fraction(threshold) for name, threshold in value.items()}
    return parse_class_values(",".join(str(item) for item in _items(value)), defect_classes)
