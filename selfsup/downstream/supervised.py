"""The supervised training loop shared by fine-tuning and distillation, and classifier scoring.

:func:`fit` trains a :class:`Classifier` for ``s.epochs`` epochs of a Loader's batches with the
optimizer and schedule of a :class:`Supervised` setting; what each batch's loss is comes from
the caller (cross-entropy on labels, or a teacher's softened predictions). The backbone and
head (pretrained) and ``fc`` (new) are separate parameter groups, so the papers' two learning
rates (SwAV, Barlow Twins, VICReg fine-tune the trunk slower than the classifier) apply.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from selfsup.downstream.settings import Supervised
from selfsup.pipeline.loader import Batch, Loader
from selfsup.trainer.classifier import Classifier
from selfsup.trainer.evaluate import extract_features
from selfsup.trainer.optim import build_optimizer, param_groups
from selfsup.trainer.probe import accuracy


def make_optimizer(net: Classifier, s: Supervised) -> torch.optim.Optimizer:
    """The pretrained layers at ``lr_backbone`` (when set) and ``fc`` at ``lr``; biases and
    norms without weight decay or LARS adaptation."""
    scale = 1.0 if s.lr_backbone is None or s.lr == 0 else s.lr_backbone / s.lr
    old = param_groups(torch.nn.ModuleList([net.backbone, net.head]), s.weight_decay)
    for g in old:
        g["lr_scale"] = scale
    new = param_groups(net.fc, s.weight_decay)
    opt = build_optimizer(s.optimizer, old + new, s.scaled(s.lr), s.weight_decay, s.momentum)
    if s.nesterov and isinstance(opt, torch.optim.SGD):
        for g in opt.param_groups:
            g["nesterov"] = True
    return opt


def fit(
    net: Classifier,
    loader: Loader,
    s: Supervised,
    batch_loss: Callable[[Batch], torch.Tensor],
    *,
    metrics: Path | None = None,
    progress: bool = True,
    desc: str = "train",
) -> list[dict]:
    """Train ``net`` (in train mode) on ``loader`` for ``s.epochs`` epochs, the loss of each
    batch from ``batch_loss``; one record per epoch (mean loss, lr, images/sec), appended to
    ``metrics`` (a metrics.jsonl) when given, and returned."""
    opt = make_optimizer(net, s)
    base = s.scaled(s.lr)
    steps = len(loader)
    records = []
    bar = tqdm(total=s.epochs * steps, disable=not progress, unit="step", desc=desc,
               dynamic_ncols=True)  # fmt: skip
    net.train()
    try:
        for epoch in range(s.epochs):
            loader.set_epoch(epoch)
            total = None  # summed on the device, read once per epoch (no sync per step)
            t0, seen = time.time(), 0
            for i, batch in enumerate(loader):
                lr = base * s.factor(epoch + i / steps)
                for g in opt.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
                loss = batch_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total = loss.detach().double() if total is None else total + loss.detach()
                seen += len(batch.labels)
                bar.update(1)
            rec = {
                "epoch": epoch + 1,
                "loss": round(float(total) / max(steps, 1), 5),  # the epoch's one sync
                "lr": lr,
                "images_per_sec": round(seen / max(time.time() - t0, 1e-9), 1),
            }
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
            records.append(rec)
            if metrics is not None:
                with open(metrics, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
    finally:
        bar.close()
        loader.close()
    return records


def score(net: torch.nn.Module, source, *, size: int, device, threads: int = 0, engine="auto",
          reduced_decode: bool = True, batch_size: int = 256) -> dict:  # fmt: skip
    """Top-1 / top-5 of a classifier on every image of ``source`` (centre crop, eval mode)."""
    logits, labels = extract_features(
        net, source, size=size, batch_size=batch_size, device=device, threads=threads,
        engine=engine, reduced_decode=reduced_decode, normalize=False,
    )  # fmt: skip
    top1, top5 = accuracy(logits, labels)
    return {"top1": round(top1, 2), "top5": round(top5, 2), "images": len(labels)}


def predictions(net: torch.nn.Module, source, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a classifier on every image of ``source``, centre-cropped, in
    index order (keyword arguments as :func:`score`'s)."""
    kw.setdefault("batch_size", 256)
    return extract_features(net, source, normalize=False, **kw)
