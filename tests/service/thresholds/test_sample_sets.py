"""Sample sets kept on the server: what the listing names is what a sweep can open."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from export.samples import write_sample_set
from service.errors import NotFound
from service.thresholds.sample_sets import SampleSets


def test_every_listed_set_opens_whatever_the_case_of_its_archives_suffix(tmp_path: Path):
    root = tmp_path / "sets"
    folder = write_sample_set(root / "line-3", "classification", count=4, seed=7_000, width=160, height=128)
    for archive in ("night", "Shift-B"):
        shutil.make_archive(str(root / archive), "zip", folder)
    (root / "Shift-B.zip").rename(root / "Shift-B.ZIP")
    (root / "notes.txt").write_text("not a set")
    sets = SampleSets(root, max_bytes=10_000_000, max_files=100)

    listed = {s.name: s.kind for s in sets.list()}
    assert listed == {"line-3": "folder", "night": "zip", "Shift-B": "zip"}
    expected = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    for name in listed:
        assert sorted(sets.open(name).names()) == expected, name
    with pytest.raises(NotFound, match=r"no sample set named 'shift-b'.*there are: Shift-B, line-3, night"):
        sets.open("shift-b")  # names are as listed, case included
    with pytest.raises(NotFound, match="no sample set named 'notes'"):
        sets.open("notes")
