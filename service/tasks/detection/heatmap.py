"""A yolo-layout detector's heat map: its class scores on its grid of cells.

The head's A columns are its cells, level by level (YOLOv8: strides 8, 16 and 32; the project's
detector: stride 8 alone), each level row by row. The levels are found from A and the input's size;
a point's score is the largest over the levels' cells covering it, on the finest level's grid.
"""

from __future__ import annotations

import math

import numpy as np

from service.errors import InvalidParameters
from service.manifest import ModelManifest
from service.pipeline.geometry import Geometry

# The grids' strides a head may have, finest first.
STRIDE_SETS = ((8,), (8, 16, 32), (8, 16, 32, 64), (16,), (32,), (16, 32, 64))


def grid_levels(anchors: int, input_width: int, input_height: int) -> list[tuple[int, int]]:
    """(rows, cols) of each level of a head with `anchors` columns on this input; 422 for a layout not known."""
    for strides in STRIDE_SETS:
        levels = [(math.ceil(input_height / s), math.ceil(input_width / s)) for s in strides]
        if sum(rows * cols for rows, cols in levels) == anchors:
            return levels
    raise InvalidParameters(
        f"this detector's {anchors} cells on a {input_width}x{input_height} input fit no grid of strides "
        f"{', '.join('/'.join(map(str, s)) for s in STRIDE_SETS)}: it has no heat map"
    )


def grid_scores(
    outputs: list[np.ndarray], manifest: ModelManifest, geometry: Geometry, candidates: list[str]
) -> tuple[str, np.ndarray]:
    """One image's `[4 + C, A]` head -> (the candidate class with the highest score, its scores on the finest grid)."""
    raw = outputs[0]
    levels = grid_levels(raw.shape[1], geometry.input_width, geometry.input_height)
    indices = [manifest.classes.index(name) for name in candidates]
    scores = raw[4:][indices]  # [k, A]
    best = int(np.argmax(scores.max(axis=1)))
    finest_rows, finest_cols = levels[0]
    grid = np.full((finest_rows, finest_cols), -np.inf, dtype=np.float32)
    start = 0
    for rows, cols in levels:
        level = scores[best, start : start + rows * cols].reshape(rows, cols)
        start += rows * cols
        factor_y, factor_x = finest_rows / rows, finest_cols / cols
        # Each finest cell takes the cell of this level under its centre.
        ys = np.minimum(((np.arange(finest_rows) + 0.5) / factor_y).astype(int), rows - 1)
        xs = np.minimum(((np.arange(finest_cols) + 0.5) / factor_x).astype(int), cols - 1)
        np.maximum(grid, level[ys][:, xs], out=grid)
    return candidates[best], grid
