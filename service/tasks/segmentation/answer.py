"""Segmentation's answer: per defect class present, its mask at the frame's size, area and parts."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from service.tasks.base import Answer, Score


class PixelBox(BaseModel):
    """A region's bounds as pixel edges: x2 is its last column + 1."""

    x1: int
    y1: int
    x2: int
    y2: int


class Component(BaseModel):
    box: PixelBox
    area_px: int


class RleMask(BaseModel):
    """COCO run-length encoding, readable by `pycocotools.mask.decode`."""

    size: list[int] = Field(description="[height, width]")
    counts: str


class PngMask(BaseModel):
    format: Literal["png"] = "png"
    data: str = Field(description="A 1-bit PNG of the mask, base64.")


class Segment(BaseModel):
    class_name: str
    class_id: int
    confidence: Score = Field(description="Highest pixel probability of this class.")
    area_px: int
    area_fraction: Score
    components: list[Component] = Field(description="Connected regions, largest first.")
    mask: RleMask | PngMask = Field(description="COCO RLE (default) or PNG (`mask_format=png`).")


class SegmentationAnswer(Answer):
    task: Literal["segmentation"] = "segmentation"
    segments: list[Segment] = Field(description="One per defect class present, in class order.")
    # The frame's class-index map at its size (uint8; NO_CLASS where no defect class reached its
    # threshold): kept for protocols that send the mask as pixels, never part of the JSON.
    _class_map: np.ndarray | None = PrivateAttr(default=None)

    @property
    def class_map(self) -> np.ndarray | None:
        return self._class_map

    def __eq__(self, other: object) -> bool:
        # Pydantic would compare the class maps with `==`, which is elementwise for arrays.
        if not isinstance(other, SegmentationAnswer):
            return NotImplemented
        mine, theirs = self._class_map, other._class_map
        same_map = mine is theirs or (mine is not None and theirs is not None and np.array_equal(mine, theirs))
        return same_map and self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]
