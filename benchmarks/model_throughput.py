"""Training throughput of the ResNet backbones on this machine: images/sec of one step.

One step = forward + backward + LARS step, fp32, random inputs, for each configuration with
contiguous and channels_last memory formats. img/s is from the fastest timed step (the median
is shown beside it). Ratios are printed against the first row (the baseline, measured in the
same run), since absolute numbers depend on the machine and its load.

    python benchmarks/model_throughput.py --threads 2 --batch 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from selfsup.trainer.models import build_model
from selfsup.trainer.optim import build_optimizer, param_groups

# (label, model, build kwargs, input side)
CONFIGS = [
    ("resnet18 small_input w64 @32", "resnet18", {"small_input": True, "width": 64}, 32),
    ("resnet18 small_input w32 @32", "resnet18", {"small_input": True, "width": 32}, 32),
    ("resnet18 small_input w16 @32", "resnet18", {"small_input": True, "width": 16}, 32),
    ("resnet18 standard w64 @64", "resnet18", {"width": 64}, 64),
    ("resnet18 standard w32 @64", "resnet18", {"width": 32}, 64),
]


def step_times(
    name: str, kwargs: dict, side: int, batch: int, channels_last: bool, warmup: int, steps: int
) -> list[float]:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **kwargs).train()
    opt = build_optimizer("lars", param_groups(model, 1e-6), lr=0.1, weight_decay=1e-6)
    x = torch.randn(batch, 3, side, side)
    y = torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, fp32, "
        f"{args.steps} timed steps after {args.warmup} warmup; "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    # img/s from the fastest step: on a shared machine other processes stall OpenMP barriers
    # and inflate some steps several-fold, so the best step is the stable statistic (as timeit).
    header = (
        f"{'config':29} {'format':13} {'img/s':>7} {'median':>7} {'ms/step':>8} "
        f"{'vs base':>7} {'cl/contig':>9}"
    )
    print(header)
    print("-" * len(header))
    base = None
    for label, name, kwargs, side in CONFIGS:
        contiguous = None
        for channels_last in (False, True):
            times = step_times(
                name, kwargs, side, args.batch, channels_last, args.warmup, args.steps
            )
            ips, median_ips = args.batch / min(times), args.batch / statistics.median(times)
            base = base or ips
            contiguous = contiguous or ips
            fmt = "channels_last" if channels_last else "contiguous"
            ratio = f"{ips / contiguous:9.2f}" if channels_last else ""
            print(
                f"{label:29} {fmt:13} {ips:7.1f} {median_ips:7.1f} {1000 * min(times):8.0f} "
                f"{ips / base:7.2f} {ratio}",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
