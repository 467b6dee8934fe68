"""Classification's answer: the most likely class and every class's probability."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.tasks.base import Answer, Score


class ClassificationAnswer(Answer):
    task: Literal["classification"] = "classification"
    label: str = Field(description="The most likely class.")
    confidence: Score = Field(description="The label's probability.")
    scores: dict[str, Score] = Field(description="Probability per class, in the model's class order.")
