"""Synthetic weld images with labelled defects, for the demo models, tests and load tests.

A frame shows a steel plate (texture, uneven lighting, sensor noise) crossed by a weld seam
(a bright bead with ripples, slightly angled and curved), and at most one kind of defect:

- porosity: dark round pores on the bead, often in clusters;
- crack: a thin dark jagged line along or across the seam;
- undercut: a dark groove along one edge (toe) of the bead.

Every size is relative to the frame's short side, so a defect stays visible once the frame is
downscaled to a model input of ~160-256 px. Only numpy, Pillow and the standard library are used:
the service's tests and the load tests import this module without torch.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("no_defect", "porosity", "crack", "undercut")
DEFECT_CLASSES = ("porosity", "crack", "undercut")
SEGMENTATION_CLASSES = ("background", "porosity", "crack", "undercut")
MIN_SIDE = 128

# Inspection data is mostly good parts; the demo keeps every defect class well represented.
_LABEL_PROBABILITIES = {"no_defect": 0.4, "porosity": 0.2, "crack": 0.2, "undercut": 0.2}


@dataclass(frozen=True)
class WeldSample:
    image: np.ndarray  # (H, W) uint8
    label: str  # the defect class drawn, or "no_defect" (one defect class per image)
    boxes: np.ndarray  # (n, 4) float32 xyxy in pixels (x2 = last column + 1), one per defect instance
    box_labels: list[str]
    mask: np.ndarray  # (H, W) uint8, index into SEGMENTATION_CLASSES


@dataclass(frozen=True)
class _Seam:
    """Centre line and half width of the bead, in pixels.

    Seam coordinates: `u` runs along the seam from its centre point, `v` across it
    (0 on the centre line, +-half_width on the bead edges), with a gentle parabolic bend.
    """

    cx: float
    cy: float
    angle: float
    half_width: float
    bend: float  # offset of the centre line at u = +-half_length
    half_length: float

    def offset(self, u: np.ndarray) -> np.ndarray:
        return self.bend * (u / self.half_length) ** 2

    def to_image(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Seam coordinates -> (n, 2) image xy."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        across = v + self.offset(u)
        return np.stack([self.cx + u * c - across * s, self.cy + u * s + across * c], axis=-1)

    def coordinates(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) of every pixel centre, float32 (H, W) each."""
        c, s = np.float32(math.cos(self.angle)), np.float32(math.sin(self.angle))
        dx = np.arange(width, dtype=np.float32)[None, :] + np.float32(0.5 - self.cx)
        dy = np.arange(height, dtype=np.float32)[:, None] + np.float32(0.5 - self.cy)
        u = dx * c + dy * s
        v = dy * c - dx * s
        v -= np.float32(self.bend / self.half_length**2) * u * u
        return u, v

    def visible_span(self, width: int, height: int, margin: float) -> tuple[float, float]:
        """Range of u where both bead edges (plus margin) lie inside the frame."""
        u = np.linspace(-self.half_length * 1.5, self.half_length * 1.5, 601)
        inside = np.ones_like(u, dtype=bool)
        for side in (-1.0, 1.0):
            xy = self.to_image(u, np.full_like(u, side * (self.half_width + margin)))
            inside &= (xy[:, 0] >= margin) & (xy[:, 0] <= width - margin)
            inside &= (xy[:, 1] >= margin) & (xy[:, 1] <= height - margin)
        if not inside.any():
            return 0.0, 0.0
        return float(u[inside].min()), float(u[inside].max())


