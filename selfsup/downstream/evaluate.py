"""``selfsup eval knn``: weighted k-NN of any backbone on any data the pipeline reads, for
several k at once; shared helpers of the evaluation commands (features, result files, tables).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from selfsup import distributed
from selfsup.config import Config
from selfsup.downstream.target import Target
from selfsup.pipeline.sources import open_split
from selfsup.trainer.build import resolve_device
from selfsup.trainer.evaluate import BANK_DTYPES, extract_features, knn_accuracy

DEFAULT_KS = (10, 20, 100, 200)  # DINO's and DINOv2's k; k=20 is the one they report


def split_features(
    cfg: Config, backbone: nn.Module, split: str, device: torch.device, **kw
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre-crop features and labels of one split of ``cfg``'s data (see extract_features)."""
    data = cfg.data
    source = open_split(data, split, progress=False)
    return extract_features(
        backbone, source, size=data.eval_size, batch_size=cfg.eval.batch_size, device=device,
        threads=data.threads or distributed.cores_per_process(),
        reduced_decode=data.reduced_decode, engine=data.engine, **kw,
    )  # fmt: skip


def eval_device(cfg: Config) -> torch.device:
    device = resolve_device(cfg.train.device)
    torch.set_num_threads(cfg.train.threads or distributed.cores_per_process())
    return device


def run_knn(t: Target, ks: tuple[int, ...] = DEFAULT_KS, temperature: float | None = None) -> dict:
    """Weighted k-NN (cosine, votes exp(sim / T)) of ``t``'s backbone, train split as the
    bank and the held-out split as queries: ``{"k": {k: {"top1", "top5"}}, ...}``."""
    cfg = t.cfg
    device = eval_device(cfg)
    net = t.backbone.to(device)
    ev = cfg.eval
    temperature = ev.knn_temperature if temperature is None else temperature
    bank = dict(dtype=BANK_DTYPES[ev.knn_bank_dtype], on_host=ev.knn_bank_on_host)
    train_f, train_y = split_features(cfg, net, cfg.data.train_split, device, **bank)
    val_f, val_y = split_features(cfg, net, cfg.data.val_split, device)
    ks = tuple(sorted({min(k, len(train_f)) for k in ks}))  # at most the whole bank
    scores = knn_accuracy(
        train_f, train_y, val_f, val_y, ks=ks, temperature=temperature,
        bank_chunk=ev.knn_bank_chunk if ev.knn_bank_on_host else None, device=device,
    )  # fmt: skip
    return {
        "protocol": "knn",
        "weights": t.where,
        "temperature": temperature,
        "train_images": len(train_f),
        "eval_images": len(val_f),
        "k": {str(k): {"top1": round(a, 2), "top5": round(b, 2)} for k, (a, b) in scores.items()},
    }


def write_result(result: dict, out: str | Path | None, t: Target, name: str) -> Path:
    """``result`` as JSON at ``out``; by default ``<run dir>/<name>.json``, or beside a bare
    weights file as ``<file stem>.<name>.json``."""
    if out is None:
        w = Path(t.where)
        out = t.run_dir / f"{name}.json" if t.run_dir else w.with_name(f"{w.stem}.{name}.json")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def table(rows: list[tuple], header: tuple) -> str:
    """A plain aligned text table."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
