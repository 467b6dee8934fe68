"""Heat maps: where on the frame the evidence for one defect class lies, in answers that ask for one.

A request asks with `heatmap` (off by default: an answer that does not ask costs exactly what it
did). The map is of one class: `heatmap_class`, else the defect class the model scores highest
on the frame. The methods, and what their values are:

- `cam` (classifiers whose export recorded it, `export.activation`): the class activation map,
  `sum_k W_ck F_k` over the last convolutional features F, read from the same run as the answer
  (the graph's extra output, fetched only for these requests) and one weighted sum. Its unit is
  the model's own; the export states the value shown at full intensity (`ActivationMap.scale`).
- `occlusion` (any classifier): how much the class's probability drops when a patch of the frame
  is covered with the mean pixel. The frame's content is cut into an 8 x 8 grid; a patch of 2 x 2
  cells slides one cell at a time, so 49 more images go through the model (through the batcher,
  with everyone else's); a cell's value is the mean drop of the patches that cover it. 0..1.
- `scores`: a segmenter's per-pixel probability of the class (its softmax), or a yolo-layout
  detector's class scores on its grid of cells (strides 8, 16, 32: the largest over the levels
  covering a point). 0..1. A torchvision detector's graph keeps no grid: it has no heat map.

Every map is drawn over the whole frame (bilinear between the cells' centres, over the part of the
model input that holds the frame) as an 8-bit grayscale PNG: intensity
`round(255 * min(max(value, 0) / scale, 1))`, with one `scale` per method and model, so that the same
intensity means the same evidence on every frame. The PNG is the frame's size divided by the
smallest whole `downscale` that brings its long side to at most 512 pixels (a 640x480 frame: 320x240,
each PNG pixel 2x2 frame pixels; 2448x2048: 490x410, 5x5): a map has no detail finer than its cells,
and a frame-sized PNG of a 5 MP frame would cost 100 ms and 600 kB an answer.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from pydantic import BaseModel, Field

from service.manifest import InputSpec
from service.pipeline.geometry import Geometry

AUTO = "auto"  # the model's first method


class HeatmapMethod(StrEnum):
    CAM = "cam"
    OCCLUSION = "occlusion"
    SCORES = "scores"


# The occlusion grid over the frame's content, and the patch, in cells.
OCCLUSION_CELLS = 8
OCCLUSION_PATCH = 2
OCCLUSION_RUNS = (OCCLUSION_CELLS - OCCLUSION_PATCH + 1) ** 2
# The longest side of a heat map's PNG, at most.
MAX_SIDE = 512


class Heatmap(BaseModel):
    """One class's evidence over the frame, as an 8-bit PNG, with its scale and its peak."""

    class_name: str = Field(description="The class the map is of.", examples=["crack"])
    method: HeatmapMethod = Field(description="cam, occlusion or scores (see the unit).")
    unit: str = Field(description="What a value is.", examples=["class activation"])
    scale: float = Field(
        description="The value drawn at intensity 255: intensity = round(255 * min(max(value, 0) / scale, 1)).",
        examples=[4.5],
    )
    peak: float = Field(description="The largest value on this frame (it may exceed the scale: then clipped).")
    peak_x: int = Field(description="Frame column of the peak (the centre of its cell).")
    peak_y: int = Field(description="Frame row of the peak.")
    runs: int = Field(description="Model runs the map took besides the answer's own (occlusion: 49).")
    downscale: int = Field(
        description="Each PNG pixel covers downscale x downscale frame pixels, from the frame's top left "
        "corner: the PNG is the frame's size divided by it, rounded up."
    )
    width: int = Field(description="The PNG's width.")
    height: int = Field(description="The PNG's height.")
    png: str = Field(description="Base64 of an 8-bit grayscale PNG over the whole frame.")


@dataclass(frozen=True)
class EvidenceGrid:
    """One class's evidence on a grid of cells, and where the frame lies on it."""

    values: np.ndarray  # (h, w) float32
    box: tuple[float, float, float, float]  # the frame's content, in cells: x0, y0, x1, y1 (cell edges)

    @classmethod
    def over_input(cls, values: np.ndarray, geometry: Geometry) -> EvidenceGrid:
        """A grid whose cells tile the whole model input (a feature map, a segmenter's pixels)."""
        rows, cols = values.shape
        x0, y0, x1, y1 = geometry.content_box
        sx, sy = cols / geometry.input_width, rows / geometry.input_height
        return cls(np.asarray(values, dtype=np.float32), (x0 * sx, y0 * sy, x1 * sx, y1 * sy))

    def peak(self, geometry: Geometry) -> tuple[float, int, int]:
        """The largest value among the cells that lie on the frame, and that cell's centre in frame pixels
        (on the frame's edge where the centre is past it)."""
        x0, y0, x1, y1 = self.box
        rows, cols = self.values.shape
        xs, ys = np.arange(cols) + 0.5, np.arange(rows) + 0.5
        # A cell whose centre lies on the frame; where none does (a frame thinner than a cell), any it overlaps.
        on_x = _on(xs, x0, x1)
        on_y = _on(ys, y0, y1)
        values = np.where(on_y[:, None] & on_x[None, :], self.values, -np.inf)
        row, col = np.unravel_index(int(np.argmax(values)), values.shape)
        frame_x = (xs[col] - x0) / (x1 - x0) * geometry.original_width
        frame_y = (ys[row] - y0) / (y1 - y0) * geometry.original_height
        return (
            float(values[row, col]),
            min(max(int(frame_x), 0), geometry.original_width - 1),
            min(max(int(frame_y), 0), geometry.original_height - 1),
        )