class _DefectCanvas:
    """Accumulates defect instances: a darkening field, the class mask and one box per instance."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.darkness = np.zeros((height, width), dtype=np.float32)
        self.mask = np.zeros((height, width), dtype=np.uint8)
        self.boxes: list[tuple[float, float, float, float]] = []

    def window(self, points: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
        x0 = max(0, int(math.floor(points[:, 0].min() - margin)))
        y0 = max(0, int(math.floor(points[:, 1].min() - margin)))
        x1 = min(self.width, int(math.ceil(points[:, 0].max() + margin)) + 1)
        y1 = min(self.height, int(math.ceil(points[:, 1].max() + margin)) + 1)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def add(self, window: tuple[int, int, int, int], instance: np.ndarray, darkness: np.ndarray, class_id: int) -> bool:
        """Paint one instance given in window coordinates; False when none of it is in the frame."""
        if not instance.any():
            return False
        x0, y0, x1, y1 = window
        region = self.darkness[y0:y1, x0:x1]
        np.maximum(region, darkness, out=region)
        self.mask[y0:y1, x0:x1][instance] = class_id
        rows = np.flatnonzero(instance.any(axis=1))
        cols = np.flatnonzero(instance.any(axis=0))
        self.boxes.append((x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1.0, y0 + rows[-1] + 1.0))
        return True

    def add_stroke(self, paths: list[np.ndarray], width: float, depth: float, class_id: int) -> None:
        """Dark polylines forming one instance (a crack and its branch, a groove), with a blurred profile."""
        blur = max(0.6, 0.35 * width)
        window = self.window(np.concatenate(paths), width + 3 * blur)
        if window is None:
            return
        x0, y0, x1, y1 = window
        canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
        pen = ImageDraw.Draw(canvas)
        for path in paths:
            pen.line(
                [(float(x - x0), float(y - y0)) for x, y in path], fill=255, width=max(1, round(width)), joint="curve"
            )
        drawn = np.asarray(canvas)
        shade = np.asarray(canvas.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
        self.add(window, drawn > 0, np.float32(depth / 255.0) * shade, class_id)


def generate_weld(
    rng: np.random.Generator | int, width: int = 640, height: int = 480, label: str | None = None
) -> WeldSample:
    """One synthetic weld frame; `label` None draws the class at random (no_defect 40%, others 20%)."""
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ValueError(f"frames must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {width}x{height}")
    if label is not None and label not in CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(CLASSES)}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if label is None:
        label = str(rng.choice(CLASSES, p=[_LABEL_PROBABILITIES[c] for c in CLASSES]))

    unit = float(min(width, height))
    seam = _random_seam(rng, width, height, unit)
    u, v = seam.coordinates(width, height)
    surface = _plate(rng, width, height, unit) + _bead(rng, seam, u, v, unit)
    del u, v

    canvas = _DefectCanvas(width, height)
    if label != "no_defect":
        class_id = SEGMENTATION_CLASSES.index(label)
        span = seam.visible_span(width, height, margin=0.03 * unit)
        draw = {"porosity": _draw_porosity, "crack": _draw_crack, "undercut": _draw_undercut}[label]
        while not canvas.boxes:  # a draw can land wholly outside a tiny visible span; try again
            draw(rng, canvas, seam, span, unit, class_id)
        surface *= 1.0 - canvas.darkness

    surface *= _lighting(rng, width, height)
    mean = float(surface.mean())
    surface = (surface - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-15, 15)
    surface += rng.standard_normal((height, width), dtype=np.float32) * np.float32(rng.uniform(2.0, 6.0))
    image = np.clip(surface, 0, 255).astype(np.uint8)

    boxes = np.asarray(canvas.boxes, dtype=np.float32).reshape(-1, 4)
    return WeldSample(image=image, label=label, boxes=boxes, box_labels=[label] * len(boxes), mask=canvas.mask)


def encode_image(image: np.ndarray, fmt: str = "JPEG", **save_kwargs) -> bytes:
    """Encode an (H, W) or (H, W, 3) uint8 array as image file bytes (JPEG, PNG, TIFF, BMP, WEBP)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def _random_seam(rng: np.random.Generator, width: int, height: int, unit: float) -> _Seam:
    vertical = rng.random() < 0.3
    angle = (math.pi / 2 if vertical else 0.0) + rng.uniform(-0.2, 0.2)
    return _Seam(
        cx=width * (0.5 + rng.uniform(-0.12, 0.12)),
        cy=height * (0.5 + rng.uniform(-0.12, 0.12)),
        angle=angle,
        half_width=unit * rng.uniform(0.07, 0.11),
        bend=unit * rng.uniform(-0.06, 0.06),
        half_length=0.5 * max(width, height),
    )


