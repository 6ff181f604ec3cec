"""The ``cpu`` decode engine: decode each sample once, cut every view from that decode.

Each sample's parameter rows (crop boxes and every random choice) are drawn from the image
size in the header *before* decoding, so the JPEG can be decoded with libjpeg-turbo's DCT
scaling at the smallest 1/2, 1/4 or 1/8 size that still leaves every crop box at least as
many pixels as its view (``reduced_decode``; the boxes are mapped onto the smaller image).

Work is spread over a thread pool; decoding (libjpeg-turbo), resizing and blurring
(OpenCV) and the fused colour loops (numba, ``nogil``) all release the GIL, so the threads
run in parallel. Two output modes:

- ``fused`` (CPU training): the whole per-sample augmentation runs here and the engine
  returns normalised float32 views ``[V, B, 3, S, S]``.
- ``uint8`` (GPU training): the engine returns the cropped, resized, flipped uint8 views
  ``[V, B, S, S, 3]`` plus each view's parameter rows ``[V, B, NPARAM]``; the colour chain
  then runs batched on the device (``augment.augment_batch``).

A sample that cannot be read or decoded is replaced by another drawn deterministically from
(seed, epoch, index), counted and reported; past ``max_bad_fraction`` of the source the
engine raises :class:`DataError`.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from selfsup.errors import DataError
from selfsup.kernels.layout import NPARAM, P_FLIP, P_H, P_MASK, P_W, P_X0, P_Y0
from selfsup.pipeline import augment, buffers
from selfsup.pipeline.augment import CV2_INTERP
from selfsup.pipeline.decode import DecodeError, decode_image, image_size
from selfsup.pipeline.params import draw_params
from selfsup.pipeline.rng import replacement_rng, sample_rng
from selfsup.pipeline.saliency import saliency_mask
from selfsup.pipeline.sources.base import Source
from selfsup.pipeline.views import ViewSpec, antialiased, group_by_size

MAX_REPLACEMENT_TRIES = 16
# Per-sample stages timed with ``stage_timing`` (see StageClock): reading the bytes; the header,
# the random parameters and the decode; cropping and resizing every view; the rest of each
# view's augmentation (colour, grayscale, blur, solarize, masking and, in fused mode, the
# normalisation to float).
STAGES = ("read", "decode", "crop_resize", "augment", "collate")
# "collate" is per batch, shared out over its samples: allocating its buffers, handing its
# samples to the engine threads and waiting for them (the batch's wall time in the pool less
# the threads' own working time per thread), assembling labels and indices, and the Loader's
# hand-over (memory format, dtype, device).


class StageClock:
    """Seconds spent in each of :data:`STAGES`, summed over samples and threads."""

    def __init__(self) -> None:
        self.seconds = np.zeros(len(STAGES))
        self.samples = 0
        self.worker_seconds = 0.0  # the engine threads' working time, start to end of each task
        # with `record()`: every stage's (stage, thread id, start, end) in perf_counter
        # seconds, for a trace (selfsup profile --trace)
        self.events: list[tuple[int, int, float, float]] | None = None
        self._lock = threading.Lock()

    def record(self, on: bool = True) -> None:
        """Start (or stop) keeping every stage's interval in ``events``."""
        with self._lock:
            self.events = [] if on else None

    def add(
        self, seconds: np.ndarray, samples: int, worker_seconds: float = 0.0, events=None
    ) -> None:
        with self._lock:
            self.seconds += seconds
            self.samples += samples
            self.worker_seconds += worker_seconds
            if self.events is not None and events:
                self.events.extend(events)

    def add_collate(self, seconds: float, start: float | None = None) -> None:
        """Batch-level seconds; with ``start``, one interval from there (for a trace)."""
        with self._lock:
            self.seconds[-1] += seconds
            if self.events is not None and start is not None:
                self.events.append(
                    (len(STAGES) - 1, threading.get_native_id(), start, start + seconds)
                )

    def reset(self) -> None:
        with self._lock:
            self.seconds[:] = 0
            self.samples = 0

    def per_image(self) -> dict[str, float]:
        """Seconds per image in each stage (thread time, not wall time)."""
        n = max(self.samples, 1)
        return {name: float(t) / n for name, t in zip(STAGES, self.seconds, strict=True)}


