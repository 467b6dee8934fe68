"""Every task has one head with every part the service and the sweep ask of it, and lives in one folder."""

import ast
import importlib
import json
import re
from pathlib import Path

import numpy as np

from service.manifest import ModelManifest, Task
from service.pipeline.geometry import Geometry
from service.tasks import ANSWERS, HEADS, PredictionOptions, head_for, parse_options
from service.tasks.base import Answer
from service.thresholds.rules import ThresholdSet
from service.thresholds.sweep import SweepTally, Truth
from tests.service.manifests import make_manifest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
TASKS = SERVICE / "tasks"


def _segmentation_logits(classes: int) -> np.ndarray:
    logits = np.zeros((classes, 64, 64), dtype=np.float32)
    logits[0] = 5.0  # the background (class 0) wins every pixel
    return logits


# Per task, model outputs of one 64x64 input in which nothing crosses its threshold, as the graph of
# `make_manifest`'s decoder gives them (batch axis removed), for C classes.
OUTPUTS_WITHOUT_DEFECTS = {
    Task.CLASSIFICATION: lambda classes: [np.zeros(classes, dtype=np.float32)],  # every class at 1 / C
    Task.DETECTION: lambda classes: [np.zeros((4 + classes, 16), dtype=np.float32)],  # 16 anchors scoring 0
    Task.SEGMENTATION: lambda classes: [_segmentation_logits(classes)],
}


def _answer_without_defects(manifest: ModelManifest) -> Answer:
    head = head_for(manifest)
    thresholds = ThresholdSet(revision=2, values=dict(manifest.thresholds), nms_iou=manifest.nms_iou)
    geometry = Geometry.stretch((80, 60), (64, 64))
    return head.postprocess(
        OUTPUTS_WITHOUT_DEFECTS[manifest.task](len(manifest.classes)),
        geometry,
        manifest,
        thresholds,
        parse_options(manifest, {}),
    )


def test_every_task_has_a_head_and_its_sweep_states_what_a_positive_is():
    assert set(HEADS) == set(Task)
    positives = set()
    for task, head in HEADS.items():
        manifest = make_manifest(task=task.value)
        assert head.task is task and head_for(manifest) is head
        answer = _answer_without_defects(manifest)
        tally = SweepTally(manifest, head.evidence(manifest))
        tally.add(Truth(present=frozenset(), label=manifest.classes[0]), answer)
        report = tally.report(current={name: 0.5 for name in manifest.defect_classes}, revision=1, nms_iou=None)
        assert report.positive and report.to_report().positive == report.positive
        positives.add(report.positive)
    assert len(positives) == len(Task)  # each in its own words


def test_every_head_answers_its_own_typed_answer_which_reads_back_from_its_json():
    for task, head in HEADS.items():
        manifest = make_manifest(task=task.value)
        answer = _answer_without_defects(manifest)
        assert type(answer) is head.answer
        assert (answer.task, answer.decision, answer.defects) == (task.value, "accept", [])
        assert (answer.image.width, answer.image.height, answer.thresholds_revision) == (80, 60, 2)
        body = answer.model_dump(mode="json")
        json.dumps(body, allow_nan=False)
        read = ANSWERS.validate_python(body)  # told apart by `task` alone
        assert type(read) is head.answer
        assert read.model_dump(mode="json") == body


def test_every_head_gives_the_tensors_its_metadata_lists_a_row_per_image():
    for task, head in HEADS.items():
        manifest = make_manifest(task=task.value)
        specs = head.output_specs(manifest)
        tensors = head.output_tensors(manifest, [_answer_without_defects(manifest), None])
        assert [t.name for t in tensors] == [s.name for s in specs], task
        for tensor, spec in zip(tensors, specs, strict=True):
            assert tensor.datatype == spec.datatype, (task, spec.name)
            assert len(tensor.data) == 2, (task, spec.name)  # the image that failed keeps its row


# --- what adding a task touches ------------------------------------------------------------------
#
# Adding a task touches exactly: a folder `service/tasks/<task>/` (its head in `__init__.py`, and its
# answer, post-processing, tensors and samples modules; `options.py` when it takes options of its own),
# its head in `service.tasks.HEADS`, its name in `service.manifest.Task`, and a demo model of it in
# `export/demo.py` (served by `make serve`, checked in under `model_store/`). Nothing else in `service/`
# names a task: it asks the model's head. The tests below fail when one of these is missing or when
# code outside the folders starts to tell the tasks apart.

TASK_MODULES = ("agreement", "answer", "postprocess", "samples", "tensors")


def _task_folders() -> set[str]:
    return {path.parent.name for path in TASKS.glob("*/__init__.py")}