def _interpolation_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells) weights that linearly interpolate `cells` samples onto `size` pixel centres."""
    position = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
    left = np.minimum(position.astype(int), cells - 2)
    right_weight = (position - left).astype(np.float32)
    weights = np.zeros((size, cells), dtype=np.float32)
    weights[np.arange(size), left] = 1 - right_weight
    weights[np.arange(size), left + 1] = right_weight
    return weights


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells_x: int, cells_y: int) -> np.ndarray:
    """Unit-variance noise that varies over about 1/cells of the frame, float32 (H, W).

    Bilinear upsampling written as two small matrix products: faster than resizing through Pillow.
    """
    coarse = rng.standard_normal((cells_y, cells_x)).astype(np.float32)
    return (_interpolation_matrix(height, cells_y) @ coarse) @ _interpolation_matrix(width, cells_x).T


def _plate(rng: np.random.Generator, width: int, height: int, unit: float) -> np.ndarray:
    """Steel plate: a base grey, mottling and brushing marks along a random axis."""
    cells = max(4, round(12 * width / unit)), max(4, round(12 * height / unit))
    plate = _smooth_noise(rng, width, height, *cells) * np.float32(rng.uniform(3, 9))
    if rng.random() < 0.5:
        brushing = _smooth_noise(rng, width, height, 6, max(8, height // 3))
    else:
        brushing = _smooth_noise(rng, width, height, max(8, width // 3), 6)
    plate += brushing * np.float32(rng.uniform(1.5, 4))
    plate += np.float32(rng.uniform(70, 130))
    return plate


def _bead(rng: np.random.Generator, seam: _Seam, u: np.ndarray, v: np.ndarray, unit: float) -> np.ndarray:
    """Weld bead brightness: a rounded profile, arc-shaped ripples and a faint heat-affected band."""
    t = v / np.float32(seam.half_width)
    profile = np.sqrt(np.clip(1.0 - t * t, 0.0, None))
    period = unit * rng.uniform(0.03, 0.05)
    ripple_phase = (u + np.float32(seam.half_width * rng.uniform(0.3, 0.8)) * t * t) * np.float32(2 * math.pi / period)
    bead = profile * (np.float32(rng.uniform(35, 70)) + np.float32(rng.uniform(5, 12)) * np.sin(ripple_phase))
    heat_band = np.exp(-(((np.abs(t) - 1.3) / np.float32(0.35)) ** 2))
    bead -= np.float32(rng.uniform(3, 10)) * heat_band
    return bead


def _lighting(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Multiplicative illumination: a linear gradient times vignetting."""
    x = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width - 0.5
    y = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height - 0.5
    direction = rng.uniform(0, 2 * math.pi)
    gradient = 1.0 + np.float32(rng.uniform(-0.4, 0.4)) * (x * math.cos(direction) + y * math.sin(direction))
    vignette = 1.0 - np.float32(rng.uniform(0.0, 0.6)) * (x * x + y * y)
    return (gradient * vignette).astype(np.float32)


def _draw_porosity(
    rng: np.random.Generator, canvas: _DefectCanvas, seam: _Seam, span: tuple[float, float], unit: float, class_id: int
) -> None:
    clustered = rng.random() < 0.6
    count = int(rng.integers(2, 7) if clustered else rng.integers(1, 5))
    radii = unit * rng.uniform(0.015, 0.032, size=count)
    u_lo, u_hi = span[0] + radii.max(), max(span[0] + radii.max(), span[1] - radii.max())
    cluster_u = rng.uniform(u_lo, u_hi)
    placed: list[tuple[float, float, float]] = []  # (x, y, r) of the pores so far
    for radius in radii:
        for _ in range(30):  # pores do not overlap: each one is its own instance
            if clustered:
                pu = float(np.clip(cluster_u + rng.normal(0, 0.07 * unit), u_lo, u_hi))
            else:
                pu = rng.uniform(u_lo, u_hi)
            pv = rng.uniform(-0.6, 0.6) * seam.half_width
            x, y = seam.to_image(np.array([pu]), np.array([pv]))[0]
            if all(math.hypot(x - px, y - py) > 1.3 * (radius + pr) + 0.005 * unit for px, py, pr in placed):
                break
        else:
            continue
        if _draw_pore(rng, canvas, float(x), float(y), float(radius), class_id):
            placed.append((x, y, radius))


