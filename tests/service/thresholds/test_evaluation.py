import math

import numpy as np
import pytest

from service.pipeline.boxes import box_iou
from service.thresholds.evaluation import (
    accuracy,
    average_precision,
    average_precision_per_class,
    confusion_matrix,
    iou_per_class,
    match_detections,
    precision_per_class,
    recall_per_class,
)


def test_confusion_matrix_counts_true_rows_against_predicted_columns() -> None:
    confusion = confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]), 3)
    assert confusion.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_accuracy_recall_and_precision_of_a_small_confusion() -> None:
    confusion = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])  # class 2 never occurs, is predicted twice
    assert accuracy(confusion) == pytest.approx(5 / 8)
    recall = recall_per_class(confusion)
    assert recall[:2].tolist() == pytest.approx([3 / 4, 2 / 4]) and math.isnan(recall[2])
    assert precision_per_class(confusion).tolist() == pytest.approx([1.0, 2 / 3, 0.0])


def test_iou_per_class_of_two_small_masks() -> None:
    truth = np.array([[0, 1], [1, 1]])
    predicted = np.array([[1, 1], [0, 1]])
    iou = iou_per_class(confusion_matrix(truth, predicted, 3))
    # class 1: 2 shared pixels of 4 marked by either; class 0: none of 2; class 2: nowhere
    assert iou[:2].tolist() == pytest.approx([0.0, 0.5]) and math.isnan(iou[2])


def test_box_iou_of_overlapping_disjoint_and_identical_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10]])
    others = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 0, 0]])
    assert box_iou(boxes, others)[0].tolist() == pytest.approx([1 / 3, 0.0, 1.0, 0.0])


def test_a_second_detection_of_the_same_object_is_a_false_positive() -> None:
    truth = np.array([[0, 0, 10, 10]])
    detections = np.array([[0, 0, 10, 9], [0, 0, 10, 10], [0, 0, 3, 3]])
    hits = match_detections(detections, np.array([0.6, 0.9, 0.8]), truth, iou_threshold=0.5)
    # The best-scored one takes the object; the overlapping one comes too late; the small one misses.
    assert hits.tolist() == [False, True, False]


def test_average_precision_interpolates_over_all_recall_steps() -> None:
    # Ranked: hit, miss, hit with 2 objects -> precision 1 at recall 0.5, 2/3 at recall 1.
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3
    )
    # Interpolation: a late hit lifts the precision of the earlier recall levels.
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([False, True, True]), 2) == pytest.approx(2 / 3)
    assert average_precision(np.array([0.9, 0.5]), np.array([True, True]), 4) == pytest.approx(0.5)
    assert average_precision(np.array([]), np.array([], dtype=bool), 3) == 0.0
    assert math.isnan(average_precision(np.array([0.9]), np.array([False]), 0))


def test_average_precision_per_class_pools_images_and_keeps_classes_apart() -> None:
    truths = [
        (np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 1])),
        (np.array([[0, 0, 10, 10]]), np.array([0])),
    ]
    predictions = [
        # class 0 right (0.9); a class-1 box on the class-0 object does not count for either
        (np.array([[0, 0, 10, 10], [0, 0, 10, 10]]), np.array([0.9, 0.8]), np.array([0, 1])),
        # class 0: a miss ranked above the hit
        (np.array([[50, 50, 60, 60], [1, 0, 10, 10]]), np.array([0.95, 0.7]), np.array([0, 0])),
    ]
    ap = average_precision_per_class(predictions, truths, num_classes=3)
    # class 0 ranked: miss (0.95), hit (0.9), hit (0.7) of 2 objects -> precision 2/3 at recall 0.5 and 1
    assert ap[0] == pytest.approx(2 / 3)
    assert ap[1] == 0.0
    assert math.isnan(ap[2])
    assert np.nanmean(ap) == pytest.approx(1 / 3)
