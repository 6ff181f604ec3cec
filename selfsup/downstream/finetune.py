"""``selfsup finetune``: the whole network fine-tuned on a few labels, scored on the full
evaluation split.

The labelled images are a subset of the training split (``subsets.select_subset``: a
class-balanced percentage, K per class, or a file of image names such as SimCLR's
``10percent.txt``). Views are crop-and-flip only (the ``supervised`` recipe); the network is
the backbone, the first layers of the projection head for SimCLRv2 (its recipe fine-tunes from
the head's first layer), and a zero-initialised ``fc``. Settings come from the method paper's
preset for that share of labels (``settings.FINETUNE_PRESETS``), overridable key by key.

The run directory holds config.yaml, finetune.json (settings, labels, counts), labels.txt (the
labelled images' names, when the source has names), metrics.jsonl, network.pt / network.json
(the classifier; ``selfsup distill --teacher`` and ``selfsup export`` read them), backbone.pt
and summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from torch import nn

from selfsup import distributed
from selfsup.config import dump_config
from selfsup.downstream.evaluate import eval_device
from selfsup.downstream.settings import (
    FINETUNE_HEAD_LAYERS,
    FINETUNE_PRESETS,
    Supervised,
    pick_preset,
    with_overrides,
)
from selfsup.downstream.subsets import (
    SubsetSource,
    class_counts,
    parse_labels_spec,
    sample_names,
    select_subset,
    source_labels,
)
from selfsup.downstream.supervised import fit, score
from selfsup.downstream.target import Target, build_network, save_network
from selfsup.errors import CheckpointError, DataError
from selfsup.pipeline.loader import Loader
from selfsup.pipeline.sources import open_split
from selfsup.trainer.build import build_backbone


def new_dir(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name-1``, ``name-2``, ... if taken (claimed with mkdir)."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        d = parent / (name if n == 0 else f"{name}-{n}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise CheckpointError(f"no free run directory name {name}-N in {parent}")


def preset_for(method: str, name: str | None, fraction: float) -> tuple[str, Supervised]:
    """The fine-tuning preset of ``name`` (default: the method's, else SimCLRv2's), in its 1%
    or 10% variant, whichever share of labels is closer to ``fraction``."""
    name, variants = pick_preset(FINETUNE_PRESETS, name, method, "finetune")
    share = "1%" if abs(fraction - 0.01) < abs(fraction - 0.10) else "10%"
    return f"{name} {share}", variants[share]


def labelled_subset(cfg, spec: str, seed: int) -> tuple[object, SubsetSource, dict]:
    """(the train split, its labelled subset, a description with per-class counts)."""
    source = open_split(cfg.data, cfg.data.train_split, progress=False)
    parsed = parse_labels_spec(spec)
    idx = select_subset(source, parsed, seed)
    counts = class_counts(source_labels(source), idx, source.num_classes)
    info = {
        "labels": str(parsed),
        "seed": seed,
        "labelled_images": len(idx),
        "train_images": len(source),
        "per_class": {"min": int(counts.min()), "max": int(counts.max())},
    }
    return source, SubsetSource(source, idx), info


def finetune(
    t: Target,
    labels: str,
    *,
    preset: str | None = None,
    settings: dict | None = None,
    random_init: bool = False,
    head_layers: int | None = None,
    name: str | None = None,
    progress: bool = True,
) -> dict:
    """Fine-tune ``t``'s network (or, with ``random_init``, the same architecture from
    random weights: the baseline) on the labelled subset ``labels``; returns the summary."""
    start = time.time()
    cfg = t.cfg
    data = cfg.data
    device = eval_device(cfg)
    seed = with_overrides(Supervised(), settings or {}, "finetune").seed  # checked first
    source, subset, info = labelled_subset(cfg, labels, seed)
    fraction = info["labelled_images"] / info["train_images"]
    preset_name, base = preset_for(cfg.method.name, preset, fraction)
    s = with_overrides(base, settings or {}, "finetune")
    if head_layers is None:
        head_layers = FINETUNE_HEAD_LAYERS.get(cfg.method.name, 0)
    with torch.random.fork_rng():  # seeded inits; the caller's RNG untouched
        torch.manual_seed(s.seed)
        if random_init:
            backbone, method_state = build_backbone(cfg), None
        else:
            backbone, method_state = t.backbone, _method_state(t, head_layers)
        net = build_network(cfg, head_layers, source.num_classes, backbone, method_state)
    net = net.to(device)
    batch = min(s.batch_size, len(subset))
    if batch != s.batch_size:
        s = dataclasses.replace(s, batch_size=batch)  # lr scaling follows the real batch
    loader = Loader(
        subset, "supervised", batch, device, s.seed, size=data.size,
        view_overrides={"scale": s.crop_scale},
        threads=data.threads or distributed.cores_per_process(), engine=data.engine,
        reduced_decode=data.reduced_decode, max_bad_fraction=data.max_bad_fraction,
    )  # fmt: skip
    run_dir = new_dir(Path(cfg.run_dir), name or _default_name(t, labels, random_init))
    dump_config(cfg, run_dir / "config.yaml")
    record = {
        "from": "random init" if random_init else t.where, "preset": preset_name,
        "changed": sorted(settings or {}), "head_layers": head_layers, **info,
        "settings": dataclasses.asdict(s),
    }  # fmt: skip
    (run_dir / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
    _write_names(subset, run_dir / "labels.txt")

    def batch_loss(b):
        x = b.views[0].flatten(0, 1)
        return nn.functional.cross_entropy(net(x), b.labels.to(device))

    epochs = fit(net, loader, s, batch_loss, metrics=run_dir / "metrics.jsonl",
                 progress=progress, desc="finetune")  # fmt: skip
    val = open_split(data, data.val_split, progress=False)
    result = score(net, val, size=data.eval_size, device=device, engine=data.engine,
                   threads=data.threads or distributed.cores_per_process(),
                   reduced_decode=data.reduced_decode, batch_size=cfg.eval.batch_size)  # fmt: skip
    save_network(net.cpu(), run_dir, head_layers)
    torch.save(net.backbone.state_dict(), run_dir / "backbone.pt")
    summary = {
        "run_dir": str(run_dir), **record, "final_loss": epochs[-1]["loss"],
        "top1": result["top1"], "top5": result["top5"], "eval_images": result["images"],
        "seconds": round(time.time() - start, 1),
    }  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _method_state(t: Target, head_layers: int) -> dict | None:
    """The pretraining checkpoint's method state, when head layers are fine-tuned."""
    if not head_layers:
        return None
    ckpt = t.run_dir / "checkpoints" / "last.pt" if t.run_dir else None
    if ckpt is None or not ckpt.is_file():
        raise CheckpointError(
            "fine-tuning from the projection head needs the pretraining run directory with its "
            "checkpoints/last.pt (a bare weights file holds the backbone only); give the run "
            "directory, or --head-layers 0"
        )
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return state["model"]


def _default_name(t: Target, labels: str, random_init: bool) -> str:
    stem = t.run_dir.name if t.run_dir else Path(t.where).stem
    tag = Path(labels).stem if not labels.rstrip().endswith(("%", "class")) else labels
    tag = tag.replace("%", "pct").replace("/", "per")
    return f"{stem}-{'scratch' if random_init else 'finetune'}-{tag}"


def _write_names(subset: SubsetSource, path: Path) -> None:
    """The labelled images' names, one per line (a label file that gives the same subset)."""
    try:
        names = sample_names(subset)
    except DataError:
        return  # sources without names (.beton, arrays)
    path.write_text("".join(n + "\n" for n in names))