def _draw_pore(
    rng: np.random.Generator, canvas: _DefectCanvas, x: float, y: float, radius: float, class_id: int
) -> bool:
    """A slightly elliptical dark pit, darkest at its centre."""
    window = canvas.window(np.array([[x, y]]), radius * 1.3 + 2)
    if window is None:
        return False
    x0, y0, x1, y1 = window
    lx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - x
    ly = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - y
    tilt = rng.uniform(0, math.pi)
    stretch = rng.uniform(0.8, 1.2)
    a = (lx * math.cos(tilt) + ly * math.sin(tilt)) * stretch
    b = (ly * math.cos(tilt) - lx * math.sin(tilt)) / stretch
    r = np.sqrt(a * a + b * b) / np.float32(radius)
    edge = np.clip((1.15 - r) / 0.3, 0.0, 1.0)  # soft rim, ~1 px wide at small radii
    darkness = np.float32(rng.uniform(0.45, 0.75)) * edge * np.sqrt(np.clip(1.0 - 0.6 * r * r, 0.0, 1.0))
    return canvas.add(window, r <= 1.0, darkness, class_id)


def _jagged_path(
    rng: np.random.Generator, start: np.ndarray, heading: float, length: float, step: float, jag: float
) -> np.ndarray:
    """A random-walk polyline: small turns around a mean heading plus perpendicular jitter."""
    steps = max(4, int(length / step))
    turns = np.clip(np.cumsum(rng.normal(0, 0.25, size=steps)), -0.6, 0.6)
    angles = heading + turns
    moves = np.stack([np.cos(angles), np.sin(angles)], axis=1) * (length / steps)
    points = start + np.vstack([np.zeros((1, 2)), np.cumsum(moves, axis=0)])
    normal = np.array([-math.sin(heading), math.cos(heading)])
    return points + rng.normal(0, jag, size=(len(points), 1)) * normal


def _draw_crack(
    rng: np.random.Generator, canvas: _DefectCanvas, seam: _Seam, span: tuple[float, float], unit: float, class_id: int
) -> None:
    width = unit * rng.uniform(0.006, 0.010)
    depth = rng.uniform(0.6, 0.85)
    hw = seam.half_width
    if rng.random() < 0.6:  # longitudinal: along the bead
        length = min(unit * rng.uniform(0.3, 0.7), 0.9 * (span[1] - span[0]))
        u0 = rng.uniform(span[0], span[1] - length)
        start = np.array([u0, rng.uniform(-0.4, 0.4) * hw])
        path_uv = _jagged_path(rng, start, 0.0, length, 0.02 * unit, 0.004 * unit)
        path_uv[:, 1] = np.clip(path_uv[:, 1], -0.8 * hw, 0.8 * hw)
    else:  # transverse: across the bead and a little beyond its edges
        reach = hw * rng.uniform(0.8, 1.2)
        start = np.array([rng.uniform(span[0] + reach, max(span[0] + reach, span[1] - reach)), -reach])
        path_uv = _jagged_path(rng, start, math.pi / 2, 2 * reach, 0.015 * unit, 0.003 * unit)
    points = seam.to_image(path_uv[:, 0], path_uv[:, 1])
    paths = [points]
    if rng.random() < 0.3:  # a short branch, part of the same crack
        origin = points[rng.integers(1, len(points) - 1)]
        heading = math.atan2(*(points[-1] - points[0])[::-1]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)
        paths.append(_jagged_path(rng, origin, heading, unit * rng.uniform(0.05, 0.12), 0.015 * unit, 0.003 * unit))
    canvas.add_stroke(paths, width, depth, class_id)


def _draw_undercut(
    rng: np.random.Generator, canvas: _DefectCanvas, seam: _Seam, span: tuple[float, float], unit: float, class_id: int
) -> None:
    grooves = 1 if rng.random() < 0.75 else 2
    sides = rng.permutation([-1.0, 1.0])
    for side in sides[:grooves]:
        width = unit * rng.uniform(0.018, 0.03)
        length = min(unit * rng.uniform(0.25, 0.6), 0.9 * (span[1] - span[0]))
        u0 = rng.uniform(span[0], span[1] - length)
        u = np.linspace(u0, u0 + length, max(4, int(length / (0.01 * unit))))
        wobble = np.convolve(rng.normal(0, 0.3 * width, size=len(u) + 4), np.ones(5) / 5, mode="valid")
        v = side * (seam.half_width + width * rng.uniform(0.0, 0.3) + wobble)
        canvas.add_stroke([seam.to_image(u, v)], width, rng.uniform(0.4, 0.65), class_id)
