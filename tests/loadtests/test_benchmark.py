"""The benchmark's variants that serve older code: by commit where there is git history, by folder
where there is none (a GPU host receives a plain copy of the working tree)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from loadtests.benchmark import Variant
from loadtests.server import ROOT


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
