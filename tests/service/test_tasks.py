"""Every task has one head with every part the service and the sweep ask of it."""

from service.manifest import Task
from service.tasks import HEADS
from service.thresholds.sweep import SweepTally, Truth
from tests.service.manifests import make_manifest


def test_every_task_has_a_head_and_its_sweep_states_what_a_positive_is():
    assert set(HEADS) == set(Task)
    positives = set()
    for task, head in HEADS.items():
        manifest = make_manifest(task=task.value)
        tally = SweepTally(manifest, head.evidence(manifest))
        tally.add(
            Truth(present=frozenset(), label=manifest.classes[0]), _answer_without_defects(task, manifest.classes)
        )
        report = tally.report(current={name: 0.5 for name in manifest.defect_classes}, revision=1, nms_iou=None)
        assert report.positive and report.to_report().positive == report.positive
        positives.add(report.positive)
    assert len(positives) == len(Task)  # each in its own words


def _answer_without_defects(task: Task, classes: list[str]) -> dict:
    if task is Task.CLASSIFICATION:
        return {"scores": {name: 1.0 / len(classes) for name in classes}}
    return {"detections": []} if task is Task.DETECTION else {"segments": []}
