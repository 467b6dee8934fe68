import pytest

from service.api.query import parse_options
from service.errors import InvalidParameters
from service.manifest import ModelManifest
from tests.service.manifests import classifier_manifest, detector_manifest


def test_threshold_overrides_and_class_filter_are_parsed():
    options = parse_options(classifier_manifest(), {"thresholds": "crack:0.25, porosity:0.7", "classes": "crack"})
    assert options.thresholds == {"crack": 0.25, "porosity": 0.7}
    assert options.classes == frozenset({"crack"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"thresholds": "crack 0.3"}, "must look like"),
        ({"thresholds": "crack:high"}, "not a number"),
        ({"thresholds": "crack:1.5"}, "between 0 and 1"),
        ({"thresholds": "rust:0.5"}, "unknown defect classes \\['rust'\\]"),
        ({"thresholds": "no_defect:0.5"}, "unknown defect classes \\['no_defect'\\]"),
        ({"classes": "crack,dent"}, "unknown defect classes \\['dent'\\]"),
        ({"nms_iou": "0.5"}, "detection models only"),
        ({"max_detections": "5"}, "detection models only"),
        ({"mask_format": "bmp"}, "'rle' or 'png'"),
        ({"threshold": "crack:0.3"}, "unknown query parameters \\['threshold'\\]"),
    ],
)
def test_bad_options_for_a_classifier_are_refused(kwargs, message):
    with pytest.raises(InvalidParameters, match=message):
        parse_options(classifier_manifest(), kwargs)


def test_detector_options_are_range_checked():
    manifest: ModelManifest = detector_manifest()
    options = parse_options(manifest, {"nms_iou": "0.3", "max_detections": "10"})
    assert (options.nms_iou, options.max_detections) == (0.3, 10)
    for query, message in [
        ({"nms_iou": "1.2"}, "between 0 and 1"),
        ({"nms_iou": "high"}, "nms_iou must be a number, got 'high'"),
        ({"nms_iou": "nan"}, "nms_iou must be finite"),
        ({"max_detections": "ten"}, "max_detections must be an integer"),
        ({"max_detections": "2.5"}, "max_detections must be an integer"),
        ({"max_detections": str(manifest.max_detections + 1)}, "max_detections must lie between 1 and"),
    ]:
        with pytest.raises(InvalidParameters, match=message):
            parse_options(manifest, query)