@dataclass(frozen=True)
class BadSample:
    index: int
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class EngineBatch:
    views: list[torch.Tensor]  # per size group: float [V,B,3,S,S] (fused) or uint8 [V,B,S,S,3]
    # per size group [V,B,NPARAM] (uint8 mode only); device tensors once the Loader staged them
    params: list[np.ndarray] | list[torch.Tensor] | None
    labels: torch.Tensor  # [B] int64
    indices: torch.Tensor  # [B] int64, the global index of the sample actually used
    # per size group: the source's precomputed saliency masks cut like the views, uint8
    # [V,B,S,S] (uint8 mode, sources with masks, groups with masking only; else None)
    masks: list[torch.Tensor | None] | None = None
    # on CUDA: recorded on the loader's stream when the batch's device copies are queued
    ready: torch.cuda.Event | None = None


def source_has_masks(source: Source) -> bool:
    """Whether ``source`` offers precomputed saliency masks (``read_mask``; ``has_masks``
    when only some instances of its class do, e.g. .beton files without a mask field)."""
    return hasattr(source, "read_mask") and bool(getattr(source, "has_masks", True))


def _chunks(n: int, threads: int) -> list[np.ndarray]:
    """Positions 0..n-1 in small consecutive chunks, a few per thread: the pool hands them
    out as threads come free, so a slow sample (a big image, a replacement) does not leave
    the other threads idle at the end of the batch, as one equal share per thread would."""
    size = max(1, min(8, n // (4 * threads)))
    return [np.arange(i, min(n, i + size)) for i in range(0, n, size)]


class _Rows:
    """One sample's parameter rows ``[views, NPARAM]`` and the image size they were drawn for."""

    __slots__ = ("rows", "shape_full")

    def __init__(self, rows: np.ndarray, shape_full: tuple[int, int]) -> None:
        self.rows, self.shape_full = rows, shape_full

    def __getitem__(self, v: int) -> np.ndarray:
        return self.rows[v]


def _reduction_of(full: tuple[int, int], shape: tuple[int, ...]) -> int:
    """The DCT scale ``r`` that turned a ``full`` size image into one of ``shape``.

    A 1/r decode has ``ceil(side / r)`` pixels, the last one covering a partial block, so
    full-resolution coordinates map by exactly 1/r (not by the ratio of the sides).
    """
    if tuple(shape[:2]) == tuple(full):
        return 1  # a full decode (also what a 1x1 image is at every scale)
    for r in (8, 4, 2):
        if (-(-full[0] // r), -(-full[1] // r)) == tuple(shape[:2]):
            return r
    return 1


def _scale_to(row: np.ndarray, full: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    """``row`` with its crop box mapped proportionally onto an array of ``shape`` (a stored
    mask may have another resolution than its image)."""
    if tuple(shape[:2]) == tuple(full):
        return row
    sy, sx = shape[0] / full[0], shape[1] / full[1]
    y0, x0 = min(shape[0] - 1, int(row[P_Y0] * sy)), min(shape[1] - 1, int(row[P_X0] * sx))
    out = row.copy()
    out[P_Y0], out[P_X0] = y0, x0
    out[P_H] = max(1, min(shape[0] - y0, round(row[P_H] * sy)))
    out[P_W] = max(1, min(shape[1] - x0, round(row[P_W] * sx)))
    return out


def _crop_resize_reduced(
    img: np.ndarray, row: np.ndarray, r: int, spec: ViewSpec, out: np.ndarray | None = None
) -> np.ndarray:
    """:func:`augment.crop_resize` for a 1/r decode of the image the row was drawn for.

    The crop box, in full-resolution pixels, falls between pixels of the smaller image, so
    rounding it would shift the view by up to r/2 pixels; instead one affine warp samples
    the exact box (the same bilinear or bicubic kernel ``cv2.resize`` uses). An antialiased
    view that still shrinks by more than 1.5x in the reduced image is area-averaged from
    the box rounded to the reduced image's pixels (a shift below half a reduced pixel).
    """
    s = spec.size
    if out is None:
        out = np.empty((s, s, 3), dtype=np.uint8)
    if antialiased(spec, row[P_H] / r, row[P_W] / r):
        box = row.copy()
        y0, x0 = round(row[P_Y0] / r), round(row[P_X0] / r)
        box[P_Y0], box[P_X0] = y0, x0
        box[P_H] = max(1, min(img.shape[0] - y0, round(row[P_H] / r)))
        box[P_W] = max(1, min(img.shape[1] - x0, round(row[P_W] / r)))
        return augment.crop_resize(img, box, spec, out=out)
    sy, sx = row[P_H] / (r * s), row[P_W] / (r * s)  # source pixels per output pixel
    flip = bool(row[P_FLIP])
    # dst (u, v) -> src: x = x0/r + (u + 0.5) sx - 0.5, mirrored in u when flipped.
    ax = -sx if flip else sx
    bx = row[P_X0] / r - 0.5 + (s - 0.5) * sx if flip else row[P_X0] / r + 0.5 * sx - 0.5
    m = np.array([[ax, 0.0, bx], [0.0, sy, row[P_Y0] / r + 0.5 * sy - 0.5]], dtype=np.float64)
    cv2.warpAffine(
        img,
        m,
        (s, s),
        dst=out,
        flags=CV2_INTERP[spec.interpolation] | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return out


class CpuEngine:
    def __init__(
        self,
        source: Source,
        views: list[ViewSpec],
        *,
        seed: int = 0,
        threads: int = 0,
        max_bad_fraction: float = 0.01,
        output: str = "fused",
        reduced_decode: bool = True,
        stage_timing: bool = False,
    ) -> None:
        if output not in ("fused", "uint8"):
            raise ValueError(f"output must be 'fused' or 'uint8', got {output!r}")
        self.source = source
        self.groups = group_by_size(views)
        # One entry per individual view: (group, slot in group, spec). The view number used
        # to key the random generator is the entry's position in this list.
        self.plan = [
            (gi, slot, spec)
            for gi, g in enumerate(self.groups)
            for slot, spec in enumerate(s for s in g.specs for _ in range(s.count))
        ]
        self.seed = seed
        self.threads = threads or os.cpu_count() or 1
        self.max_bad_fraction = max_bad_fraction
        self.output = output
        self.reduced_decode = reduced_decode
        # Precomputed saliency masks, when the source has them and a view masks at all.
        self.source_masks = source_has_masks(source) and any(v.mask_p > 0 for v in views)
        self._mask_groups = {gi for gi, _, spec in self.plan if spec.mask_p > 0}
        self.bad: dict[int, BadSample] = {}
        # per-stage times (selfsup profile); None: not timed, no clock read at all
        self.clock = StageClock() if stage_timing else None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="selfsup-cpu-engine")
        # batches in flight: one being made, `prefetch` queued, one or two held by the caller
        self._buffers = buffers.BufferPool(keep=6 * len(self.groups))
        # Parallelism comes from this pool: each OpenCV call stays on its own thread.
        cv2.setNumThreads(1)
        augment.warmup()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- one batch ---------------------------------------------------------------------

    def load(self, indices: np.ndarray, epoch: int) -> EngineBatch:
        t0 = time.perf_counter() if self.clock is not None else 0.0
        b = len(indices)
        if self.output == "fused":
            views = [self._buffers.empty((g.count, b, 3, g.size, g.size)) for g in self.groups]
            params = None
        else:
            views = [
                torch.empty((g.count, b, g.size, g.size, 3), dtype=torch.uint8) for g in self.groups
            ]
            params = [np.zeros((g.count, b, NPARAM), dtype=np.float32) for g in self.groups]
        masks = None
        if self.output == "uint8" and self.source_masks:
            masks = [
                torch.full((g.count, b, g.size, g.size), 255, dtype=torch.uint8)
                if gi in self._mask_groups
                else None
                for gi, g in enumerate(self.groups)
            ]
        out = [v.numpy() for v in views]
        mask_out = None if masks is None else [m if m is None else m.numpy() for m in masks]
        labels = np.empty(b, dtype=np.int64)
        used = np.empty(b, dtype=np.int64)
        t1 = time.perf_counter() if self.clock is not None else 0.0
        worked = self.clock.worker_seconds if self.clock is not None else 0.0
        jobs = [
            self._pool.submit(self._work, c, indices, epoch, out, params, labels, used, mask_out)
            for c in _chunks(b, self.threads)
        ]
        for job in jobs:
            job.result()
        t2 = time.perf_counter() if self.clock is not None else 0.0
        self._check_bad_fraction()
        labels_t, used_t = torch.from_numpy(labels), torch.from_numpy(used)
        batch = EngineBatch(views, params, labels_t, used_t, masks)
        if self.clock is not None:  # the batch's own work, before, between and after samples
            handoff = max(0.0, (t2 - t1) - (self.clock.worker_seconds - worked) / self.threads)
            self.clock.add_collate(t1 - t0, t0)
            self.clock.add_collate(handoff + time.perf_counter() - t2, t2)
        return batch

    def _work(self, positions, indices, epoch, out, params, labels, used, masks) -> None:
        # With stage timing: seconds per stage in plain floats (cheapest to add to), and the
        # clock read once between stages; nothing at all without it.
        timing = self.clock is not None
        t_read = t_decode = t_crop = t_aug = 0.0
        began = last = time.perf_counter() if timing else 0.0
        marks: list[float] | None = [] if timing else None
        # a trace's intervals: (stage, start, end), only while the clock records them
        spans: list[tuple[int, float, float]] | None = (
            [] if timing and self.clock.events is not None else None
        )
        for pos in positions:
            index = int(indices[pos])
            img, rows, labels[pos], used[pos] = self._decode(index, epoch, marks)
            if timing:  # marks: after the read, after the decode (the last attempt's)
                t_read += marks[-2] - last
                t_decode += marks[-1] - marks[-2]
                if spans is not None:
                    spans += [(0, last, marks[-2]), (1, marks[-2], marks[-1])]
                last = marks[-1]
                marks.clear()
            r = _reduction_of(rows.shape_full, img.shape)
            whole_mask = self.source.read_mask(int(used[pos])) if self.source_masks else None
            if timing:  # reading the stored mask counts as reading
                now = time.perf_counter()
                t_read += now - last
                last = now
            for v, (gi, slot, spec) in enumerate(self.plan):
                row = rows[v]
                dst = None if params is None else out[gi][slot, pos]
                if r > 1:
                    crop = _crop_resize_reduced(img, row, r, spec, out=dst)
                else:
                    crop = augment.crop_resize(img, row, spec, out=dst)
                mask = None
                if row[P_MASK] and whole_mask is not None:
                    box = _scale_to(row, rows.shape_full, whole_mask.shape)
                    mask = augment.crop_resize_mask(whole_mask, box, spec)
                if timing:
                    now = time.perf_counter()
                    t_crop += now - last
                    if spans is not None:
                        spans.append((2, last, now))
                    last = now
                if params is None:
                    augment.augment_cpu(crop, row, spec, out[gi][slot, pos], mask=mask)
                else:
                    params[gi][slot, pos] = row
                    if masks is not None and row[P_MASK]:
                        # a sample without a stored mask gets the estimate the device would make
                        masks[gi][slot, pos] = saliency_mask(crop) if mask is None else mask
                if timing:
                    now = time.perf_counter()
                    t_aug += now - last
                    if spans is not None:
                        spans.append((3, last, now))
                    last = now
        if timing:
            spent = np.array([t_read, t_decode, t_crop, t_aug, 0.0])
            tid = threading.get_native_id()
            events = None if spans is None else [(k, tid, a, b) for k, a, b in spans]
            self.clock.add(spent, len(positions), time.perf_counter() - began, events)

    def _rows(self, index: int, epoch: int, h: int, w: int) -> _Rows:
        """Every view's parameter row for sample ``index`` of an ``h`` x ``w`` image."""
        rows = [
            draw_params(spec, sample_rng(self.seed, epoch, index, v), h, w)
            for v, (_, _, spec) in enumerate(self.plan)
        ]
        return _Rows(np.stack(rows), (h, w))

    def _max_reduction(self, rows: _Rows) -> int:
        """The largest DCT downscale that leaves every crop box at least its view's size.

        Decoding at 1/r costs less than decoding in full (fewer pixels to transform, colour-
        convert and later resize), and a crop cut from the reduced image still has at least
        as many pixels as the view, so the resize only shrinks it.
        """
        if not self.reduced_decode:
            return 1
        fit = min(
            min(row[P_H], row[P_W]) / spec.size
            for row, (_, _, spec) in zip(rows.rows, self.plan, strict=True)
        )
        return int(max(1, min(8, fit)))

    # -- bad samples -------------------------------------------------------------------

    def _decode(
        self, index: int, epoch: int, marks: list[float] | None = None
    ) -> tuple[np.ndarray, _Rows, int, int]:
        """Decode sample ``index`` (or a deterministic stand-in if it is bad) and draw its rows.

        Returns (image, parameter rows, label, index used). When the header gives the size,
        the rows are drawn first and the image is decoded only as large as they need; the
        rows keep full-resolution boxes either way (``_reduction_of`` tells the scale).
        ``marks`` (stage timing): the clock is appended to it after each read and decode.
        """
        i, rng = index, None
        for _ in range(MAX_REPLACEMENT_TRIES):
            try:
                data, label = self.source.read(i)
                if marks is not None:
                    marks.append(time.perf_counter())
                size = image_size(data) if self.reduced_decode else None
                if size is None:
                    img = decode_image(data)
                    rows = self._rows(index, epoch, *img.shape[:2])
                else:
                    rows = self._rows(index, epoch, *size)
                    img = decode_image(data, max_reduction=self._max_reduction(rows))
                if marks is not None:
                    marks.append(time.perf_counter())
                return img, rows, label, i
            except DecodeError as e:
                self._report(i, str(e))
            except OSError as e:
                self._report(i, f"unreadable ({e.strerror or e})")
            rng = rng or replacement_rng(self.seed, epoch, index)
            i = int(rng.integers(len(self.source)))
        self._check_bad_fraction()
        raise DataError(
            f"no decodable sample found in {MAX_REPLACEMENT_TRIES} tries starting from "
            f"{self.source.describe(index)}; is the dataset readable?"
        )

    def _report(self, index: int, reason: str) -> None:
        with self._lock:
            if index not in self.bad:
                self.bad[index] = BadSample(index, self.source.describe(index), reason)

    def _check_bad_fraction(self) -> None:
        n_bad, n = len(self.bad), len(self.source)
        if n_bad > self.max_bad_fraction * n:
            examples = "; ".join(str(s) for s in list(self.bad.values())[:3])
            raise DataError(
                f"{n_bad} of {n} samples ({100 * n_bad / n:.2f}%) could not be decoded, above "
                f"data.max_bad_fraction={self.max_bad_fraction}; repair or remove them, or "
                f"raise the limit. First: {examples}"
            )


class HostAugment:
    """The colour chain on the host for uint8 engine batches (the dali engine without a GPU).

    Turns an :class:`EngineBatch` of uint8 ``[V, B, S, S, 3]`` views and parameter rows into
    fused-style float32 ``[V, B, 3, S, S]`` views, one sample per task on a thread pool.
    """

    def __init__(self, views: list[ViewSpec], threads: int = 0) -> None:
        self.groups = group_by_size(views)
        self.specs = [[s for s in g.specs for _ in range(s.count)] for g in self.groups]
        self.threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="selfsup-host-augment")
        self._buffers = buffers.BufferPool(keep=6 * len(self.groups))
        cv2.setNumThreads(1)
        augment.warmup()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __call__(self, raw: EngineBatch) -> EngineBatch:
        u8 = [v.cpu().numpy() for v in raw.views]
        out = [
            self._buffers.empty((g.count, v.shape[1], 3, g.size, g.size))
            for g, v in zip(self.groups, u8, strict=True)
        ]
        dst = [o.numpy() for o in out]

        def work(positions: np.ndarray) -> None:
            for pos in positions:
                for gi, specs in enumerate(self.specs):
                    for slot, spec in enumerate(specs):
                        row = raw.params[gi][slot, pos]
                        crop = np.ascontiguousarray(u8[gi][slot, pos])
                        augment.augment_cpu(crop, row, spec, dst[gi][slot, pos])

        for job in [self._pool.submit(work, c) for c in _chunks(len(raw.labels), self.threads)]:
            job.result()
        return EngineBatch(out, None, raw.labels.cpu(), raw.indices.cpu())
