"""The Loader's device-side stages, timed with ``stage_timing`` (``selfsup profile``).

Two stages happen after the engine has made a batch's crops:

- ``h2d``: the host-to-device copy of the crops (and of their augmentation parameters), on
  the loader's own CUDA stream. None on a CPU device: there is nothing to copy.
- ``device_augment``: the batched augmentation on the device from uint8 crops
  (``augment_on_device``: the default on CUDA). None when the augmentation is fused into the
  engine's threads (the cpu engine's ``augment`` stage) or done by ``HostAugment``.

On CUDA both are GPU time, read from CUDA events recorded around the work on the stream that
runs it: they overlap the host's stages and the training step, so they are reported beside
the host's stages, not added to them. Reading them waits for the recorded events, once, when
:meth:`DeviceClock.per_image` is called, never in the loop. On a CPU device the batched
augmentation runs in the consuming thread, and its host time is measured instead.
"""

from __future__ import annotations

import threading
import time

import torch

DEVICE_STAGES = ("h2d", "device_augment")


class DeviceClock:
    """Seconds per image of :data:`DEVICE_STAGES`; ``cuda``: GPU time from CUDA events."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds = [0.0] * len(DEVICE_STAGES)
        self.images = [0] * len(DEVICE_STAGES)
        self.host_seconds = 0.0  # the CPU device's batched augmentation, for the batching stage
        self._pending: list[tuple[int, torch.cuda.Event, torch.cuda.Event, int]] = []
        self._lock = threading.Lock()

    def start(self):
        """A mark on the current stream (CUDA) or the host clock, for :meth:`stop`."""
        if self.cuda:
            mark = torch.cuda.Event(enable_timing=True)
            mark.record()
            return mark
        return time.perf_counter()

    def stop(self, stage: str, start, images: int) -> None:
        """End ``stage``'s interval begun with ``start`` (on the same stream), for ``images``."""
        k = DEVICE_STAGES.index(stage)
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            with self._lock:
                self._pending.append((k, start, end, images))
            return
        spent = time.perf_counter() - start
        with self._lock:
            self.seconds[k] += spent
            self.images[k] += images
            self.host_seconds += spent

    def reset(self) -> None:
        with self._lock:
            self.seconds = [0.0] * len(DEVICE_STAGES)
            self.images = [0] * len(DEVICE_STAGES)
            self.host_seconds = 0.0
            self._pending = []

    def per_image(self) -> dict[str, float | None]:
        """Seconds per image of each stage; None for a stage that did not run."""
        with self._lock:
            pending, self._pending = self._pending, []
            for k, start, end, images in pending:
                end.synchronize()
                self.seconds[k] += start.elapsed_time(end) / 1000
                self.images[k] += images
            return {
                name: (s / n if n else None)
                for name, s, n in zip(DEVICE_STAGES, self.seconds, self.images, strict=True)
            }
