"""The frames load tests and the benchmark send: generated weld images, the same bytes on every run."""

from __future__ import annotations

from dataclasses import dataclass

from export.synthetic import CLASSES, encode_image, generate_weld

JPEG_QUALITY = 90


def line_frames(width: int, height: int) -> list[bytes]:
    """One JPEG frame per class (no defect, porosity, crack, undercut) at this size, from fixed seeds."""
    return [
        encode_image(generate_weld(seed, width, height, label=label).image, quality=JPEG_QUALITY)
        for seed, label in enumerate(CLASSES)
    ]


@dataclass(frozen=True)
class Station:
    """A camera's place on the line: the model it asks and the size of its frames, `MODEL@WIDTHxHEIGHT`."""

    model: str
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Station:
        model, _, size = text.strip().partition("@")
        width, _, height = size.partition("x")
        if not model or not width.isdigit() or not height.isdigit():
            raise ValueError(f"station {text!r} is not MODEL@WIDTHxHEIGHT, e.g. weld-classifier@640x480")
        return cls(model, int(width), int(height))

    @property
    def label(self) -> str:
        return f"{self.model} {self.width}x{self.height}"
