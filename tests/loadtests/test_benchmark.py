"""The benchmark's variants that serve older code: by commit where there is git history, by folder
where there is none (a GPU host receives a plain copy of the working tree); and the requests of each
protocol it measures."""

from __future__ import annotations

import argparse
import base64
import shutil
import subprocess
import sys

import pytest

from loadtests.benchmark import Variant, prepare
from loadtests.server import ROOT
from service.api.v2.codec import parse_infer_request


def test_a_before_variant_by_commit_names_the_full_commit(tmp_path):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert Variant.parse("before:ref=HEAD").ref == head.stdout.strip()


def test_a_before_variant_by_commit_in_a_copy_without_git_history_is_refused_saying_to_pass_a_folder(tmp_path):
    copy = tmp_path / "copy"
    for package in ("loadtests", "service"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__", "results"))
    benchmark = subprocess.run(
        [sys.executable, "-m", "loadtests.benchmark", "--variant", "before:ref=HEAD~1", "--json", str(tmp_path / "b")],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert benchmark.returncode == 2, benchmark.stderr
    assert "Traceback" not in benchmark.stderr
    assert f"ref=HEAD~1 needs this repository's git history, and {copy} has none" in benchmark.stderr
    assert "pass code=before/ instead" in benchmark.stderr
    assert not (tmp_path / "b").exists()


def test_a_folder_without_the_service_is_refused_as_a_before_variant(tmp_path):
    with pytest.raises(argparse.ArgumentTypeError, match="holds no service/ package"):
        Variant.parse(f"before:code={tmp_path}")


def test_each_protocols_request_carries_the_frame_as_the_service_reads_it():
    frame = b"\xff\xd8\xff" + bytes(range(256)) * 40
    v1 = prepare("v1", "http://h", "m", frame)
    assert (v1.url, v1.body, v1.headers["Content-Type"]) == ("http://h/v1/models/m/predict", frame, "image/jpeg")
    binary = prepare("v2-binary", "http://h", "m", frame)
    length = int(binary.headers["Inference-Header-Content-Length"])
    parsed = parse_infer_request(binary.body, length, max_elements=10**6)
    assert binary.url == "http://h/v2/models/m/infer" and parsed.binary_data_output
    assert parsed.inputs[0].binary and parsed.inputs[0].data.tolist() == [frame]
    as_json = parse_infer_request(prepare("v2-json", "http://h", "m", frame).body, None, max_elements=10**6)
    assert base64.b64decode(as_json.inputs[0].data[0]) == frame and not as_json.inputs[0].binary


def test_a_heatmap_variant_asks_every_answer_for_its_map_on_v1_only():
    variant = Variant.parse("cam:heatmap=cam,model_store=/tmp/older")
    assert variant.heatmap == "cam" and variant.env == {"INSPECTION_MODEL_STORE": "/tmp/older"}
    assert prepare("v1", "http://h", "m", b"x", variant.heatmap).url == "http://h/v1/models/m/predict?heatmap=cam"
    with pytest.raises(argparse.ArgumentTypeError, match="measured on /v1 only"):
        Variant.parse("cam:heatmap=cam,protocol=v2-binary")
