"""The pretraining loop: build everything from a Config, train, checkpoint, evaluate.

``train_step`` (build.py) is the whole step, top to bottom, with no host synchronisation: the
loss stays on the device and is read only on logging and checkpoint steps.

Under torchrun every rank runs this loop on its share of each global batch; rank 0 alone
shows the progress bar, writes the run directory (config, metrics, checkpoints, summary)
and returns the summary. Logged figures are global: the loss is averaged over ranks, images/sec
counts the global batch. Setup runs under ``distributed.together``: an error on one rank (a
missing data path on one node) stops every rank instead of leaving the others waiting.

Optional monitoring (``eval.knn_every``, ``eval.online_linear``) leaves the trained weights
as they are without it: the k-NN runs between epochs, after the epoch's batches, on the
backbone in eval mode without gradients, drawing nothing from the global RNG; the online
classifier (online.py) learns from detached features with its own generator and optimizer.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from selfsup import distributed
from selfsup.config import Config, config_to_dict, dump_config, load_config
from selfsup.errors import CheckpointError, TrainingError
from selfsup.pipeline.sources import open_split
from selfsup.trainer.build import (
    build_backbone,
    build_loader,
    build_model_and_optimizer,
    describe_launch,
    join,
    lr_schedule,
    train_step,
)
from selfsup.trainer.checkpoint import load_checkpoint, save_checkpoint
from selfsup.trainer.evaluate import BANK_DTYPES, extract_features, knn_top1
from selfsup.trainer.online import OnlineLinear
from selfsup.trainer.sync_bn import average_bn_buffers

CHECKPOINT = "checkpoints/last.pt"


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


# Figures a metrics record may hold that TensorBoard gets as scalars (train.tensorboard).
SCALARS = ("loss", "lr", "images_per_sec", "online_linear_top1", "knn_top1",
           "knn_top1_random_init")  # fmt: skip


class Metrics:
    """metrics.jsonl (one JSON line per record) and, with ``tensorboard``, the same figures as
    TensorBoard scalars in ``run_dir/tensorboard`` (x: the record's step). Rank 0 only."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict, step: int) -> None:
        _log(self.path, record)
        if self.writer is not None:
            for key in SCALARS:
                if isinstance(record.get(key), int | float):
                    self.writer.add_scalar(key, record[key], step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _open_run(cfg: Config | None, resume: str | Path | None):
    """(cfg, run_dir, checkpoint state or None) for a new or resumed run."""
    if resume is None:
        cfg = cfg or load_config("default")
        return cfg, None, None
    run_dir = Path(resume)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} is not a run directory (no config.yaml); give the directory "
            "that `selfsup pretrain` created"
        )
    return load_config(run_dir / "config.yaml"), run_dir, load_checkpoint(run_dir / CHECKPOINT)


