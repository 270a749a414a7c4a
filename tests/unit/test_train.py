"""Training: a few steps on tiny cases produce a log, checkpoints loadable weights-only, and resume."""

from __future__ import annotations

import csv
import json

import torch

from seg_edge.model.checkpoints import load_network
from seg_edge.model.dataset import split_cases
from seg_edge.model.train import TrainConfig, train


def test_split_is_by_case_and_disjoint(tmp_path):
    folders = [tmp_path / f"c{i:02d}" for i in range(40)]
    split = split_cases(folders, seed=0)
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"test": 6, "val": 7, "train": 27}
    assert set(split["train"]).isdisjoint(split["val"]) and set(split["val"]).isdisjoint(split["test"])
    assert split == split_cases(folders, seed=0) and split != split_cases(folders, seed=1)


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
