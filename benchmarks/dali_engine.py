"""Images/sec of the dali engine (DALI's CPU-only mode) against the cpu engine, uint8 output.

    python benchmarks/dali_engine.py [--images 384] [--batch 64] [--threads 0] [--recipe simclr]

Both engines decode, crop, resize and flip the same synthetic JPEGs (about 450x380, quality
90, smooth noise like a photo's spectrum) held in memory, with the same parameter rows; no
colour chain (that runs after either engine). Each engine does one warm-up pass, then the
engines take turns for ``--rounds`` timed passes over all images; the best pass of each is
reported, with the ratio of the two measured in the same run. ``--device N`` times DALI's
nvJPEG path on GPU N instead.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import simplejpeg
import torch

from selfsup.pipeline.engines.cpu import CpuEngine
from selfsup.pipeline.engines.dali import DaliEngine
from selfsup.pipeline.recipes import recipe


class MemorySource:
    num_classes = 1

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads

    def __len__(self) -> int:
        return len(self.payloads)

    def read(self, index: int) -> tuple[bytes, int]:
        return self.payloads[index], 0

    def describe(self, index: int) -> str:
        return f"memory#{index}"


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = int(rng.integers(360, 401)), int(rng.integers(430, 471))
        img = np.zeros((h, w, 3), np.float32)
        for cells, amp in ((4, 90.0), (16, 40.0), (64, 15.0)):  # coarse to fine detail
            small = rng.normal(0, amp, (cells, cells, 3)).astype(np.float32)
            img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + 128 + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        out.append(simplejpeg.encode_jpeg(img, quality=90))
    return out


def best_rates(engines: list, n: int, batch: int, rounds: int) -> list[float]:
    """Images/sec of each engine: the best of ``rounds`` passes, the engines taking turns in
    every round so that a change in machine load hits both alike."""
    batches = [np.arange(s, min(s + batch, n)) for s in range(0, n, batch)]
    for engine in engines:  # warm-up: builds DALI's pipeline, fills caches
        for idx in batches:
            engine.load(idx, 0)
    best = [float("inf")] * len(engines)
    for r in range(rounds):
        for k, engine in enumerate(engines):
            t = time.perf_counter()
            for idx in batches:
                engine.load(idx, r + 1)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[k] = min(best[k], time.perf_counter() - t)
    return [n / t for t in best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="0: one per core")
    ap.add_argument("--recipe", default="simclr")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", type=int, default=None, help="GPU for DALI (default: CPU-only)")
    args = ap.parse_args()

    source = MemorySource(make_jpegs(args.images))
    views = recipe(args.recipe, args.size)
    kw = dict(seed=0, threads=args.threads)
    cpu = CpuEngine(source, views, output="uint8", **kw)
    engines, names = [cpu], ["cpu engine (uint8)"]
    # Like for like with DALI, which always decodes at full resolution.
    engines.append(CpuEngine(source, views, output="uint8", reduced_decode=False, **kw))
    names.append("cpu engine, full decode")
    dali = DaliEngine(source, views, device_id=args.device, **kw)
    where = "CPU-only" if args.device is None else f"GPU {args.device}"
    engines.append(dali)
    names.append(f"dali engine ({where})")
    n_views = sum(v.count for v in views)
    print(
        f"{args.images} JPEGs ~450x380 q90, recipe {args.recipe} ({n_views} views of "
        f"{args.size}), batch {args.batch}, threads {cpu.threads}"
    )
    rates = best_rates(engines, args.images, args.batch, args.rounds)
    for name, rate in zip(names, rates, strict=True):
        print(f"{name:<26} {rate:8.1f} images/s   dali / this {rates[-1] / rate:5.2f}x")
    for engine in engines:
        engine.close()


if __name__ == "__main__":
    main()
