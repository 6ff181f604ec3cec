"""The pretraining loop: build everything from a Config, train, checkpoint, evaluate.

``train_step`` is the whole step, top to bottom, with no host synchronisation: the loss
stays on the device and is read only on logging and checkpoint steps.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from selfsup.config import Config, config_to_dict, dump_config, load_config
from selfsup.errors import CheckpointError, TrainingError
from selfsup.pipeline.loader import Loader
from selfsup.pipeline.sources import open_split
from selfsup.trainer.checkpoint import load_checkpoint, save_checkpoint
from selfsup.trainer.evaluate import BANK_DTYPES, extract_features, knn_top1
from selfsup.trainer.methods import build_method
from selfsup.trainer.models import build_model
from selfsup.trainer.optim import build_optimizer, param_groups, warmup_cosine

CHECKPOINT = "checkpoints/last.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA device is available; use auto")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32). auto is bf16 on GPU, fp32 on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_backbone(cfg: Config) -> torch.nn.Module:
    m = cfg.model
    return build_model(
        m.arch, small_input=m.small_input, width=m.width, zero_init_residual=m.zero_init_residual
    )


def scaled_lr(cfg: Config, world_size: int = 1) -> float:
    bs = cfg.train.batch_size * world_size
    o = cfg.optim
    return {"linear": o.lr * bs / 256, "sqrt": o.lr * math.sqrt(bs), "none": o.lr}[o.lr_scaling]


def train_step(method, optimizer, scaler, batch, lr: float, amp_dtype, device) -> torch.Tensor:
    """One optimisation step; returns the detached loss (still on the device)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = method(batch.views)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def new_run_dir(cfg: Config) -> Path:
    """The run's directory: ``name`` if given, else ``<method>-<date>-<time>``, made unique.

    Default names are claimed with an exclusive ``mkdir``: two runs started in the same second
    (or by several jobs of an array) get ``...-153012``, ``...-153012-1``, and so on.
    """
    parent = Path(cfg.run_dir)
    parent.mkdir(parents=True, exist_ok=True)
    if cfg.name is None:
        stem = f"{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        for n in range(10_000):
            run_dir = parent / (stem if n == 0 else f"{stem}-{n}")
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise CheckpointError(f"no free run directory name {stem}-N in {parent}")
    else:
        run_dir = parent / cfg.name
        if (run_dir / CHECKPOINT).exists():
            raise CheckpointError(
                f"run directory {str(run_dir)!r} already holds a checkpoint; continue it with "
                f"--resume {run_dir}, or choose another name="
            )
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def _log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def pretrain(
    cfg: Config | None = None, *, resume: str | Path | None = None, progress: bool = True
) -> dict:
    """Run (or resume) pretraining; returns the summary also written to summary.json."""
    t_start = time.time()
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(
                f"{str(run_dir)!r} is not a run directory (no config.yaml); give the directory "
                "that `selfsup pretrain` created"
            )
        cfg = load_config(run_dir / "config.yaml")
        state = load_checkpoint(run_dir / CHECKPOINT)
    else:
        cfg = cfg or load_config("default")
        run_dir = new_run_dir(cfg)
        dump_config(cfg, run_dir / "config.yaml")
        state = None

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    channels_last = cfg.train.channels_last

    data = cfg.data
    train_source = open_split(data, data.train_split)
    loader = Loader(
        train_source, data.recipe, cfg.train.batch_size, device, cfg.train.seed,
        size=data.size, view_overrides=data.view_overrides,
        channels_last=channels_last, threads=data.threads, prefetch=data.prefetch,
        max_bad_fraction=data.max_bad_fraction, engine=data.engine,
        reduced_decode=data.reduced_decode,
    )  # fmt: skip

    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone(cfg)
    method = build_method(cfg.method, backbone, backbone.num_features).to(device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    groups = param_groups(method, cfg.optim.weight_decay, cfg.optim.exclude_1d)
    base_lr = scaled_lr(cfg, loader.sampler.world_size)
    optimizer = build_optimizer(
        cfg.optim.name, groups, base_lr, cfg.optim.weight_decay, momentum=cfg.optim.momentum
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    steps_per_epoch = len(loader)
    total_steps = cfg.train.epochs * steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    last_step = min(total_steps, cfg.train.max_steps or total_steps)

    def lr_at(step: int) -> float:
        final = base_lr * cfg.optim.final_lr_fraction
        return warmup_cosine(step, total_steps, warmup_steps, base_lr, final)

    step = 0
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])

    metrics_path = run_dir / "metrics.jsonl"
    bad_reported = 0
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    last_good = step if state is not None else None

    def check_finite() -> None:
        if nonfinite.item():
            where = f"step {last_good}" if last_good is not None else "no step (none was saved)"
            raise TrainingError(
                f"the loss became non-finite between steps {last_good or 0} and {step}; "
                f"the last good checkpoint ({where}) is kept in {run_dir / CHECKPOINT}. "
                "Lower optim.lr or use train.precision=fp32, then resume or restart"
            )

    def checkpoint() -> None:
        nonlocal last_good
        check_finite()
        save_checkpoint(
            {
                "step": step,
                "model": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "loader": loader.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "config": config_to_dict(cfg),
            },
            run_dir / CHECKPOINT,
        )
        last_good = step

    bar = tqdm(
        total=last_step, initial=step, disable=not progress, unit="step", dynamic_ncols=True,
        desc=f"pretrain {cfg.method.name}", file=sys.stderr,
    )  # fmt: skip
    images_per_step = loader.sampler.global_batch_size
    t_log, step_log = time.time(), step
    method.train()
    try:
        while step < last_step:
            loader.set_epoch(step // steps_per_epoch)
            for batch in loader:
                loss = train_step(method, optimizer, scaler, batch, lr_at(step), amp_dtype, device)
                nonfinite |= ~torch.isfinite(loss)
                step += 1
                bar.update(1)
                end_of_epoch = step % steps_per_epoch == 0
                if step % cfg.train.log_every == 0 or step == last_step or end_of_epoch:
                    check_finite()
                    now = time.time()
                    ips = images_per_step * (step - step_log) / max(now - t_log, 1e-9)
                    t_log, step_log = now, step
                    record = {
                        "step": step, "epoch": step / steps_per_epoch, "loss": loss.item(),
                        "lr": lr_at(step - 1), "images_per_sec": round(ips, 1),
                        "time": round(now - t_start, 2),
                    }  # fmt: skip
                    _log(metrics_path, record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{ips:.0f}")
                    bad = loader.bad_samples
                    for s in bad[bad_reported:]:
                        tqdm.write(f"selfsup: skipped bad sample {s}", file=sys.stderr)
                        _log(
                            metrics_path, {"step": step, "bad_sample": s.where, "reason": s.reason}
                        )
                    bad_reported = len(bad)
                if step % cfg.train.checkpoint_every == 0 or end_of_epoch or step == last_step:
                    checkpoint()
                if step >= last_step:
                    break
    finally:
        bar.close()
        loader.close()

    summary = {
        "run_dir": str(run_dir),
        "steps": step,
        "epochs": step / steps_per_epoch,
        "train_seconds": round(time.time() - t_start, 1),
        "bad_samples": [str(s) for s in loader.bad_samples],
    }
    if cfg.eval.knn:
        summary.update(evaluate_knn(cfg, method.backbone, device))
    summary["total_seconds"] = round(time.time() - t_start, 1)
    torch.save(method.backbone.state_dict(), run_dir / "backbone.pt")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _log(metrics_path, {"event": "summary", **summary})
    return summary


def evaluate_knn(cfg: Config, backbone, device: torch.device) -> dict:
    """k-NN top-1 on the held-out split, for ``backbone`` and (optionally) a random init."""
    data, ev = cfg.data, cfg.eval
    train_source = open_split(data, data.train_split)
    val_source = open_split(data, data.val_split)
    nets = {"knn_top1": backbone}
    if ev.random_init_baseline:
        torch.manual_seed(cfg.train.seed)  # the same initial weights the run started from
        nets["knn_top1_random_init"] = build_backbone(cfg).to(device)
    kw = dict(
        size=data.eval_size, batch_size=ev.batch_size, device=device, threads=data.threads,
        reduced_decode=data.reduced_decode, engine=data.engine,
    )  # fmt: skip
    bank = dict(dtype=BANK_DTYPES[ev.knn_bank_dtype], on_host=ev.knn_bank_on_host)
    out = {}
    for key, net in nets.items():
        train_f, train_y = extract_features(net, train_source, **kw, **bank)
        val_f, val_y = extract_features(net, val_source, **kw)
        acc = knn_top1(
            train_f, train_y, val_f, val_y, k=ev.knn_k, temperature=ev.knn_temperature,
            bank_chunk=ev.knn_bank_chunk if ev.knn_bank_on_host else None, device=device,
        )  # fmt: skip
        out[key] = round(acc, 2)
    return out
