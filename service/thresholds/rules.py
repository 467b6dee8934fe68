"""The threshold rules, in one place: which values are valid, how `CLASS:VALUE` lists are read, and
which per-class thresholds a prediction uses.

A threshold (or a detector's NMS IoU) is a finite number from 0 to 1, named by a defect class of its
model (never the background). Lists are written `crack:0.3,porosity:0.6` or `crack=0.3,porosity=0.6`,
everywhere (query, command lines, targets); a bare number, `0.25`, gives every defect class that value.

The thresholds store (`store.ThresholdStore.active`) answers, per model,
the active `ThresholdSet`: a numbered revision of per-class score thresholds (and
the NMS IoU for detectors). Every prediction names the revision it used.
Per-request overrides are applied on top by the request's options
(`service.tasks.PredictionOptions.thresholds_for`), and never change the active set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import AfterValidator, Field, Strict

# A threshold or NMS IoU as a client sends it: a JSON number from 0 to 1 (no strings, no booleans),
# with -0 stored as 0.
ThresholdValue = Annotated[float, Strict(), Field(ge=0.0, le=1.0), AfterValidator(lambda value: value + 0.0)]
# A revision number as a client sends it: a JSON integer that fits the database's 64-bit column.
RevisionNumber = Annotated[int, Strict(), Field(ge=1, le=2**63 - 1)]


def is_threshold(value: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1


def check_thresholds(values: Mapping[str, float], defect_classes: Iterable[str], what: str = "thresholds") -> None:
    """Raises ValueError unless every name is a defect class and every value a threshold."""
    unknown_classes(values, defect_classes, what)
    outside = {name: value for name, value in values.items() if not is_threshold(value)}
    if outside:
        raise ValueError(f"{what} must lie between 0 and 1, got {outside}")


def unknown_classes(names: Iterable[str], defect_classes: Iterable[str], what: str) -> None:
    """Raises ValueError naming the names that are no defect class."""
    known = list(defect_classes)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"{what} names unknown defect classes {unknown}; the model's are {known}")


def parse_class_values(text: str, defect_classes: Iterable[str] | None, what: str = "thresholds") -> dict[str, float]:
    """`crack:0.3,porosity:0.6` or `crack=0.3,...` -> {"crack": 0.3, ...}; `0.25` -> every defect class at 0.25.

    Raises ValueError saying which item is wrong. Without `defect_classes` (a client that does not
    know the model yet) the names are not checked and a single value for every class is refused."""
    classes = None if defect_classes is None else list(defect_classes)
    form = f"{what} must look like 'crack:0.3,porosity:0.6'" + ("" if classes is None else " or '0.25' for every class")
    items = [item.strip() for item in text.split(",") if item.strip()]
    if classes is not None and len(items) == 1 and _is_number(items[0]):
        return dict.fromkeys(classes, _value(items[0], "every class", what))
    values: dict[str, float] = {}
    for item in items:
        name, sep, value = item.replace("=", ":", 1).partition(":")
        if not sep:
            raise ValueError(f"{form}, got {item!r}")
        values[name.strip()] = _value(value, repr(name.strip()), what)
    if not values:
        raise ValueError(f"{form}, got {text!r}")
    if classes is not None:
        unknown_classes(values, classes, what)
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _value(text: str, name: str, what: str) -> float:
    try:
        number = float(text) + 0.0
    except ValueError:
        raise ValueError(f"{what} value for {name} is not a number: {text.strip()!r}") from None
    if not is_threshold(number):
        raise ValueError(f"{what} value for {name} must lie between 0 and 1, got {text.strip()}")
    return number


@dataclass(frozen=True)
class ThresholdSet:
    revision: int
    values: dict[str, float]  # one per defect class: at or above it, the class rejects the part
    nms_iou: float | None
    # The review band's lower bound, for the classes that have one: at or above it and below the
    # class's value, the class sends the part to review. Empty: no band, accept or reject only.
    review: dict[str, float] = field(default_factory=dict)


def check_review(review: Mapping[str, float], values: Mapping[str, float]) -> None:
    """A review band per class: a known defect class, 0..1, and never above the class's reject threshold."""
    for name, low in review.items():
        if name not in values:
            raise ValueError(f"review threshold for {name!r}, which is not a defect class: {sorted(values)}")
        if not is_threshold(low):
            raise ValueError(f"review threshold for {name!r} must lie between 0 and 1, got {low}")
        if low > values[name]:
            raise ValueError(
                f"review threshold for {name!r} ({low}) is above its reject threshold ({values[name]}): the band "
                "runs from the review threshold up to the reject threshold"
            )
