"""The loader's per-stage timing (what selfsup profile reports): it changes no output, and
with one thread and no prefetch its stages account for the loader's wall time."""

from __future__ import annotations

import time

import pytest
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


def _timed_wall(loader, batches: int) -> float:
    """Seconds per image over ``batches`` batches after one warm-up batch, clocks reset."""
    it = iter(loader)
    next(it)
    loader.stage_clock.reset()
    loader.device_clock.reset()
    start = time.perf_counter()
    n = sum(len(next(it).labels) for _ in range(batches))
    return (time.perf_counter() - start) / n


def test_batched_augmentation_on_a_cpu_device_is_its_own_stage(synthetic_root):
    """augment_on_device on a CPU device: the batched augmentation is timed as
    ``device_augment`` (not as batching), there is no host-to-device copy, and the engine's
    stages plus it still account for the loader's wall time."""
    src = ImageFolderSource(synthetic_root / "train")
    kw = dict(seed=0, threads=1, prefetch=0, size=64, augment_on_device=True)
    loader = Loader(src, "simclr", 24, stage_timing=True, **kw)
    try:
        wall = _timed_wall(loader, 3)
        host = loader.stage_clock.per_image()
        device = loader.device_clock.per_image()
    finally:
        loader.close()
    assert device["h2d"] is None  # the device is the host: nothing is copied
    assert device["device_augment"] > 0
    # the engine outputs uint8 crops: its own colour stage is small beside the batched one
    assert host["augment"] < device["device_augment"]
    total = sum(host.values()) + device["device_augment"]
    print(f"stages {1e3 * total:.3f} ms (device augment {1e3 * device['device_augment']:.3f}), "
          f"wall {1e3 * wall:.3f} ms per image")  # fmt: skip
    assert 0.85 * wall <= total <= 1.0 * wall + 1e-6, (total, wall)
    untimed = Loader(src, "simclr", 24, **kw)
    timed = Loader(src, "simclr", 24, stage_timing=True, **kw)
    try:
        for a, b in zip(_batches(untimed, 1), _batches(timed, 1), strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a.views, b.views, strict=True))
    finally:
        untimed.close()
        timed.close()


def test_fused_augmentation_has_no_device_stages(synthetic_root):
    src = ImageFolderSource(synthetic_root / "train")
    loader = Loader(src, "simclr", 8, seed=0, threads=1, prefetch=0, size=32, stage_timing=True)
    try:
        _timed_wall(loader, 1)
        assert loader.device_clock.per_image() == {"h2d": None, "device_augment": None}
    finally:
        loader.close()


@pytest.mark.gpu
def test_copy_and_device_augmentation_are_timed_on_the_gpu(synthetic_root):
    """On CUDA both device stages are GPU time from events: positive, and read without
    changing the batches."""
    src = ImageFolderSource(synthetic_root / "train")
    kw = dict(seed=0, threads=2, prefetch=0, size=64, device="cuda")
    timed = Loader(src, "simclr", 32, stage_timing=True, engine="cpu", **kw)
    plain = Loader(src, "simclr", 32, engine="cpu", **kw)
    try:
        for a, b in zip(_batches(plain, 2), _batches(timed, 2), strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a.views, b.views, strict=True))
        device = timed.device_clock.per_image()
        assert device["h2d"] > 0 and device["device_augment"] > 0, device
        assert timed.device_clock.images == [64, 64]
    finally:
        timed.close()
        plain.close()
