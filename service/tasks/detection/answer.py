"""Detection's answer: boxes of defects, in original-image pixels, best first."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.tasks.base import Answer, Pixel, Score


class Box(BaseModel):
    x1: Pixel
    y1: Pixel
    x2: Pixel
    y2: Pixel

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return self.x1, self.y1, self.x2, self.y2


class Detection(BaseModel):
    class_name: str = Field(examples=["crack"])
    class_id: int = Field(description="Index into the model's classes.", examples=[1])
    confidence: Score = Field(examples=[0.91])
    box: Box = Field(description="In original-image pixels.")


class DetectionAnswer(Answer):
    task: Literal["detection"] = "detection"
    detections: list[Detection] = Field(description="Best first; the defects are their classes, in class order.")
