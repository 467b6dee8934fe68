"""One request's options (`service.tasks.parse_options`): checked against the model they are for, every
mistake answered 422 with a message that says what is wrong."""

import re

import pytest

from service.errors import InvalidParameters
from service.manifest import ModelManifest
from service.tasks import parse_options
from service.tasks.detection.options import DetectionOptions
from service.tasks.segmentation.options import SegmentationOptions
from service.thresholds.rules import ThresholdSet
from tests.service.manifests import DEFECTS, classifier_manifest, detector_manifest, segmenter_manifest


def active_set(manifest: ModelManifest, revision: int = 3, nms_iou: float | None = None) -> ThresholdSet:
    return ThresholdSet(revision=revision, values=dict(manifest.thresholds), nms_iou=nms_iou)


def refusal(manifest: ModelManifest, given: dict, what: str = "parameters") -> InvalidParameters:
    with pytest.raises(InvalidParameters) as refused:
        parse_options(manifest, given, what)
    assert refused.value.status == 422
    return refused.value


def test_threshold_overrides_and_class_filter_are_parsed():
    manifest = classifier_manifest()
    options = parse_options(manifest, {"thresholds": "crack:0.25, porosity:0.7", "classes": "crack"})
    chosen = options.thresholds_for(active_set(manifest))
    assert chosen.values == {"porosity": 0.7, "crack": 0.25, "undercut": 0.5}  # undercut keeps the active value
    assert chosen.revision == 3  # an override never changes which revision the answer names
    assert options.class_filter == frozenset({"crack"})


def test_without_options_the_active_set_is_used_and_every_class_reported():
    manifest = classifier_manifest()
    options = parse_options(manifest, {})
    active = active_set(manifest)
    assert options.thresholds_for(active) == active
    assert options.class_filter is None


def test_one_value_sets_every_defect_class_and_equals_sign_reads_like_colon():
    manifest = classifier_manifest()
    assert parse_options(manifest, {"thresholds": "0.25"}).thresholds_for(active_set(manifest)).values == (
        dict.fromkeys(DEFECTS, 0.25)
    )
    assert parse_options(manifest, {"thresholds": 0.25}).thresholds_for(active_set(manifest)).values == (
        dict.fromkeys(DEFECTS, 0.25)
    )  # a protocol's typed number reads like the query's string
    assert parse_options(manifest, {"thresholds": "crack=0.1"}).thresholds_for(active_set(manifest)).values == {
        "porosity": 0.5,
        "crack": 0.1,
        "undercut": 0.5,
    }


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"thresholds": "crack 0.3"}, "must look like"),
        ({"thresholds": "crack:high"}, "not a number"),
        ({"thresholds": "crack:1.5"}, "between 0 and 1"),
        ({"thresholds": 1.5}, "between 0 and 1"),
        ({"thresholds": "rust:0.5"}, "unknown defect classes \\['rust'\\]"),
        ({"thresholds": "no_defect:0.5"}, "unknown defect classes \\['no_defect'\\]"),
        ({"classes": "crack,dent"}, "unknown defect classes \\['dent'\\]"),
        ({"nms_iou": "0.5"}, "^nms_iou applies to detection models only$"),
        ({"max_detections": "5"}, "^max_detections applies to detection models only$"),
        ({"mask_format": "png"}, "^mask_format applies to segmentation models only$"),
        (
            {"threshold": "crack:0.3"},
            "unknown parameters \\['threshold'\\]; accepted: thresholds, review_thresholds, classes, heatmap, "
            "heatmap_class$",
        ),
    ],
)
def test_bad_options_for_a_classifier_are_refused(given, message):
    assert re.search(message, refusal(classifier_manifest(), given).message)


def test_unknown_names_are_listed_with_the_accepted_ones_in_the_words_of_their_source():
    refused = refusal(detector_manifest(), {"zoom": "2", "bogus": "1"}, what="query parameters")
    assert refused.message == (
        "unknown query parameters ['bogus', 'zoom']; "
        "accepted: thresholds, review_thresholds, classes, heatmap, heatmap_class, nms_iou, max_detections"
    )


