"""StagedOutputs when another writer creates the output folder between our check and mkdir."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from seg_edge.errors import InputError
from seg_edge.runtime.outputs import StagedOutputs


def _racing_mkdir(monkeypatch, make):
    """Path.mkdir that lets ``make(path)`` run first, as a concurrent process would."""
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        make(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def test_folder_made_by_another_writer_is_used(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b" / "seg.nii.gz"
    _racing_mkdir(monkeypatch, lambda p: os.mkdir(p))
    with StagedOutputs([target], overwrite=False) as staged:
        temp = staged.temp(target)
        temp.write_bytes(b"x")
        staged.commit()
    assert target.read_bytes() == b"x"


def test_a_file_appearing_in_place_of_the_folder_is_refused(tmp_path, monkeypatch):
    target = tmp_path / "a" / "seg.nii.gz"
    _racing_mkdir(monkeypatch, lambda p: p.write_bytes(b""))
    with pytest.raises(InputError, match="cannot create output folder"):
        with StagedOutputs([target], overwrite=False):
            pass
    assert (tmp_path / "a").is_file()