def test_the_tasks_the_manifest_names_are_the_heads_and_the_folders():
    assert {task.value for task in Task} == {task.value for task in HEADS} == _task_folders()


def test_everything_of_a_task_lives_in_its_folder():
    for task, head in HEADS.items():
        package = f"service.tasks.{task.value}"
        assert type(head).__module__ == package
        for name in TASK_MODULES:
            importlib.import_module(f"{package}.{name}")  # raises when the folder lacks one
        assert head.answer.__module__ == f"{package}.answer"
        assert head.options is PredictionOptions or head.options.__module__ == f"{package}.options"
        assert type(head).postprocess.__module__ == package
        assert head.output_specs.__module__ == head.output_tensors.__module__ == f"{package}.tensors"
        manifest = make_manifest(task=task.value)
        assert type(head.evidence(manifest)).__module__ == f"{package}.samples"
        # The head's post-processing is its folder's `postprocess_<task>`.
        function = getattr(importlib.import_module(f"{package}.postprocess"), f"postprocess_{task.value}")
        assert function.__module__ == f"{package}.postprocess"
        assert vars(importlib.import_module(package))[function.__name__] is function


def _demo_model_tasks() -> dict[str, Task]:
    """The demo models `export/demo.py` defines (`DemoModel(name=..., task=Task.X, ...)`), read from its
    source: importing it would import torch."""
    tree = ast.parse((ROOT / "export" / "demo.py").read_text())
    demos: dict[str, Task] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "DemoModel":
            keywords = {k.arg: k.value for k in node.keywords}
            task = keywords["task"]
            assert isinstance(task, ast.Attribute) and isinstance(task.value, ast.Name) and task.value.id == "Task"
            demos[ast.literal_eval(keywords["name"])] = Task[task.attr]
    return demos


def test_every_task_has_a_demo_model_and_the_model_store_holds_it():
    demos = _demo_model_tasks()
    assert set(demos.values()) == set(Task)
    for name, task in demos.items():
        manifests = sorted((ROOT / "model_store" / name).glob("*/manifest.json"))
        assert manifests, f"model_store has no version of the demo model {name}"
        assert {json.loads(path.read_text())["task"] for path in manifests} == {task.value}


# Outside `service/tasks/`, code that tells the tasks apart: a task's member or name, a comparison of a
# `.task`, or an import of one task's modules.
_MEMBERS = "|".join(task.name for task in Task)
_NAMES = "|".join(task.value for task in Task)
_TELLS_TASKS_APART = [
    re.compile(rf"\bTask\.(?:{_MEMBERS})\b"),
    re.compile(r"(?<![\w.])Task\s*(?:\[|\(\s*['\"])"),  # Task["DETECTION"], Task("detection"); not asyncio.Task[...]
    re.compile(r"\.task\s*(?:==|!=|\bis\b|\bin\b)"),
    re.compile(r"(?:==|!=|\bis\b)\s*[\w.]*\.task\b"),
    re.compile(rf"\bservice\.tasks\.(?:{_NAMES})\b"),
    re.compile(rf"from\s+service\.tasks\s+import\s+[^\n]*\b(?:{_NAMES})\b"),
    re.compile(rf"""['"](?:{_NAMES})['"]"""),
]


def test_no_module_outside_the_task_folders_tells_the_tasks_apart():
    found = []
    for path in sorted(SERVICE.rglob("*.py")):
        if path.is_relative_to(TASKS):
            continue
        text = path.read_text()
        if path == SERVICE / "manifest.py":  # defines `Task`: its members' values are the task names
            text = re.sub(rf"(?m)^\s+(?:{_MEMBERS}) = .*$", "", text)
        for number, line in enumerate(text.splitlines(), start=1):
            if any(pattern.search(line) for pattern in _TELLS_TASKS_APART):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_the_source_scan_catches_what_it_looks_for():
    for line in [
        "if manifest.task is Task.DETECTION:",
        "if self.manifest.task == Task.SEGMENTATION:",
        "if task.value == 'classification':",
        "from service.tasks.detection.options import DetectionOptions",
        "if Task.CLASSIFICATION in tasks:",
        'if manifest.task in (Task("detection"),):',
        'if Task["SEGMENTATION"] in found:',
        "if head.task is task:",
    ]:
        assert any(pattern.search(line) for pattern in _TELLS_TASKS_APART), line
    for line in ["head = head_for(manifest)", "task: Task", "head = HEADS[self.task]", "job: asyncio.Task[None]"]:
        assert not any(pattern.search(line) for pattern in _TELLS_TASKS_APART), line