def pretrain(
    cfg: Config | None = None, *, resume: str | Path | None = None, progress: bool = True
) -> dict:
    """Run (or resume) pretraining; returns the summary also written to summary.json.

    Launched by torchrun, every rank calls this; the returned summary is the same on every
    rank, and only rank 0 writes files or prints.
    """
    t_start = time.time()
    cfg, run_dir, state = _open_run(cfg, resume)
    saved_world = state.get("launch", {}).get("world_size") if state else None
    device = join(cfg)
    main = distributed.is_main()
    # No collective inside a `together` block: a rank that fails there skips the rest of it.
    new_dir, data = None, cfg.data
    with distributed.together("preparing the data"):
        if main:  # the built-in dataset is generated once, by rank 0, before the others read it
            open_split(data, data.train_split)
    with distributed.together("setting up the run"):
        launch = describe_launch(cfg, device, saved_world)
        loader = build_loader(cfg, device, launch, progress=main)
        if main and run_dir is None:
            new_dir = str(new_run_dir(cfg))
            dump_config(cfg, Path(new_dir) / "config.yaml")
    if run_dir is None:
        run_dir = Path(distributed.broadcast_object(new_dir))
    if main:
        _log(run_dir / "launches.jsonl", {"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "resumed_at_step": int(state["step"]) if state else 0, **launch.record()})  # fmt: skip
    steps_per_epoch = len(loader)
    total_steps = cfg.train.epochs * steps_per_epoch
    model = build_model_and_optimizer(cfg, device, total_steps, steps_per_epoch)
    method, optimizer, scaler = model.method, model.optimizer, model.scaler

    last_step = min(total_steps, cfg.train.max_steps or total_steps)
    lr_at = lr_schedule(cfg, model.base_lr, steps_per_epoch)

    online = None
    if cfg.eval.online_linear:  # a probe on the stop-gradient features; see online.py
        dtype = next(method.backbone.parameters()).dtype  # float64 for fp64 runs
        online = OnlineLinear(
            method, loader.source.num_classes, lr=cfg.eval.online_linear_lr,
            seed=cfg.train.seed, device=device, dtype=dtype,
        )  # fmt: skip

    step = 0
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        if online is not None and "online_linear" in state:
            online.load_state_dict(state["online_linear"])

    metrics = Metrics(run_dir, cfg.train.tensorboard) if main else None
    bad_reported = 0
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    last_good = step if state is not None else None

    def check_finite() -> None:  # every rank, same steps: it is a collective
        flag = distributed.all_reduce_(nonfinite.to(torch.int32), "max")
        if flag.item():
            where = f"step {last_good}" if last_good is not None else "no step (none was saved)"
            raise TrainingError(
                f"the loss became non-finite between steps {last_good or 0} and {step}; "
                f"the last good checkpoint ({where}) is kept in {run_dir / CHECKPOINT}. "
                "Lower optim.lr or use train.precision=fp32, then resume or restart"
            )

    def checkpoint() -> None:
        nonlocal last_good
        check_finite()
        if not cfg.train.sync_bn:
            average_bn_buffers(method)  # each rank kept its own statistics
        if main:
            save_checkpoint(
                {
                    "step": step,
                    "model": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "loader": loader.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "config": config_to_dict(cfg),
                    "launch": launch.record(),
                    **({"online_linear": online.state_dict()} if online else {}),
                },
                run_dir / CHECKPOINT,
            )
        last_good = step

    def report_bad_samples() -> None:  # a collective: every rank's new bad samples, on rank 0
        nonlocal bad_reported
        bad = loader.bad_samples
        new = [(s.where, s.reason, str(s)) for s in bad[bad_reported:]]
        bad_reported = len(bad)
        for where, reason, text in sum(distributed.gather_objects(new), []):
            if main:
                tqdm.write(f"selfsup: skipped bad sample {text}", file=sys.stderr)
                metrics.write({"step": step, "bad_sample": where, "reason": reason}, step)

    bar = tqdm(
        total=last_step, initial=step, disable=not (progress and main), unit="step",
        dynamic_ncols=True, desc=f"pretrain {cfg.method.name}", file=sys.stderr,
    )  # fmt: skip
    images_per_step = launch.global_batch
    t_log, step_log = time.time(), step
    postfix = {}
    model.forward.train()
    try:
        while step < last_step:
            loader.set_epoch(step // steps_per_epoch)
            for batch in loader:
                loss = train_step(model, batch.views, lr_at(step), device, step=step)
                if online is not None:
                    online.update(batch.labels)
                nonfinite |= ~torch.isfinite(loss)
                step += 1
                bar.update(1)
                end_of_epoch = step % steps_per_epoch == 0
                if step % cfg.train.log_every == 0 or step == last_step or end_of_epoch:
                    check_finite()
                    mean_loss = distributed.all_reduce_(loss.to(torch.float64), "mean").item()
                    now = time.time()
                    ips = images_per_step * (step - step_log) / max(now - t_log, 1e-9)
                    t_log, step_log = now, step
                    record = {
                        "step": step, "epoch": step / steps_per_epoch, "loss": mean_loss,
                        "lr": lr_at(step - 1), "images_per_sec": round(ips, 1),
                        "time": round(now - t_start, 2),
                    }  # fmt: skip
                    postfix.update(loss=f"{mean_loss:.4f}", img_s=f"{ips:.0f}")
                    if online is not None:  # top-1 on the batches since the last line
                        top1 = round(online.train_top1(), 2)  # a collective
                        record["online_linear_top1"] = postfix["online"] = top1
                    if main:
                        metrics.write(record, step)
                    bar.set_postfix(postfix)
                    report_bad_samples()
                if step % cfg.train.checkpoint_every == 0 or end_of_epoch or step == last_step:
                    checkpoint()
                if step >= last_step:
                    break
            # Between epochs, the epoch's batches all consumed and its checkpoint written (BN
            # statistics averaged over the ranks): the k-NN every eval.knn_every epochs. The
            # last epoch is the final evaluation's, when there is one. A collective.
            epoch = step // steps_per_epoch
            every = cfg.eval.knn_every
            due = every and step % steps_per_epoch == 0 and epoch % every == 0
            if due and (step < last_step or not cfg.eval.knn):
                acc = knn_of(cfg, method.backbone, device)
                if main:
                    metrics.write({"step": step, "epoch": epoch, "knn_top1": acc}, step)
                postfix["knn"] = acc
                bar.set_postfix(postfix)
    finally:
        bar.close()
        loader.close()
        if metrics is not None:  # a run that fails keeps what TensorBoard was given
            metrics.flush()
        if online is not None:
            online.close()

    bad_samples = sum(distributed.gather_objects([str(s) for s in loader.bad_samples]), [])
    summary = {
        "run_dir": str(run_dir),
        "steps": step,
        "epochs": step / steps_per_epoch,
        "train_seconds": round(time.time() - t_start, 1),
        "world_size": launch.world_size,
        "global_batch": launch.global_batch,
        "bad_samples": bad_samples,
    }
    val = None
    if online is not None:  # the held-out split's raw features; the k-NN reuses them
        val_f, val_y = features(cfg, method.backbone, device, cfg.data.val_split, normalize=False)
        acc = online.top1(val_f, val_y) if main else None
        summary["online_linear_top1"] = round(distributed.broadcast_object(acc), 2)
        val = torch.nn.functional.normalize(val_f, dim=1), val_y
    if cfg.eval.knn:
        summary.update(evaluate_knn(cfg, method.backbone, device, val))
    summary["total_seconds"] = round(time.time() - t_start, 1)
    if main:
        torch.save(method.backbone.state_dict(), run_dir / "backbone.pt")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        metrics.write({"event": "summary", **summary}, step)
        metrics.close()
    return summary


def evaluate_knn(cfg: Config, backbone, device: torch.device, val=None) -> dict:
    """k-NN top-1 on the held-out split, for ``backbone`` and (optionally) a random init.

    ``val``: the held-out split's L2-normalised features of ``backbone`` and their labels,
    when already extracted. A collective; every rank returns the same."""
    out = {"knn_top1": knn_of(cfg, backbone, device, val)}
    if cfg.eval.random_init_baseline:
        torch.manual_seed(cfg.train.seed)  # the same initial weights the run started from
        out["knn_top1_random_init"] = knn_of(cfg, build_backbone(cfg).to(device), device)
    return out


def knn_of(cfg: Config, backbone, device: torch.device, val=None) -> float:
    """The k-NN top-1 (percent, 2 decimals) of ``backbone`` on the held-out split, its bank
    the training split. Across processes each rank extracts its share of the features and
    every rank gets them all; the k-NN runs on rank 0 and its number is broadcast, so every
    rank returns the same."""
    ev = cfg.eval
    train_f, train_y = features(cfg, backbone, device, cfg.data.train_split, bank=True)
    val_f, val_y = val if val is not None else features(cfg, backbone, device, cfg.data.val_split)
    acc = None
    if distributed.is_main():
        acc = knn_top1(
            train_f, train_y, val_f, val_y, k=ev.knn_k, temperature=ev.knn_temperature,
            bank_chunk=ev.knn_bank_chunk if ev.knn_bank_on_host else None, device=device,
        )  # fmt: skip
    return round(distributed.broadcast_object(acc), 2)


def features(
    cfg: Config, backbone, device: torch.device, split: str, *, bank=False, normalize=True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``extract_features`` of ``split`` with the config's evaluation settings (``bank``: in
    the k-NN bank's dtype and place). A collective: every rank gets every feature."""
    data, ev = cfg.data, cfg.eval
    kw = dict(
        size=data.eval_size, batch_size=max(1, ev.batch_size // distributed.world_size()),
        device=device, threads=data.threads or distributed.cores_per_process(),
        reduced_decode=data.reduced_decode, engine=data.engine, normalize=normalize,
    )  # fmt: skip
    if bank:
        kw.update(dtype=BANK_DTYPES[ev.knn_bank_dtype], on_host=ev.knn_bank_on_host)
    return extract_features(backbone, open_split(data, split, progress=False), **kw)
