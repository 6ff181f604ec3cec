"""``selfsup eval linear``: a linear classifier on a frozen backbone, two ways.

``fast``: features of every image extracted once (centre crop, BatchNorm in eval mode), then
a sweep of learning rates and weight decays trained together on them (``trainer.probe``),
each scored on a class-balanced part of the *training* split held out from it; the best pair
is retrained on the whole training split and scored once on the evaluation split, which the
choice never sees. Minutes even for ImageNet-size feature banks on a GPU; the usual way to
compare checkpoints.

``protocol``: the published recipe of a method's paper (``settings.LINEAR_PRESETS``): fresh
random-resized-crop + flip views of the training images through the Loader every epoch, the
backbone frozen in eval mode, the paper's optimizer, learning rate and its scaling, weight
decay, epochs and schedule; centre-crop evaluation. What a paper's linear number means.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn
from tqdm import tqdm

from selfsup.downstream.evaluate import eval_device, split_features
from selfsup.downstream.settings import Supervised
from selfsup.downstream.subsets import holdout_split
from selfsup.downstream.target import Target
from selfsup.pipeline.loader import Loader
from selfsup.pipeline.sources import open_split
from selfsup.trainer.optim import build_optimizer
from selfsup.trainer.probe import accuracy, fit_linear

FAST_LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # on standardised features
FAST_WDS = (0.0, 1e-4, 1e-3, 1e-2)
FAST_EPOCHS = 30
HOLDOUT_FRACTION = 0.1  # BYOL held out 10k of ImageNet's 1.28M; small sets need more


def fast_probe_on_features(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    *,
    lrs: tuple[float, ...] = FAST_LRS,
    weight_decays: tuple[float, ...] = FAST_WDS,
    epochs: int = FAST_EPOCHS,
    batch_size: int = 256,
    holdout_fraction: float = HOLDOUT_FRACTION,
    seed: int = 0,
) -> dict:
    """The fast probe on extracted features (see the module doc); returns the sweep's held-out
    scores, the chosen pair and the evaluation split's top-1 / top-5."""
    x, y = train
    keep, held = holdout_split(y.cpu().numpy(), holdout_fraction, seed)
    keep, held = torch.as_tensor(keep), torch.as_tensor(held)
    kw = dict(epochs=epochs, batch_size=batch_size, seed=seed)
    sweep = fit_linear(x[keep], y[keep], num_classes, lrs, weight_decays, **kw)
    held_scores = sweep.scores(x[held])
    grid = []
    for g in range(len(held_scores)):
        top1, _ = accuracy(held_scores[g], y[held])
        lr, wd = lrs[g // len(weight_decays)], weight_decays[g % len(weight_decays)]
        grid.append({"lr": lr, "weight_decay": wd, "holdout_top1": round(top1, 2)})
    best = max(range(len(grid)), key=lambda i: (grid[i]["holdout_top1"], -i))
    lr, wd = grid[best]["lr"], grid[best]["weight_decay"]
    final = fit_linear(x, y, num_classes, (lr,), (wd,), **kw)
    top1, top5 = accuracy(final.scores(val[0])[0], val[1])
    return {
        "top1": round(top1, 2),
        "top5": round(top5, 2),
        "lr": lr,
        "weight_decay": wd,
        "epochs": epochs,
        "holdout_images": len(held),
        "sweep": grid,
        "fit": final,
    }


def run_fast(t: Target, **kw) -> dict:
    """The fast probe of ``t``'s backbone on its config's train and evaluation splits."""
    cfg = t.cfg
    device = eval_device(cfg)
    net = t.backbone.to(device)
    start = time.time()
    train = split_features(cfg, net, cfg.data.train_split, device, normalize=False)
    val = split_features(cfg, net, cfg.data.val_split, device, normalize=False)
    num_classes = open_split(cfg.data, cfg.data.train_split, progress=False).num_classes
    out = fast_probe_on_features(train, val, num_classes, seed=cfg.train.seed, **kw)
    out.pop("fit")
    return {
        "protocol": "linear-fast",
        "weights": t.where,
        "train_images": len(train[0]),
        "eval_images": len(val[0]),
        **out,
        "seconds": round(time.time() - start, 1),
    }


def new_fc(width: int, num_classes: int, init: str, seed: int) -> nn.Linear:
    fc = nn.Linear(width, num_classes)
    nn.init.zeros_(fc.bias)
    if init == "zero":
        nn.init.zeros_(fc.weight)
    else:  # MoCo v3's N(0, 0.01), from its own generator (the global stream is untouched)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            fc.weight.copy_(torch.randn(fc.weight.shape, generator=gen) * 0.01)
    return fc


def train_protocol_classifier(
    backbone: nn.Module,
    train_source,
    num_classes: int,
    s: Supervised,
    *,
    size: int,
    device: torch.device,
    threads: int = 0,
    engine: str = "auto",
    reduced_decode: bool = True,
    progress: bool = False,
) -> nn.Linear:
    """A linear classifier trained on the frozen ``backbone`` (eval mode, no gradients) with
    crop-and-flip views (the ``supervised`` recipe) of ``train_source``, as ``s`` says."""
    batch = min(s.batch_size, len(train_source))
    if batch != s.batch_size:
        s = dataclasses.replace(s, batch_size=batch)  # lr scaling follows the real batch
    loader = Loader(
        train_source, "supervised", batch, device, s.seed, size=size, threads=threads,
        view_overrides={"scale": s.crop_scale},
        engine=engine, reduced_decode=reduced_decode, drop_last=True,
    )  # fmt: skip
    fc = new_fc(backbone.num_features, num_classes, s.fc_init, s.seed).to(device)
    groups = [{"params": [fc.weight], "weight_decay": s.weight_decay, "lars_exclude": False},
              {"params": [fc.bias], "weight_decay": 0.0, "lars_exclude": True}]  # fmt: skip
    opt = build_optimizer(s.optimizer, groups, s.scaled(s.lr), s.weight_decay, s.momentum)
    if s.nesterov and isinstance(opt, torch.optim.SGD):
        for gr in opt.param_groups:
            gr["nesterov"] = True
    backbone.eval()
    steps = len(loader)
    bar = tqdm(total=s.epochs * steps, disable=not progress, unit="step", desc="linear probe")
    try:
        for epoch in range(s.epochs):
            loader.set_epoch(epoch)
            for i, b in enumerate(loader):
                f = s.factor(epoch + i / steps)
                for gr in opt.param_groups:
                    gr["lr"] = s.scaled(s.lr) * f
                with torch.no_grad():
                    feats = backbone(b.views[0].flatten(0, 1).to(next(fc.parameters()).dtype))
                loss = nn.functional.cross_entropy(fc(feats.float()), b.labels.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
    finally:
        bar.close()
        loader.close()
    return fc


def run_protocol(t: Target, s: Supervised, preset: str, progress: bool = True) -> dict:
    """The published linear protocol ``s`` on ``t``'s backbone."""
    cfg = t.cfg
    data = cfg.data
    device = eval_device(cfg)
    net = t.backbone.to(device)
    start = time.time()
    source = open_split(data, data.train_split, progress=False)
    threads = data.threads or 0
    fc = train_protocol_classifier(
        net, source, source.num_classes, s, size=data.size, device=device, threads=threads,
        engine=data.engine, reduced_decode=data.reduced_decode, progress=progress,
    )  # fmt: skip
    val_f, val_y = split_features(cfg, net, data.val_split, device, normalize=False)
    with torch.no_grad():
        top1, top5 = accuracy(fc(val_f.to(device)), val_y)
    return {
        "protocol": "linear",
        "preset": preset,
        "weights": t.where,
        "train_images": len(source),
        "eval_images": len(val_f),
        "top1": round(top1, 2),
        "top5": round(top5, 2),
        "settings": {k: v for k, v in vars(s).items()},
        "seconds": round(time.time() - start, 1),
    }