def _on(centres: np.ndarray, start: float, stop: float) -> np.ndarray:
    """The cells (by their centres, one cell apart) on [start, stop): centre inside, else overlapping."""
    inside = (centres > start) & (centres < stop)
    return inside if inside.any() else (centres + 0.5 > start) & (centres - 0.5 < stop)


def render(
    grid: EvidenceGrid,
    geometry: Geometry,
    *,
    class_name: str,
    method: HeatmapMethod,
    unit: str,
    scale: float,
    runs: int = 0,
) -> Heatmap:
    """`grid` drawn over the frame: bilinear from the cells' centres, 8-bit on `scale`, at the frame's size
    divided by `downscale_for` it."""
    downscale = downscale_for(geometry.original_width, geometry.original_height)
    width, height = -(-geometry.original_width // downscale), -(-geometry.original_height // downscale)
    # The PNG covers width * downscale frame pixels, up to downscale - 1 past the frame's edge.
    x0, y0, x1, y1 = grid.box
    box = (
        x0,
        y0,
        x0 + (x1 - x0) * width * downscale / geometry.original_width,
        y0 + (y1 - y0) * height * downscale / geometry.original_height,
    )
    # The edge's cells again, as many as the part past the frame's edge needs (Pillow's box stays on its image).
    rows, cols = grid.values.shape
    pad = ((0, max(0, math.ceil(box[3] - rows))), (0, max(0, math.ceil(box[2] - cols))))
    values = np.pad(np.asarray(grid.values, dtype=np.float32), pad, mode="edge")
    drawn = np.asarray(Image.fromarray(values).resize((width, height), Image.Resampling.BILINEAR, box=box))
    intensity = np.rint(np.clip(drawn / scale, 0.0, 1.0) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(intensity).save(buffer, format="PNG", compress_level=1)
    peak, peak_x, peak_y = grid.peak(geometry)
    return Heatmap.model_construct(
        class_name=class_name,
        method=method,
        unit=unit,
        scale=scale,
        peak=peak,
        peak_x=peak_x,
        peak_y=peak_y,
        runs=runs,
        downscale=downscale,
        width=width,
        height=height,
        png=base64.b64encode(buffer.getvalue()).decode("ascii"),
    )


def downscale_for(width: int, height: int) -> int:
    """The smallest whole factor that brings a frame's long side to at most `MAX_SIDE`."""
    return max(1, -(-max(width, height) // MAX_SIDE))


def decode_png(heatmap: Heatmap) -> np.ndarray:
    """A heat map's intensities, (height, width) uint8."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(heatmap.png))))


def top_class(scores: Mapping[str, float], candidates: Sequence[str]) -> str:
    """The candidate class scored highest (the first of equals); classes without a score rank last."""
    return max(candidates, key=lambda name: scores.get(name, float("-inf")))


def class_activation(features: np.ndarray, weights: np.ndarray, index: int) -> np.ndarray:
    """One image's features (K, h, w) and the weights (C, K) -> class `index`'s activation map (h, w)."""
    return np.tensordot(weights[index].astype(np.float32), features.astype(np.float32), axes=1)


def occlusion_fill(spec: InputSpec) -> np.ndarray:
    """The pixel value, per channel, that the input's normalisation takes to zero (the mean pixel)."""
    return np.clip(np.rint(np.asarray(spec.mean) / spec.scale), 0, 255).astype(np.uint8)


def _cell_edges(start: int, stop: int) -> list[int]:
    return [start + round(i * (stop - start) / OCCLUSION_CELLS) for i in range(OCCLUSION_CELLS + 1)]


def occluded_copies(tensor: np.ndarray, geometry: Geometry, fill: np.ndarray) -> list[np.ndarray]:
    """The prepared input (C, H, W) with each patch of the occlusion grid covered, row by row."""
    x0, y0, x1, y1 = geometry.content_box
    xs, ys = _cell_edges(x0, x1), _cell_edges(y0, y1)
    copies = []
    last = OCCLUSION_CELLS - OCCLUSION_PATCH
    for row in range(last + 1):
        for col in range(last + 1):
            copy = tensor.copy()
            copy[:, ys[row] : ys[row + OCCLUSION_PATCH], xs[col] : xs[col + OCCLUSION_PATCH]] = fill[:, None, None]
            copies.append(copy)
    return copies


def occlusion_grid(probability: float, occluded: Sequence[float]) -> EvidenceGrid:
    """The class's probability on the frame and on each occluded copy (`occluded_copies`' order) -> each
    cell's mean drop over the patches covering it; the grid covers exactly the frame's content."""
    if len(occluded) != OCCLUSION_RUNS:
        raise ValueError(f"expected {OCCLUSION_RUNS} occluded probabilities, got {len(occluded)}")
    total = np.zeros((OCCLUSION_CELLS, OCCLUSION_CELLS))
    count = np.zeros_like(total)
    last = OCCLUSION_CELLS - OCCLUSION_PATCH
    for index, value in enumerate(occluded):
        row, col = divmod(index, last + 1)
        total[row : row + OCCLUSION_PATCH, col : col + OCCLUSION_PATCH] += probability - value
        count[row : row + OCCLUSION_PATCH, col : col + OCCLUSION_PATCH] += 1
    return EvidenceGrid((total / count).astype(np.float32), (0.0, 0.0, float(OCCLUSION_CELLS), float(OCCLUSION_CELLS)))


# A colour ramp from dark to bright (black -> purple -> red -> yellow -> pale yellow) for drawing a map over a frame.
_RAMP = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99]]
    + [[212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]],
    dtype=np.float32,
)
_STEPS = np.linspace(0, len(_RAMP) - 1, 256)
LUT = np.stack([np.interp(_STEPS, np.arange(len(_RAMP)), _RAMP[:, c]) for c in range(3)], axis=1).astype(np.uint8)


def overlay(frame: Image.Image, heatmap: Heatmap, opacity: float = 0.6, full: float | None = None) -> Image.Image:
    """`heatmap` drawn over `frame` (the frame it was computed on): each pixel's colour from the ramp (the
    map enlarged by its downscale, bilinear), its opacity in proportion to its intensity, and a ring
    around the peak. `full`: the value drawn in full colour instead of the map's `scale` (weak evidence
    made visible on one frame, no longer comparable with another's)."""
    k = heatmap.downscale
    if (-(-frame.width // k), -(-frame.height // k)) != (heatmap.width, heatmap.height):
        raise ValueError(
            f"the map is {heatmap.width}x{heatmap.height} at 1/{k}, the frame {frame.width}x{frame.height}"
        )
    enlarged = Image.fromarray(decode_png(heatmap)).resize(
        (heatmap.width * k, heatmap.height * k), Image.Resampling.BILINEAR
    )
    intensity = np.asarray(enlarged)[: frame.height, : frame.width]
    if full is not None:
        intensity = np.clip(np.rint(intensity * (heatmap.scale / full)), 0, 255).astype(np.uint8)
    base = np.asarray(frame.convert("RGB"), dtype=np.float32)
    alpha = (intensity.astype(np.float32) / 255.0 * opacity)[:, :, None]
    blended = Image.fromarray(np.rint(base * (1 - alpha) + LUT[intensity] * alpha).astype(np.uint8))
    radius = max(6, min(frame.width, frame.height) // 40)
    x, y = heatmap.peak_x, heatmap.peak_y
    ImageDraw.Draw(blended).ellipse((x - radius, y - radius, x + radius, y + radius), outline=(0, 255, 255), width=2)
    return blended


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m service.heatmaps FRAME ANSWER.json OUT.png`: draw an answer's heat map over its frame."""
    parser = argparse.ArgumentParser(prog="python -m service.heatmaps", description=main.__doc__)
    parser.add_argument("frame", type=Path, help="the frame the answer is of")
    parser.add_argument("answer", type=Path, help="the answer, as JSON, asked with ?heatmap=...")
    parser.add_argument("out", type=Path, help="the picture to write (PNG)")
    parser.add_argument("--opacity", type=float, default=0.6, help="opacity of the strongest evidence (0..1)")
    parser.add_argument(
        "--full",
        metavar="VALUE|peak",
        help="draw this value (or the frame's peak) in full colour instead of the map's scale: weak evidence "
        "made visible, its colours no longer comparable with another frame's",
    )
    args = parser.parse_args(argv)
    answer = json.loads(args.answer.read_text())
    if "heatmap" not in answer:
        parser.error(f"{args.answer} has no heat map: ask with ?heatmap=auto")
    heatmap = Heatmap.model_validate(answer["heatmap"])
    full = None
    if args.full is not None:
        full = heatmap.peak if args.full == "peak" else float(args.full)
        if not full > 0:
            parser.error(f"--full must be above 0 (the frame's peak is {heatmap.peak:.3g})")
    with Image.open(args.frame) as frame:
        overlay(ImageOps.exif_transpose(frame), heatmap, args.opacity, full).save(args.out)
    drawn = f"{heatmap.scale:g}" if full is None else f"{full:.3g}, not the model's {heatmap.scale:g}"
    print(
        f"{args.out}: {heatmap.class_name} by {heatmap.method}, peak {heatmap.peak:.3g} at "
        f"({heatmap.peak_x}, {heatmap.peak_y}); full colour at {drawn} ({heatmap.unit})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
