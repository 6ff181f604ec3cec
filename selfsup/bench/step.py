"""``selfsup bench step``: where a training step's time goes, from one run of a config.

Three rates, each after its own warm-up, on the config's real data, model, method, precision
and device, built exactly as ``selfsup pretrain`` builds them:

- **model only**: the training step on synthetic batches already on the device, of the
  loader's shapes, dtype and memory format (one real batch's views, refilled with noise);
- **loader only**: batches delivered to the device (and, on a GPU, augmented there), with
  nothing consuming them;
- **end to end**: the real loader feeding the real step.

For each step the time is split into waiting for data (host wall clock in ``next(loader)``),
on a GPU the delivery's device work (``augment``: the wait for the loader stream's copies and
the batched augmentation), forward, backward (DDP's gradient all-reduce overlaps it) and
optimizer, from CUDA events on a GPU (read after the run, never synchronising a step) and from
the wall clock on a CPU (where augmentation runs inside the engine, so in the data wait).
Medians and 90th percentiles per step are reported, and end-to-end / model-only says how much
of the model's speed the loader lets through. Under torchrun every figure is global: images/sec
counts the global batch over the slowest rank's time, and the breakdown is rank 0's.
Epoch boundaries fall where they fall, as in training.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from selfsup import distributed
from selfsup.config import Config


class PhaseTimer:
    """Per-step durations of named phases: CUDA events on a GPU, the wall clock elsewhere;
    plus phases measured on the host (waiting for data), given as seconds."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.steps: list[list[tuple[str, object]]] = []
        self.host: dict[str, list[float]] = {}

    def start(self) -> None:
        self.steps.append([("start", self._now())])

    def mark(self, phase: str) -> None:
        self.steps[-1].append((phase, self._now()))

    def add(self, phase: str, seconds: float) -> None:
        self.host.setdefault(phase, []).append(seconds)

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def phases(self) -> dict[str, list[float]]:
        """phase -> seconds per step (call after the work is done; synchronises a GPU)."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, list[float]] = {k: list(v) for k, v in self.host.items()}
        for marks in self.steps:
            for (_, a), (phase, b) in zip(marks, marks[1:], strict=False):
                s = a.elapsed_time(b) / 1000 if self.cuda else b - a
                out.setdefault(phase, []).append(s)
        return out


PHASES = ("data_wait", "forward", "backward", "optimizer", "step")  # "augment": GPU only


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90))}


def _endless(loader):
    """Batches across epochs, as training takes them."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _global_rate(images_per_rank_batch: int, batches: int, seconds: float, device) -> float:
    """Images/sec of the whole job: every rank's batches over the slowest rank's time."""
    t = torch.tensor([seconds], dtype=torch.float64, device=device)  # NCCL: a device tensor
    t = distributed.all_reduce_(t, "max").item()
    return images_per_rank_batch * distributed.world_size() * batches / t


