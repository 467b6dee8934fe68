"""Labelled sample sets of generated weld frames, for tuning thresholds.

    python -m export.samples --task classification --out samples/cls [--count 200] [--seed 20000]
        [--width 640 --height 480]

writes the layout `service.thresholds.samples` reads for that task (a folder per class;
images/ and labels.json; images/ and masks/). An `--out` ending in `.zip` writes the same
layout as a zip archive, ready for `POST /v1/models/{model}/thresholds/sweep`.
The default seed lies outside the streams the demo models were trained and tested on.
Imports only numpy, Pillow and the standard library.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic import encode_image, generate_weld

TASKS = ("classification", "detection", "segmentation")


def sample_files(task: str, count: int, seed: int, width: int, height: int) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) of every file of a sample set; frames drawn from one seeded stream."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    rng = np.random.default_rng(seed)
    labels: dict[str, list[dict]] = {}
    for index in range(count):
        sample = generate_weld(rng, width, height)
        stem = f"{index:05d}"
        jpeg = encode_image(sample.image, quality=95)
        if task == "classification":
            yield f"{sample.label}/{stem}.jpg", jpeg
            continue
        yield f"images/{stem}.jpg", jpeg
        if task == "detection":
            labels[f"{stem}.jpg"] = [
                {"class_name": name, "box": [round(float(v), 2) for v in box]}
                for box, name in zip(sample.boxes, sample.box_labels, strict=True)
            ]
        else:
            buffer = io.BytesIO()
            Image.fromarray(sample.mask).save(buffer, format="PNG")
            yield f"masks/{stem}.png", buffer.getvalue()
    if task == "detection":
        lines = ",\n".join(f"  {json.dumps(name)}: {json.dumps(boxes)}" for name, boxes in labels.items())
        yield "labels.json", f"{{\n{lines}\n}}\n".encode()


def write_sample_set(out: Path, task: str, count: int, seed: int = 20_000, width: int = 640, height: int = 480) -> Path:
    """Write the set to the folder `out`, or to a zip archive when `out` ends in .zip."""
    files = sample_files(task, count, seed, width, height)
    if out.suffix == ".zip":
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(
            out, "w", compression=zipfile.ZIP_STORED
        ) as archive:  # JPEG and PNG are compressed already
            for name, data in files:
                archive.writestr(name, data)
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; pick a new folder so that old samples do not mix in")
    for name, data in files:
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.samples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="a new folder, or a .zip file")
    parser.add_argument("--count", type=int, default=200, help="images (default %(default)s)")
    parser.add_argument("--seed", type=int, default=20_000, help="random stream (default %(default)s)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args(argv)
    try:
        out = write_sample_set(args.out, args.task, args.count, args.seed, args.width, args.height)
    except (ValueError, FileExistsError) as exc:
        print(f"samples: {exc}", file=sys.stderr)
        return 1
    print(f"{args.count} labelled {args.task} images written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
