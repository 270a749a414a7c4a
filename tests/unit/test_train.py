"""Training: labels where the runtime puts the images, a log, weights-only checkpoints, resume, precision."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from seg_edge.errors import InputError
from seg_edge.model.checkpoints import load_network
from seg_edge.model.dataset import load_training_case, split_cases
from seg_edge.model.networks import card_for
from seg_edge.model.train import TrainConfig, TrainPrecision, train
from seg_edge.runtime.io import load_case, read_labels
from seg_edge.runtime.regions import labels_to_regions
from seg_edge.runtime.preprocess import preprocess, to_original_grid


def test_split_is_by_case_and_disjoint(tmp_path):
    folders = [tmp_path / f"c{i:02d}" for i in range(40)]
    split = split_cases(folders, seed=0)
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"test": 6, "val": 7, "train": 27}
    assert set(split["train"]).isdisjoint(split["val"]) and set(split["val"]).isdisjoint(split["test"])
    assert split == split_cases(folders, seed=0) and split != split_cases(folders, seed=1)


@pytest.mark.parametrize("preset", ["edge", "nvidia-brats21"])  # axis order xyz and zyx
def test_training_labels_sit_where_the_runtime_puts_the_images(case_dir, preset):
    card = card_for(preset)
    tcase = load_training_case(case_dir, card, 4)
    tensor, inverse = preprocess(load_case(case_dir, card.modalities).images, card)
    # the 64×72×48 case is smaller than the patch, so preprocess pads before it too: labels pasted
    # at the origin of the padded volume would miss their voxels
    assert min(inverse.pad_before) > 0
    np.testing.assert_array_equal(tcase.image, tensor.astype(np.float16))
    assert tcase.regions.shape == (3,) + tensor.shape[1:]
    # taken back to the original grid by the runtime's own inverse, the regions are the case's labels
    labels = read_labels(case_dir / f"{case_dir.name}_seg.nii.gz", 4)[0]
    in_box = np.zeros(labels.shape, dtype=bool)
    in_box[inverse.box] = True
    expected = labels_to_regions(labels, 4) & in_box
    assert expected[0].sum() > 100  # a real tumour, inside the brain box
    np.testing.assert_array_equal(to_original_grid(tcase.regions, inverse).astype(bool), expected)
    # the oversampling centres are the tumour voxels, and they lie in the brain of the tensor
    np.testing.assert_array_equal(tcase.tumour, np.argwhere(tcase.regions[0]))
    assert np.all(tensor[0][tuple(tcase.tumour.T)] != 0)


def test_unknown_precision_is_refused_before_any_work(cases_dir, tmp_path):
    cfg = TrainConfig(data=str(cases_dir), out=str(tmp_path / "run"), precision="fp16")
    with pytest.raises(InputError, match="--precision 'fp16' \\(expected one of auto, fp32\\)"):
        train(cfg, log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_cli_precision_is_the_librarys(cases_dir, tmp_path):
    from seg_edge.cli.app import app
    from seg_edge.cli.train import Precision

    assert Precision is TrainPrecision  # one enum (seg_edge.choices), offered by the CLI and checked by the library
    result = CliRunner().invoke(app, ["train", str(cases_dir), "--out", str(tmp_path / "run"), "--precision", "fp16"])
    assert result.exit_code == 2 and "fp16" in result.output
    assert not (tmp_path / "run").exists()


def test_too_few_cases_is_an_input_error(case_dir, tmp_path):
    cfg = TrainConfig(data=str(case_dir), out=str(tmp_path / "run"), precision="fp32")
    with pytest.raises(InputError, match="1 case folder"):
        train(cfg, log=lambda s: None)


def test_tiny_training_run_logs_checkpoints_and_resumes(cases_dir, tmp_path):
    # three cases: the split gives 1 test, 1 validation, 1 training case
    cfg = TrainConfig(data=str(cases_dir), out=str(tmp_path / "run"), patch=32, batch=1, epochs=2,
                      iters_per_epoch=2, threads=1, precision="fp32")
    best = train(cfg, log=lambda s: None)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(0.0 <= float(r["val_dice_WT"]) <= 1.0 and float(r["train_loss"]) > 0 for r in rows)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    net, filters = load_network(best, "edge")
    assert filters == (8, 16, 32, 64, 128)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert sum(len(v) for v in split.values()) == 3
    train(TrainConfig(**{**cfg.__dict__, "epochs": 3}), log=lambda s: None)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