def bench_step(
    cfg: Config, steps: int = 20, warmup: int = 3, progress: bool = True, source=None
) -> dict:
    """The three rates and the per-step breakdown (see the module doc); ``source``: a Source
    given in code instead of the config's data."""
    from selfsup.trainer.build import (
        build_loader,
        build_model_and_optimizer,
        describe_launch,
        join,
        lr_schedule,
        train_step,
    )

    device = join(cfg)
    main = distributed.is_main()
    with distributed.together("setting up the benchmark"):
        launch = describe_launch(cfg, device)
        loader = build_loader(cfg, device, launch, progress=main, source=source)
    model = build_model_and_optimizer(cfg, device, cfg.train.epochs * len(loader), len(loader))
    lr_at = lr_schedule(cfg, model.base_lr, len(loader))
    per_rank = launch.per_process_batch
    bar = tqdm(total=3 * (warmup + steps), disable=not (progress and main), unit="step",
               desc="bench step", dynamic_ncols=True)  # fmt: skip
    model.forward.train()
    try:
        # (b) the loader alone
        batches = _endless(loader)
        for _ in range(warmup):
            next(batches)
            bar.update()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            batch = next(batches)
            bar.update()
        _sync(device)
        loader_s = time.perf_counter() - t0
        loader_rate = _global_rate(per_rank, steps, loader_s, device)

        # (a) the model alone, on noise shaped like the loader's views (strides kept)
        views = [torch.empty_like(v).normal_() for v in batch.views]
        timer = PhaseTimer(device)
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                timer, t0 = PhaseTimer(device), time.perf_counter()
            timer.start()
            train_step(model, views, lr_at(i), device, timer.mark, step=i)
            bar.update()
        _sync(device)
        model_s = time.perf_counter() - t0
        model_rate = _global_rate(per_rank, steps, model_s, device)
        model_phases = timer.phases()

        # (c) end to end: the real loader feeding the real step
        timer = PhaseTimer(device)
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                timer, t0 = PhaseTimer(device), time.perf_counter()
            t_wait = time.perf_counter()
            timer.start()
            batch = next(batches)
            timer.add("data_wait", time.perf_counter() - t_wait)
            if timer.cuda:  # the delivery's device work (copies waited on, augmentation)
                timer.mark("augment")
            train_step(model, batch.views, lr_at(i), device, timer.mark, step=i)
            bar.update()
        _sync(device)
        e2e_s = time.perf_counter() - t0
        e2e_rate = _global_rate(per_rank, steps, e2e_s, device)
        e2e_phases = timer.phases()
        # this rank's own figures, every rank's on every rank (the slowest sets the pace)
        mine = {
            "rank": distributed.rank(), "host": launch.host,
            "images_per_sec": {name: round(per_rank * steps / sec, 1) for name, sec in
                               (("model_only", model_s), ("loader_only", loader_s),
                                ("end_to_end", e2e_s))},
            "data_wait_median_ms": _stats(e2e_phases["data_wait"])["median_ms"],
        }  # fmt: skip
        ranks = distributed.gather_objects(mine)
    finally:
        bar.close()
        if "batches" in locals():
            batches.close()  # stop the prefetch thread before the engine shuts down
        loader.close()

    def breakdown(phases: dict[str, list[float]]) -> dict:
        out = {name: _stats(v) for name, v in phases.items()}
        totals = [sum(p) for p in zip(*phases.values(), strict=True)]
        out["step"] = _stats(totals)
        return out

    shapes = [list(v.shape) for v in batch.views]
    return {
        "config": {
            "method": cfg.method.name,
            "arch": cfg.model.arch,
            "width": cfg.model.width,
            "recipe": cfg.data.recipe,
            "size": cfg.data.size,
            "precision": cfg.train.precision,
            "channels_last": cfg.train.channels_last,
            "engine": loader.engine_name,
            "views_per_rank": shapes,
            "view_dtype": str(batch.views[0].dtype),
        },  # fmt: skip
        "launch": launch.record(),
        "steps": steps,
        "warmup": warmup,
        "images_per_sec": {
            "model_only": round(model_rate, 1),
            "loader_only": round(loader_rate, 1),
            "end_to_end": round(e2e_rate, 1),
        },
        "end_to_end_over_model_only": round(e2e_rate / model_rate, 3),
        "per_rank": ranks,
        "timing": "CUDA events" if device.type == "cuda" else "wall clock",
        "model_only": breakdown(model_phases),
        "end_to_end": breakdown(e2e_phases),
        # every timed end-to-end step's phases, in order (the profile's timeline)
        "end_to_end_steps_ms": {k: [round(1000 * x, 3) for x in v] for k, v in e2e_phases.items()},
    }


def format_report(r: dict) -> str:
    c, launch, ips = r["config"], r["launch"], r["images_per_sec"]
    views = " + ".join(f"{s[0]}x{s[-1]}px" for s in c["views_per_rank"])
    lines = [
        f"selfsup bench step: {c['method']} {c['arch']} (width {c['width']}), recipe "
        f"{c['recipe']} ({views}), {c['precision']}, engine {c['engine']}",
        f"device {launch['device']}, {launch['world_size']} process(es), global batch "
        f"{launch['global_batch']} ({launch['per_process_batch']} per process), torch threads "
        f"{launch['torch_threads']}, engine threads {launch['engine_threads']}; "
        f"{r['steps']} timed steps after {r['warmup']} warm-up, {r['timing']}",
        "",
        f"{'':<26}{'images/sec':>12}",
        f"{'model only (synthetic)':<26}{ips['model_only']:>12,.1f}",
        f"{'loader only':<26}{ips['loader_only']:>12,.1f}",
        f"{'end to end':<26}{ips['end_to_end']:>12,.1f}",
        f"end to end / model only: {r['end_to_end_over_model_only']:.3f}",
        "",
        "per step, ms (median / p90)",
        f"{'':<14}" + "".join(f"{h:>17}" for h in ("data wait", "augment", *PHASES[1:])),
    ]
    for name in ("model_only", "end_to_end"):
        b = r[name]
        cells = []
        for phase in ("data_wait", "augment", *PHASES[1:]):
            s = b.get(phase)
            cells.append(f"{s['median_ms']:.1f} / {s['p90_ms']:.1f}" if s else "-")
        label = name.replace("_", " ")
        lines.append(f"{label:<14}" + "".join(f"{c_:>17}" for c_ in cells))
    return "\n".join(lines)
