"""The cpu engine's per-stage timing (what selfsup profile reports): it changes no output, and
with one thread and no prefetch its stages account for the loader's wall time."""

from __future__ import annotations

import time

import torch

from selfsup.pipeline import ImageFolderSource, Loader
from selfsup.pipeline.engines.cpu import STAGES


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_timing_changes_no_output_and_is_off_by_default(synthetic_root):
    src = ImageFolderSource(synthetic_root / "train")
    plain = Loader(src, "simclr", 8, seed=3, threads=2, prefetch=0, size=32)
    timed = Loader(src, "simclr", 8, seed=3, threads=2, prefetch=0, size=32, stage_timing=True)
    try:
        assert plain.stage_clock is None
        for a, b in zip(_batches(plain, 2), _batches(timed, 2), strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a.views, b.views, strict=True))
        clock = timed.stage_clock
        assert clock.samples == 16 and list(clock.per_image()) == list(STAGES)
        assert all(v > 0 for v in clock.per_image().values())
    finally:
        plain.close()
        timed.close()


def test_stages_add_up_to_the_loader_time(synthetic_root):
    """One engine thread, no prefetch: every stage is timed on its own (none is a remainder),
    and they add up to the loader's wall time per image within 15% (about 97% here)."""
    src = ImageFolderSource(synthetic_root / "train")
    loader = Loader(src, "simclr", 24, seed=0, threads=1, prefetch=0, size=64, stage_timing=True)
    try:
        it = iter(loader)
        next(it)  # warm-up: JIT, buffers
        loader.stage_clock.reset()
        start = time.perf_counter()
        for _ in range(3):
            next(it)
        wall = (time.perf_counter() - start) / 72
    finally:
        loader.close()
    total = sum(loader.stage_clock.per_image().values())
    assert loader.stage_clock.samples == 72
    print(f"stages {1e3 * total:.3f} ms, wall {1e3 * wall:.3f} ms per image")
    assert 0.85 * wall <= total <= 1.0 * wall + 1e-6, (total, wall)
