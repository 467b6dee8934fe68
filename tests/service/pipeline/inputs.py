"""Model inputs made from generated weld frames, through the service's own decode and preprocess."""

from __future__ import annotations

import numpy as np

from export.synthetic import encode_image, generate_weld
from service.manifest import ModelManifest
from service.pipeline.decode import decode_image
from service.pipeline.preprocess import to_model_input

LABELS = ("crack", "porosity", "undercut", "no_defect")


def model_inputs(manifest: ModelManifest, count: int, width: int = 320, height: int = 240) -> list[np.ndarray]:
    """`count` (C, H, W) uint8 inputs of JPEG frames, one label after another."""
    spec = manifest.input
    inputs = []
    for i in range(count):
        frame = encode_image(generate_weld(500 + i, width, height, label=LABELS[i % len(LABELS)]).image)
        decoded = decode_image(frame, channels=spec.channels, target_size=(spec.width, spec.height), max_pixels=10**8)
        inputs.append(to_model_input(decoded, spec)[0])
    return inputs
