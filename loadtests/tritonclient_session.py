"""A `tritonclient` session against a running service: each demo model, one frame as JPEG bytes and the
same frame as raw pixels, through the Open Inference Protocol (the README's session is this output).

    python -m loadtests.tritonclient_session [--url 127.0.0.1:3000]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import tritonclient.http as triton

from export.synthetic import encode_image, generate_weld


def show(result, name: str) -> str:
    array = result.as_numpy(name)
    if name == "answer":
        answer = json.loads(array[0])
        return f"{name} {list(array.shape)}: " + json.dumps({k: answer[k] for k in ("decision", "defects")})
    if array.dtype == object:
        return f"{name} {list(array.shape)}: {[item.decode() for item in array.ravel()]}"
    if name == "mask":
        values, counts = np.unique(array, return_counts=True)
        by_class = dict(zip(values.tolist(), counts.tolist(), strict=True))
        return f"{name} {list(array.shape)} {array.dtype}: pixels by class {by_class}"
    shown = np.round(array.astype(np.float64), 1 if name == "boxes" else 3)  # float32 printed as it is sent
    return f"{name} {list(array.shape)} {array.dtype}: {shown.tolist() if array.dtype.kind == 'f' else array.tolist()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:3000", help="host:port of the service")
    args = parser.parse_args(argv)
    client = triton.InferenceServerClient(args.url)
    print(f"live {client.is_server_live()}, ready {client.is_server_ready()}")
    for model, seed in (("weld-classifier", 7), ("weld-detector", 8), ("weld-segmenter", 9)):
        pixels = generate_weld(seed, 640, 480, label="crack").image  # (480, 640) uint8, one channel
        jpeg = encode_image(pixels)

        images = triton.InferInput("images", [1], "BYTES")  # one encoded frame per element
        images.set_data_from_numpy(np.array([jpeg], dtype=object))
        raw = triton.InferInput("pixels", [1, 480, 640, 1], "UINT8")  # N, H, W, C
        raw.set_data_from_numpy(pixels[None, :, :, None])

        for given, sent in ((images, "JPEG bytes"), (raw, "raw pixels")):
            result = client.infer(model, [given])
            names = [output["name"] for output in result.get_response()["outputs"]]
            print(f"\n{model} <- {sent}")
            for name in names:
                print(f"  {show(result, name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