def test_an_option_of_another_task_says_which_task_takes_it():
    assert refusal(detector_manifest(), {"mask_format": "png"}).message == (
        "mask_format applies to segmentation models only"
    )
    assert refusal(segmenter_manifest(), {"max_detections": "5"}).message == (
        "max_detections applies to detection models only"
    )


def test_detector_options_are_parsed_and_the_nms_iou_overrides_the_active_sets():
    manifest = detector_manifest()
    options = parse_options(manifest, {"nms_iou": "0.3", "max_detections": "10", "thresholds": "crack:0.2"})
    assert isinstance(options, DetectionOptions)
    assert (options.nms_iou, options.max_detections) == (0.3, 10)
    chosen = options.thresholds_for(active_set(manifest, nms_iou=0.45))
    assert chosen == ThresholdSet(3, {"porosity": 0.5, "crack": 0.2, "undercut": 0.5}, 0.3)
    unset = parse_options(manifest, {}).thresholds_for(active_set(manifest, nms_iou=0.45))
    assert unset.nms_iou == 0.45  # no override: the active set's


def test_detector_options_are_range_checked():
    manifest = detector_manifest()
    for given, message in [
        ({"nms_iou": "1.2"}, "nms_iou: Input should be less than or equal to 1"),
        ({"nms_iou": "-0.1"}, "nms_iou: Input should be greater than or equal to 0"),
        ({"nms_iou": "high"}, "nms_iou: Input should be a valid number"),
        ({"max_detections": "ten"}, "max_detections: Input should be a valid integer"),
        ({"max_detections": "2.5"}, "max_detections: Input should be a valid integer"),
        ({"max_detections": "0"}, "max_detections: Input should be greater than or equal to 1"),
        ({"max_detections": str(manifest.max_detections + 1)}, "max_detections must lie between 1 and 100"),
    ]:
        with pytest.raises(InvalidParameters, match=message):
            parse_options(manifest, given)
    assert parse_options(manifest, {"max_detections": str(manifest.max_detections)}).max_detections == 100


def test_segmentation_mask_format_is_rle_or_png():
    manifest = segmenter_manifest()
    assert parse_options(manifest, {}).mask_format == "rle"
    options = parse_options(manifest, {"mask_format": "png", "classes": "crack, porosity"})
    assert isinstance(options, SegmentationOptions)
    assert (options.mask_format, options.class_filter) == ("png", frozenset({"crack", "porosity"}))
    with pytest.raises(InvalidParameters, match="mask_format: Input should be 'rle' or 'png'"):
        parse_options(manifest, {"mask_format": "bmp"})


@pytest.mark.parametrize(
    ("manifest", "given"),
    [
        (classifier_manifest(), {"thresholds": "nan"}),
        (classifier_manifest(), {"thresholds": "crack:nan"}),
        (classifier_manifest(), {"thresholds": "crack:inf"}),
        (classifier_manifest(), {"thresholds": float("nan")}),
        (classifier_manifest(), {"thresholds": float("inf")}),
        (detector_manifest(), {"nms_iou": "nan"}),
        (detector_manifest(), {"nms_iou": "inf"}),
        (detector_manifest(), {"nms_iou": float("nan")}),
    ],
)
def test_nan_and_infinity_are_refused(manifest, given):
    (name,) = given
    message = refusal(manifest, given).message
    assert message.startswith(name)
    assert "between 0 and 1" in message or "finite" in message


@pytest.mark.parametrize(
    ("manifest", "name"),
    [
        (classifier_manifest(), "thresholds"),
        (classifier_manifest(), "classes"),
        (detector_manifest(), "nms_iou"),
        (detector_manifest(), "max_detections"),
        (segmenter_manifest(), "mask_format"),
    ],
)
def test_booleans_are_refused_not_read_as_numbers(manifest, name):
    assert f"{name} must not be true or false" in refusal(manifest, {name: True}).message
