"""Recorded `/v1` prediction answers, byte for byte, to hold the wire form of every demo model fixed.

`CASES` are frames generated from a seed, with the query they are sent with. `v1_answers.json` holds
the bytes the service answered for each, recorded with `python -m tests.service.api.v1_answers`
(run it again only when an answer is meant to change, and say why in the commit).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from export.synthetic import encode_image, generate_weld

RECORDED = Path(__file__).with_name("v1_answers.json")
MODEL_STORE = Path(__file__).resolve().parents[3] / "model_store"

# (model, seed, width, height, label, image format, query)
CASES: list[tuple[str, int, int, int, str | None, str, str]] = [
    ("weld-classifier", 1, 640, 480, None, "JPEG", ""),
    ("weld-classifier", 2, 640, 480, "crack", "PNG", ""),
    ("weld-classifier", 3, 1024, 768, "porosity", "JPEG", "thresholds=0.05"),
    ("weld-classifier", 4, 320, 240, "undercut", "JPEG", "classes=crack&thresholds=crack:0.01"),
    ("weld-detector", 5, 640, 480, "crack", "JPEG", ""),
    ("weld-detector", 6, 800, 600, "porosity", "PNG", "thresholds=0.05&nms_iou=0.3"),
    ("weld-detector", 7, 640, 480, "undercut", "JPEG", "thresholds=0.01&max_detections=2"),
    ("weld-detector", 8, 640, 480, None, "JPEG", "classes=porosity"),
    ("weld-segmenter", 9, 640, 480, "crack", "JPEG", ""),
    ("weld-segmenter", 10, 512, 512, "porosity", "PNG", "mask_format=png"),
    ("weld-segmenter", 11, 640, 480, "undercut", "JPEG", "thresholds=0.2"),
    ("weld-segmenter", 12, 300, 200, None, "JPEG", "thresholds=0.05&classes=crack,porosity"),
]


def frame(seed: int, width: int, height: int, label: str | None, fmt: str) -> bytes:
    return encode_image(generate_weld(seed, width, height, label).image, fmt)


def answers(client) -> list[str]:
    """Each case's answer from `client` (a TestClient or httpx client on the service), as text."""
    found = []
    for model, seed, width, height, label, fmt, query in CASES:
        response = client.post(
            f"/v1/models/{model}/predict?{query}",
            content=frame(seed, width, height, label, fmt),
            headers={"Content-Type": f"image/{fmt.lower()}"},
        )
        assert response.status_code == 200, response.text
        found.append(response.content.decode())
    return found


def main() -> int:
    from tests.conftest import app_in_process

    with tempfile.TemporaryDirectory() as state, app_in_process(MODEL_STORE, Path(state)) as client:
        RECORDED.write_text(json.dumps(answers(client), indent=1) + "\n")
    print(f"{len(CASES)} answers written to {RECORDED}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
