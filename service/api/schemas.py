"""Response models of the HTTP API, for its OpenAPI page (`/v1/docs`).

Predictions are built as plain dicts by the post-processing step and sent as
they are; these models document their shape and are checked against real
answers by the tests.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code.", examples=["undecodable_image"])
    message: str = Field(description="What was wrong, for a person.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class ImageSize(BaseModel):
    width: int = Field(description="Original width after EXIF orientation.", examples=[640])
    height: int = Field(description="Original height after EXIF orientation.", examples=[480])


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class Detection(BaseModel):
    class_name: str = Field(examples=["crack"])
    class_id: int = Field(description="Index into the model's classes.", examples=[1])
    confidence: float = Field(examples=[0.91])
    box: Box = Field(description="In original-image pixels.")


class Component(BaseModel):
    box: Box
    area_px: int


class Segment(BaseModel):
    class_name: str
    class_id: int
    confidence: float = Field(description="Highest pixel probability of this class.")
    area_px: int
    area_fraction: float
    components: list[Component] = Field(description="Connected regions, largest first.")
    mask: dict[str, Any] = Field(
        description="COCO RLE `{size: [h, w], counts}` (default) or `{format: png, data: base64}`."
    )


class Prediction(BaseModel):
    model: str = Field(examples=["weld-classifier"])
    model_version: int = Field(examples=[1])
    task: Literal["classification", "detection", "segmentation"]
    image: ImageSize
    decision: Literal["accept", "reject"] = Field(description="reject when any defect class crossed its threshold.")
    defects: list[str] = Field(description="Defect classes that crossed their threshold.", examples=[["crack"]])
    thresholds_revision: int = Field(description="The thresholds revision this answer used.")
    label: str | None = Field(default=None, description="Classification: the most likely class.")
    confidence: float | None = Field(default=None, description="Classification: the label's probability.")
    scores: dict[str, float] | None = Field(default=None, description="Classification: probability per class.")
    detections: list[Detection] | None = Field(default=None, description="Detection.")
    segments: list[Segment] | None = Field(default=None, description="Segmentation: one per defect class present.")


class ThresholdsView(BaseModel):
    revision: int
    values: dict[str, float]
    nms_iou: float | None


class ModelDescription(BaseModel):
    name: str
    version: int
    task: str
    classes: list[str]
    background_class: str | None
    provider: str = Field(description="The onnxruntime execution provider running the graph.")
    batch_sizes: list[int] | None = Field(
        description="The fixed batch sizes the graph runs at, each warmed up at start-up (batches are padded up "
        "to the next one); null: any batch size.",
        examples=[[1, 2, 4, 8]],
    )
    thresholds: ThresholdsView
    manifest: dict[str, Any]


class ModelList(BaseModel):
    models: list[ModelDescription]
