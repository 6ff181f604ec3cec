"""Milliseconds per view of each augmentation op: CPU fast path vs reference vs batched torch.

    python benchmarks/augment_ops.py [--size 224] [--batch 64] [--torch-threads 1]

Every number comes from this run: the best of several timed rounds (the least disturbed by
other processes), per view. ``augment_batch`` runs on the CPU device on a batch and is
divided by the batch size; its cost depends on which stages the spec enables, not on the
sample's own flags, so all four jitter ops cost it the same. One thread everywhere by
default, so the numbers compare per core; the last line runs the CPU path on 1 and 2
threads to show that it releases the GIL (the speedup is capped by the free cores).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from selfsup.kernels.layout import (
    NPARAM,
    P_BLUR_SIGMA,
    P_BRIGHTNESS,
    P_CONTRAST,
    P_GRAY,
    P_HUE,
    P_JITTER,
    P_ORDER,
    P_SATURATION,
    P_SOLARIZE,
)
from selfsup.pipeline import augment
from selfsup.pipeline.params import draw_params
from selfsup.pipeline.rng import sample_rng
from selfsup.pipeline.views import ViewSpec


def best_ms(rounds: int, inner: int, fn: Callable[..., object], *args: object) -> float:
    """Best over ``rounds`` of the mean time of ``inner`` calls ``fn(*args)``, in ms."""
    fn(*args)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn(*args)
        best = min(best, (time.perf_counter() - t0) / inner)
    return best * 1e3


def case_row(name: str) -> tuple[dict[str, float], np.ndarray]:
    """The spec probabilities that enable this op's stage, and one row with only it on."""
    row = np.zeros(NPARAM, np.float32)
    row[P_ORDER : P_ORDER + 4] = (3, 0, 2, 1)  # contrast last: the two-pass case
    row[[P_BRIGHTNESS, P_CONTRAST, P_SATURATION]] = 1.0
    off = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}
    jitter = {"brightness": P_BRIGHTNESS, "contrast": P_CONTRAST, "saturation": P_SATURATION}
    if name in jitter or name == "hue":
        row[P_JITTER] = 1.0
        row[jitter.get(name, P_HUE)] = 0.1 if name == "hue" else 1.3
        return {**off, "jitter_p": 1.0}, row
    if name == "grayscale":
        row[P_GRAY] = 1.0
        return {**off, "grayscale_p": 1.0}, row
    if name == "blur":
        row[P_BLUR_SIGMA] = 1.5
        return {**off, "blur_p": 1.0}, row
    if name == "solarize":
        row[P_SOLARIZE] = 1.0
        return {**off, "solarize_p": 1.0}, row
    if name == "all":
        row[[P_JITTER, P_GRAY, P_SOLARIZE]] = 1.0
        row[[P_BRIGHTNESS, P_CONTRAST, P_SATURATION, P_HUE, P_BLUR_SIGMA]] = 1.3, 0.7, 1.2, 0.1, 1.5
        return {"jitter_p": 1.0, "grayscale_p": 1.0, "blur_p": 1.0, "solarize_p": 1.0}, row
    return off, row  # "normalise only"


OPS = (
    "normalise",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "grayscale",
    "blur",
    "solarize",
    "all",
)


def threaded_ms(workers: int, crops: list[np.ndarray], rows: list[np.ndarray], spec) -> float:
    """ms per view of augment_cpu over the whole batch, split over ``workers`` threads."""
    out = np.empty((len(crops), 3, spec.size, spec.size), np.float32)

    def part(w: int) -> None:
        for i in range(w, len(crops), workers):
            augment.augment_cpu(crops[i], rows[i], spec, out[i])

    def run() -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(part, range(workers)))

    return best_ms(5, 1, run) / len(crops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--torch-threads", type=int, default=1)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(args.torch_threads)
    augment.warmup()

    s, b = args.size, args.batch
    source = ViewSpec(size=s)  # crops cut by real draws from smooth 500x375 images
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (375, 500, 3), np.uint8), (0, 0), 3)
    rows = [draw_params(source, sample_rng(0, 0, i, 0), 375, 500) for i in range(b)]
    crops = [augment.crop_resize(img, row, source) for row in rows]
    crop_ms = best_ms(10, 50, augment.crop_resize, img, rows[0], source, crops[0])
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    out = np.empty((3, s, s), np.float32)

    print(f"{s}x{s} view, batch {b}, torch threads {args.torch_threads}: ms per view")
    print(f"(crop_resize from 500x375, {source.interpolation}: {crop_ms:.3f} ms)")
    print(f"{'op':<12}{'cpu':>9}{'reference':>11}{'batch':>9}{'ref/cpu':>9}{'batch/cpu':>11}")
    for name in OPS:
        probs, row = case_row(name)
        spec = ViewSpec(size=s, **probs)
        params = torch.from_numpy(np.tile(row, (b, 1)))
        cpu = best_ms(15, 20, augment.augment_cpu, crops[0], row, spec, out)
        ref = best_ms(3, 1, augment.augment_reference, crops[0], row, spec)
        bat = best_ms(3, 1, augment.augment_batch, x, params, spec) / b
        print(f"{name:<12}{cpu:>9.3f}{ref:>11.2f}{bat:>9.3f}{ref / cpu:>8.0f}x{bat / cpu:>10.1f}x")

    # The GIL: the batch's own rows (SimCLR draws) through augment_cpu on 1 and 2 threads.
    one, two = threaded_ms(1, crops, rows, source), threaded_ms(2, crops, rows, source)
    print(
        f"\nSimCLR rows, augment_cpu over the batch: 1 thread {one:.3f} ms/view, "
        f"2 threads {two:.3f} ms/view, speedup {one / two:.2f}x"
    )


if __name__ == "__main__":
    main()
