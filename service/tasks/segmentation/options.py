"""The option only segmentation takes: how each mask is written in the answer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.tasks.base import PredictionOptions

MaskFormat = Literal["rle", "png"]


class SegmentationOptions(PredictionOptions):
    mask_format: MaskFormat = Field(default="rle", description="Each mask as COCO RLE or as a PNG.")
