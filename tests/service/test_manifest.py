import json

import pytest
from pydantic import ValidationError

from service.manifest import InputSpec, ModelManifest, OutputDecoder, Task
from service.tasks import HEADS
from tests.service.manifests import detector_manifest, make_manifest


def with_input(manifest: ModelManifest, **changes: object) -> ModelManifest:
    """`manifest` with its input spec changed, validated again."""
    spec = InputSpec.model_validate({**manifest.input.model_dump(), **changes})
    return manifest.model_copy(update={"input": spec})


def test_padding_to_a_stride_is_written_and_read_back():
    manifest = with_input(detector_manifest(), pad_to_stride=32)

    written = json.loads(manifest.to_json())

    assert written["input"]["pad_to_stride"] == 32
    assert ModelManifest.model_validate(written).input.pad_to_stride == 32


def test_a_manifest_without_padding_to_a_stride_is_written_as_before_the_field_existed():
    manifest = detector_manifest()

    written = json.loads(manifest.to_json())

    assert "pad_to_stride" not in written["input"]
    assert ModelManifest.model_validate(written).input.pad_to_stride is None


def test_padding_to_a_stride_needs_a_letterbox():
    with pytest.raises(ValidationError, match="needs resize 'letterbox'"):
        with_input(detector_manifest(), resize="stretch", pad_to_stride=32)


def test_padding_to_a_stride_needs_an_input_size_the_stride_divides():
    with pytest.raises(ValidationError, match="320x320 is not a multiple of pad_to_stride 96"):
        with_input(detector_manifest(), pad_to_stride=96)


def test_a_stride_below_one_is_refused():
    with pytest.raises(ValidationError, match="pad_to_stride"):
        with_input(detector_manifest(), pad_to_stride=0)


@pytest.mark.parametrize("task", list(Task))
def test_a_decoder_is_accepted_only_for_the_task_whose_head_names_it(task):
    written = make_manifest(task=task.value).model_dump()
    for decoder in OutputDecoder:
        changed = {**written, "output": {**written["output"], "decoder": decoder}}
        if decoder in HEADS[task].decoders:
            assert ModelManifest.model_validate(changed).output.decoder is decoder
        else:
            with pytest.raises(ValidationError, match=f"decoder {decoder} does not fit task {task}"):
                ModelManifest.model_validate(changed)


@pytest.mark.parametrize("task", list(Task))
def test_only_a_task_whose_thresholds_carry_an_nms_iou_needs_a_default_one(task):
    written = {**make_manifest(task=task.value).model_dump(), "nms_iou": None}
    if HEADS[task].carries_nms:
        with pytest.raises(ValidationError, match=f"{task} models need a default nms_iou"):
            ModelManifest.model_validate(written)
    else:
        assert ModelManifest.model_validate(written).nms_iou is None
    assert [t for t in Task if HEADS[t].carries_nms] == [Task.DETECTION]
