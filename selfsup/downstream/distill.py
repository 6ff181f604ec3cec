"""``selfsup distill``: a student learns from a fine-tuned teacher on all training images.

``soft`` (SimCLRv2's distillation): every step, the teacher (fixed, eval mode) and the student
see the same crop-and-flip views; the loss is the cross-entropy between their class
distributions softened by a temperature, times T^2 (``selfsup.losses.distillation``), plus,
with ``alpha < 1`` and ``--labels``, ``1 - alpha`` times the labelled images' cross-entropy.
The training labels are otherwise unused. The teacher runs batched in the same step, so no
pseudo-label files are written.

``hard`` (self-training, after Noisy Student): one pass of the un-noised teacher over the
centre crops of every training image (its logits kept in the run directory), pseudo-labels
kept where its confidence reaches ``threshold``, balanced over classes (the most confident
images of large classes, repeats of small ones, to the mean count), the labelled subset added
with its true labels; the student then trains on noisier views (``student_recipe``: colour
jitter, grayscale, blur) and, optionally, dropout before its classifier.

The student is the teacher's architecture (self-distillation) unless ``model.*`` overrides
say otherwise (e.g. a resnet18 from a resnet50 teacher); it starts from random weights.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from selfsup import distributed, losses
from selfsup.config import dump_config, load_config
from selfsup.downstream.evaluate import eval_device
from selfsup.downstream.finetune import labelled_subset, new_dir
from selfsup.downstream.settings import DISTILL_DEFAULT, Distill, with_overrides
from selfsup.downstream.subsets import SubsetSource, source_labels
from selfsup.downstream.supervised import fit, predictions, score
from selfsup.downstream.target import build_network, load_network, save_network
from selfsup.errors import ConfigError, DataError
from selfsup.pipeline.loader import Loader
from selfsup.pipeline.recipes import recipe as make_recipe
from selfsup.pipeline.sources import open_split


def select_pseudo_labels(
    logits: torch.Tensor, threshold: float, balance: bool
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(indices, pseudo-labels, counts) of the images whose teacher confidence (the largest
    softmax probability) is at least ``threshold``; with ``balance``, every class that has any
    gets the mean count: its most confident images, cycled when it has fewer."""
    prob = logits.float().softmax(1)
    conf, label = prob.max(1)
    keep = torch.nonzero(conf >= threshold).flatten()
    kept = int(len(keep))
    if not balance or kept == 0:
        return keep.numpy(), label[keep].numpy(), {"confident": kept, "used": kept}
    classes = label[keep].unique()
    target = max(1, round(kept / len(classes)))
    out = []
    for c in classes.tolist():
        members = keep[label[keep] == c]
        members = members[conf[members].argsort(descending=True)]
        reps = -(-target // len(members))  # ceil: repeats of a small class
        out.append(members.repeat(reps)[:target])
    idx = torch.cat(out)
    info = {"confident": kept, "used": len(idx), "per_class": target, "classes": len(classes)}
    return idx.numpy(), label[idx].numpy(), info


def distill(
    teacher_dir: Path,
    overrides: list[str],
    settings: dict,
    *,
    labels: str | None = None,
    name: str | None = None,
    progress: bool = True,
) -> dict:
    """Train a student from the fine-tuned network in ``teacher_dir``; returns the summary."""
    start = time.time()
    teacher_cfg, teacher = load_network(teacher_dir)
    cfg = load_config(teacher_dir / "config.yaml", overrides)
    s: Distill = with_overrides(DISTILL_DEFAULT, settings, "distill")
    same_arch = dataclasses.asdict(cfg.model) == dataclasses.asdict(teacher_cfg.model)
    tau = s.temperature if s.temperature is not None else (0.1 if same_arch else 1.0)
    if s.mode == "soft" and labels is not None and s.alpha == 1:
        raise ConfigError(
            "--labels gives the labelled images a term in the loss only with distill.alpha "
            "below 1 (soft mode); set e.g. distill.alpha=0.5, or drop --labels"
        )
    if s.alpha < 1 and labels is None:
        raise ConfigError(
            f"distill.alpha={s.alpha} gives the labels a weight of {1 - s.alpha:g}, but no "
            "--labels subset was given; pass --labels (e.g. 10%) or leave alpha at 1"
        )
    if s.student_recipe not in ("simclr", "byol", "supervised", "moco_v2", "moco_v3"):
        raise ConfigError(
            f"distill.student_recipe={s.student_recipe!r}: choose a recipe whose first view is "
            "a whole image: simclr, byol, moco_v2, moco_v3 or supervised"
        )
    data = cfg.data
    device = eval_device(cfg)
    threads = data.threads or distributed.cores_per_process()
    source = open_split(data, data.train_split, progress=False)
    teacher = teacher.to(device).eval()
    labelled = np.zeros(len(source), dtype=bool)
    label_info = None
    if labels is not None:
        _, subset, label_info = labelled_subset(cfg, labels, s.seed)
        labelled[subset.indices] = True
    pseudo_info, logits = None, None
    if s.mode == "soft":
        train_source = source
        views = make_recipe("supervised", data.size)
        targets = torch.as_tensor(np.array(source_labels(source)))
        is_labelled = torch.as_tensor(labelled)
    else:
        logits, _ = predictions(teacher, source, size=data.eval_size, device=device,
                                threads=threads, engine=data.engine,
                                reduced_decode=data.reduced_decode)  # fmt: skip
        idx, pseudo, pseudo_info = select_pseudo_labels(logits.cpu(), s.threshold, s.balance)
        true = source_labels(source)
        lab = np.flatnonzero(labelled)
        all_idx = np.concatenate([idx, lab])
        if len(all_idx) == 0:
            raise DataError(
                f"no training image reaches the teacher confidence distill.threshold="
                f"{s.threshold}; lower it"
            )
        targets = torch.as_tensor(np.concatenate([pseudo, true[lab]]))
        is_labelled = torch.zeros(len(all_idx), dtype=torch.bool)
        train_source = SubsetSource(source, all_idx)
        views = make_recipe(s.student_recipe, data.size)[:1]
    views = [dataclasses.replace(views[0], count=1, scale=tuple(s.crop_scale))]
    # every check passed: the run directory now (a failed run leaves none behind)
    run_dir = new_dir(Path(cfg.run_dir), name or f"{teacher_dir.name}-distill-{s.mode}")
    dump_config(cfg, run_dir / "config.yaml")
    if logits is not None:
        torch.save(logits.cpu(), run_dir / "teacher_logits.pt")
    with torch.random.fork_rng():  # the student's seeded init; the caller's RNG untouched
        torch.manual_seed(s.seed)
        student = build_network(cfg, 0, source.num_classes)
    student.drop = nn.Dropout(s.dropout) if s.dropout else nn.Identity()
    student = student.to(device)
    batch = min(s.batch_size, len(train_source))
    if batch != s.batch_size:
        s = dataclasses.replace(s, batch_size=batch)
    loader = Loader(
        train_source, views, batch, device, s.seed, size=data.size, threads=threads,
        engine=data.engine, reduced_decode=data.reduced_decode,
        max_bad_fraction=data.max_bad_fraction,
    )  # fmt: skip
    record = {
        "teacher": str(teacher_dir), "mode": s.mode, "temperature": tau,
        "train_images": len(source), "student_images": len(train_source),
        "labels": label_info, "pseudo_labels": pseudo_info, "settings": dataclasses.asdict(s),
    }  # fmt: skip
    (run_dir / "distill.json").write_text(json.dumps(record, indent=2) + "\n")

    targets_d, labelled_d = targets.to(device), is_labelled.to(device)  # indexed on the device

    def batch_loss(b):
        x = b.views[0].flatten(0, 1)
        out = student(x)
        idx = b.indices.to(device)
        y, lab = targets_d[idx], labelled_d[idx]
        if s.mode == "hard":
            return nn.functional.cross_entropy(out, y)
        with torch.no_grad():
            t_logits = teacher(x)
        loss = s.alpha * losses.distillation(out, t_logits, tau) if s.alpha > 0 else 0.0
        if s.alpha < 1:  # the labelled images of this batch (none: no label term)
            ce = nn.functional.cross_entropy(out, y, reduction="none")
            loss = loss + (1 - s.alpha) * (ce * lab).sum() / lab.sum().clamp_min(1)
        return loss

    epochs = fit(student, loader, s, batch_loss, metrics=run_dir / "metrics.jsonl",
                 progress=progress, desc=f"distill ({s.mode})")  # fmt: skip
    val = open_split(data, data.val_split, progress=False)
    kw = dict(size=data.eval_size, device=device, threads=threads, engine=data.engine,
              reduced_decode=data.reduced_decode, batch_size=cfg.eval.batch_size)  # fmt: skip
    result = score(student, val, **kw)
    teacher_result = score(teacher, val, **kw)
    save_network(student.cpu(), run_dir, 0)
    torch.save(student.backbone.state_dict(), run_dir / "backbone.pt")
    summary = {
        "run_dir": str(run_dir), **record, "final_loss": epochs[-1]["loss"],
        "top1": result["top1"], "top5": result["top5"], "eval_images": result["images"],
        "teacher_top1": teacher_result["top1"], "teacher_top5": teacher_result["top5"],
        "seconds": round(time.time() - start, 1),
    }  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
