import math

import pytest

from service.tasks import parse_options
from service.thresholds.rules import ThresholdSet, check_thresholds, parse_class_values
from tests.service.manifests import DEFECTS, classifier_manifest


def test_both_separators_read_the_same():
    assert parse_class_values("crack:0.3, porosity=0.6", DEFECTS) == {"crack": 0.3, "porosity": 0.6}
    assert parse_class_values("crack=0.3,porosity:0.6", DEFECTS) == parse_class_values(
        "crack:0.3,porosity:0.6", DEFECTS
    )


def test_one_value_sets_every_defect_class():
    assert parse_class_values("0.25", DEFECTS) == {"porosity": 0.25, "crack": 0.25, "undercut": 0.25}
    options = parse_options(classifier_manifest(), {"thresholds": "0.25"})
    defaults = ThresholdSet(1, {"porosity": 0.5, "crack": 0.3, "undercut": 0.5}, None)
    assert options.thresholds_for(defaults).values == dict.fromkeys(DEFECTS, 0.25)
    with pytest.raises(ValueError, match="must look like 'crack:0.3,porosity:0.6', got '0.25'"):
        parse_class_values("0.25", None)  # a client that does not know the model's classes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("crack 0.3", "must look like 'crack:0.3,porosity:0.6' or '0.25' for every class, got 'crack 0.3'"),
        ("crack:high", "value for 'crack' is not a number: 'high'"),
        ("crack:1.5", "value for 'crack' must lie between 0 and 1, got 1.5"),
        ("crack:nan", "value for 'crack' must lie between 0 and 1, got nan"),
        ("1.5", "value for every class must lie between 0 and 1"),
        ("rust:0.5", r"names unknown defect classes \['rust'\]"),
        (" , ", "must look like"),
    ],
)
def test_bad_lists_are_refused_saying_which_item(text, message):
    with pytest.raises(ValueError, match=message):
        parse_class_values(text, DEFECTS)


def test_minus_zero_reads_as_zero():
    (value,) = parse_class_values("crack:-0", DEFECTS).values()
    assert value == 0.0 and math.copysign(1.0, value) == 1.0


def test_values_are_checked_the_same_wherever_they_come_from():
    check_thresholds({"crack": 0.0, "porosity": 1}, DEFECTS)
    for values, message in [
        ({"crack": 1.01}, "between 0 and 1"),
        ({"crack": float("inf")}, "between 0 and 1"),
        ({"crack": True}, "between 0 and 1"),
        ({"no_defect": 0.5}, r"unknown defect classes \['no_defect'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_thresholds(values, DEFECTS)
