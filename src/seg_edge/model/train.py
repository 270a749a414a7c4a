"""Training recipe: DynUNet, Dice + BCE on WT/TC/ET, Adam, ReduceLROnPlateau, best checkpoint.

Resumable: ``last.pt`` holds model, optimiser, scheduler and sampler state (all loadable with
``torch.load(weights_only=True)``); ``best.pt`` holds the state dict of the best validation
epoch; ``log.csv`` one row per epoch.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from seg_edge.choices import TrainPrecision
from seg_edge.errors import InputError
from seg_edge.model.dataset import PatchSampler, load_training_case, split_cases
from seg_edge.model.networks import build_network, card_for
from seg_edge.runtime.postprocess import sigmoid
from seg_edge.runtime.preprocess import window_size
from seg_edge.runtime.regions import case_folders, dice, et_label
from seg_edge.runtime.sessions.torch import TorchSession
from seg_edge.runtime.window import sliding_window


LOG_FIELDS = ["epoch", "train_loss", "val_dice_WT", "val_dice_TC", "val_dice_ET", "val_dice_mean", "lr", "seconds"]


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    preset: str = "edge"
    patch: int = 64
    batch: int = 2
    epochs: int = 40
    iters_per_epoch: int = 250
    lr: float = 1e-3
    seed: int = 0
    threads: int = 0
    max_minutes: float = 0.0
    val_overlap: float = 0.25
    precision: TrainPrecision | str = TrainPrecision.auto


def validate(session, cases, card, overlap: float) -> list[float]:
    """Mean per-region Dice over whole validation cases, windowed as the runtime windows."""
    scores = []
    for case in cases:
        image = case.image.astype(np.float32)
        logits = sliding_window(image, session.run, window_size(image.shape[1:], card.patch_size), overlap)
        pred = sigmoid(logits) > np.asarray(card.outputs.thresholds, dtype=np.float32)[:, None, None, None]
        scores.append([dice(p, t) for p, t in zip(pred, case.regions)])
    return list(np.mean(scores, axis=0)) if scores else [0.0, 0.0, 0.0]


def _autocast_dtype(torch, device: str, precision: TrainPrecision):
    if precision is TrainPrecision.fp32:
        return None
    return torch.float16 if device == "cuda" else torch.bfloat16


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> Path:
    """Train per ``cfg``; returns the path of the best checkpoint."""
    precision = TrainPrecision(cfg.precision)  # InputError before torch loads and anything is written
    import torch
    from monai.losses import DiceLoss

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    card = card_for(cfg.preset)
    split = _split(cfg, out)
    log(f"cases: {len(split['train'])} train, {len(split['val'])} val, {len(split['test'])} test; device {device}")
    et = et_label(card.label_scheme)
    train_cases, val_cases = ([load_training_case(f, card, et) for f in split[k]] for k in ("train", "val"))
    model = build_network(cfg.preset).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.2, patience=2, min_lr=1e-6)
    sampler = PatchSampler(train_cases, (cfg.patch,) * 3, cfg.seed)
    amp = _autocast_dtype(torch, device, precision)
    scaler = torch.amp.GradScaler(enabled=amp == torch.float16)
    dice_loss, bce = DiceLoss(sigmoid=True, batch=True), torch.nn.BCEWithLogitsLoss()
    loss_fn = lambda logits, y: dice_loss(logits, y) + bce(logits, y)  # noqa: E731
    start_epoch, best = _resume(torch, out / "last.pt", device, (model, opt, sched), sampler, log)
    began = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        losses = _train_epoch(torch, model, (opt, scaler), sampler, cfg, (device, amp), loss_fn)
        session = TorchSession(model, card.in_channels, 3, device=device,
                               autocast_dtype=None if amp is None else str(amp).split(".")[-1])
        scores = validate(session, val_cases, card, cfg.val_overlap)
        mean = float(np.mean(scores))
        sched.step(mean)
        if mean > best:
            best = mean
            torch.save(model.state_dict(), out / "best.pt")
        torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(),
                    "rng": json.dumps(sampler.rng.bit_generator.state), "epoch": epoch, "best": best},
                   out / "last.pt")
        row = [epoch, float(np.mean(losses)), *scores, mean, opt.param_groups[0]["lr"], time.time() - t0]
        _append_log(out / "log.csv", row)
        log(f"epoch {epoch}: loss {row[1]:.4f} val Dice WT {scores[0]:.4f} TC {scores[1]:.4f} "
            f"ET {scores[2]:.4f} lr {row[6]:.2e} ({row[7]:.0f} s)")
        if cfg.max_minutes and (time.time() - began) / 60 >= cfg.max_minutes:
            log(f"stopping: time budget of {cfg.max_minutes} min reached")
            break
    return out / "best.pt"


def _split(cfg: TrainConfig, out: Path) -> dict[str, list[Path]]:
    """Split the case folders by case; record the split and the config in ``out``."""
    folders = case_folders(Path(cfg.data))
    if len(folders) < 3:
        raise InputError(f"{cfg.data}: {len(folders)} case folder(s) (expected at least 3: "
                         "one each for training, validation and test)")
    split = split_cases(folders, cfg.seed)
    (out / "split.json").write_text(json.dumps({k: [p.name for p in v] for k, v in split.items()}, indent=1))
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    return split


def _resume(torch, path: Path, device: str, objects, sampler, log) -> tuple[int, float]:
    """Restore model, optimiser, scheduler and sampler from ``last.pt``; (next epoch, best score)."""
    if not path.exists():
        return 0, -1.0
    model, opt, sched = objects
    state = torch.load(path, weights_only=True, map_location=device)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
    sched.load_state_dict(state["sched"])
    sampler.rng.bit_generator.state = json.loads(state["rng"])
    log(f"resumed from epoch {int(state['epoch'])} (best mean Dice {float(state['best']):.4f})")
    return int(state["epoch"]) + 1, float(state["best"])


def _train_epoch(torch, model, optim, sampler, cfg: TrainConfig, where, loss_fn) -> list[float]:
    """One epoch of ``cfg.iters_per_epoch`` steps; returns the step losses."""
    (opt, scaler), (device, amp) = optim, where
    model.train()
    losses = []
    for _ in range(cfg.iters_per_epoch):
        x, y = (torch.from_numpy(a).to(device) for a in sampler.batch(cfg.batch))
        with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
        logits = logits.float()
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return losses


def _append_log(path: Path, row: list) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(LOG_FIELDS)
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
