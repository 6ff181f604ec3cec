"""Per-sample augmentation: crop+resize, colour jitter, grayscale, blur, solarize, normalise.

Three implementations of one chain, all driven by a parameter row from ``params.draw_params``:

- :func:`augment_cpu`: the CPU engine's path, one sample at a time inside its worker threads.
  The colour chain is one numba kernel fused over planar chunks (uint8 HWC in, float32 CHW
  working buffer out), the blur is OpenCV's separable filter on each plane, and a second
  numba kernel solarizes and normalises into the output. Both numba kernels and OpenCV
  release the GIL, so the engine's threads scale over cores.
- ``augment_device.augment_batch``: the device path, batched over ``[B, 3, S, S]`` uint8
  with per-sample flags, factors and jitter order, without a host sync (the fused Triton
  colour kernel on CUDA, its torch reference elsewhere: ``selfsup/kernels/color*.py``).
- ``augment_reference.augment_reference``: plain float64 numpy, op by op,
  for the tests to compare against.

Semantics follow torchvision on float images in [0, 1]: the four jitter ops run in the
sample's random order with a clamp to [0, 1] after each; contrast blends towards the mean
gray of the image at that point of the chain; hue goes through torchvision's HSV formulas;
the blur pads by reflection without repeating the edge (OpenCV's REFLECT_101, torch's
"reflect"); solarize inverts values >= 0.5 (PIL's threshold 128 on uint8-derived values).
Saliency masking (``P_MASK``, ReLICv2) comes first: the background, where the view's
foreground mask is low, is blended towards the row's fill colour (``P_FILL``) as
``fill + a * (x - fill)`` with ``a = mask / 255``, and the chain then jitters it with the
rest, as ReLICv2 masks the image before cropping and augmenting it. The mask is the
source's precomputed one cut with the view's box, or estimated from the crop by
``saliency.py`` (spectral residual) when none is given.
"""

from __future__ import annotations

import threading

import cv2
import numba
import numpy as np

from selfsup.kernels.blur import gaussian_taps_host
from selfsup.kernels.layout import (
    BRIGHTNESS,
    CONTRAST,
    GRAY_WEIGHTS,
    NPARAM,
    P_BLUR_SIGMA,
    P_BRIGHTNESS,
    P_CONTRAST,
    P_FILL,
    P_FLIP,
    P_GRAY,
    P_H,
    P_HUE,
    P_JITTER,
    P_MASK,
    P_ORDER,
    P_SATURATION,
    P_SOLARIZE,
    P_W,
    P_X0,
    P_Y0,
    SATURATION,
)
from selfsup.pipeline.saliency import saliency_mask
from selfsup.pipeline.views import ViewSpec, antialiased, blur_radius

__all__ = ["augment_cpu", "crop_resize", "crop_resize_mask", "warmup"]

CV2_INTERP = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
WR, WG, WB = GRAY_WEIGHTS


# ---------------------------------------------------------------------------------------
# Crop + resize + flip (shared by every CPU path)
# ---------------------------------------------------------------------------------------


def crop_resize(
    img: np.ndarray, row: np.ndarray, spec: ViewSpec, out: np.ndarray | None = None
) -> np.ndarray:
    """Cut the row's crop box from ``img`` (HxWx3 uint8), resize it to the view size, flip.

    Returns ``out`` (a C-contiguous (size, size, 3) uint8 array, allocated if None). OpenCV
    reads the box as a view of ``img``, so the decoded image is never copied, and writes the
    result straight into ``out``. With ``spec.antialias`` a box that shrinks by more than 1.5x
    is area-averaged (``views.antialiased``).
    """
    y0, x0, h, w = (int(row[i]) for i in (P_Y0, P_X0, P_H, P_W))
    s = spec.size
    if out is None:
        out = np.empty((s, s, 3), dtype=np.uint8)
    box = img[y0 : y0 + h, x0 : x0 + w]
    interp = cv2.INTER_AREA if antialiased(spec, h, w) else CV2_INTERP[spec.interpolation]
    cv2.resize(box, (s, s), dst=out, interpolation=interp)
    if row[P_FLIP]:
        cv2.flip(out, 1, dst=out)  # in place
    return out


def crop_resize_mask(
    mask: np.ndarray, row: np.ndarray, spec: ViewSpec, out: np.ndarray | None = None
) -> np.ndarray:
    """Cut a whole-image uint8 mask (HxW, 255 = foreground) with the view's box and flip,
    as :func:`crop_resize` cuts the image; bilinear whatever the view's interpolation (a
    mask has no detail to keep and bicubic would ring at its edges). Returns (size, size)
    uint8."""
    y0, x0, h, w = (int(row[i]) for i in (P_Y0, P_X0, P_H, P_W))
    s = spec.size
    if out is None:
        out = np.empty((s, s), dtype=np.uint8)
    cv2.resize(mask[y0 : y0 + h, x0 : x0 + w], (s, s), dst=out, interpolation=cv2.INTER_LINEAR)
    if row[P_FLIP]:
        cv2.flip(out, 1, dst=out)
    return out


# ---------------------------------------------------------------------------------------
# CPU fast path: numba kernels over planar float32 chunks, OpenCV blur
# ---------------------------------------------------------------------------------------
# The kernels walk the image as flat planar chunks of _CHUNK pixels and apply one op at a
# time to a whole chunk: the op dispatch happens once per chunk, and every inner loop is a
# long plain float32 loop that LLVM vectorises (no fastmath needed; the numpy error model
# drops the division-by-zero checks that would block it). Indexing goes through slices so
# that LLVM sees non-negative indices and emits plain vector loads, not gathers.

_JIT = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}
_CHUNK = 1024  # pixels: three float32 chunks stay in L1
_F = np.float32
_WR, _WG, _WB = _F(WR), _F(WG), _F(WB)
_0, _1, _2, _4, _6 = _F(0), _F(1), _F(2), _F(4), _F(6)
_HALF = _F(0.5)
_U8_TO_F32 = (np.arange(256) / 255.0).astype(np.float32)  # v / 255, correctly rounded


@numba.njit(**_JIT)
def _clamp(v: np.float32) -> np.float32:
    return min(max(v, _0), _1)


@numba.njit(**_JIT)
def _hue_chunk(r: np.ndarray, g: np.ndarray, b: np.ndarray, n: int, f: np.float32) -> None:
    """torchvision's _rgb2hsv, h = (h + f) mod 1, _hsv2rgb; branch-free per pixel."""
    for i in range(n):
        x, y, z = r[i], g[i], b[i]
        v = max(x, max(y, z))
        cr = v - min(x, min(y, z))
        flat = cr == _0  # gray pixel: s = 0, and every hue maps back to (v, v, v)
        s = cr / (_1 if flat else v)
        inv = _1 / (_1 if flat else cr)
        rc, gc, bc = (v - x) * inv, (v - y) * inv, (v - z) * inv
        h = (bc - gc) if v == x else ((_2 + rc - bc) if v == y else (_4 + gc - rc))
        h = h / _6 + _1  # in [5/6, 11/6), so fmod(h, 1) is one subtraction
        h = h - _1 if h >= _1 else h
        h = h + f
        h = h - np.floor(h)
        h6 = h * _6
        sector = np.floor(h6)
        fr = h6 - sector
        sector = _0 if sector >= _6 else sector
        p = _clamp(v * (_1 - s))
        q = _clamp(v * (_1 - s * fr))
        t = _clamp(v * (_1 - s * (_1 - fr)))
        # sectors 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
        r[i] = (
            v if (sector == 0 or sector == 5) else (q if sector == 1 else (t if sector == 4 else p))
        )
        g[i] = t if sector == 0 else (v if sector <= 2 else (q if sector == 3 else p))
        b[i] = p if sector <= 1 else (t if sector == 2 else (v if sector <= 4 else q))


@numba.njit(**_JIT)
def _jitter_chunk(
    r: np.ndarray, g: np.ndarray, b: np.ndarray, n: int, row: np.ndarray, lo: int, hi: int, m
) -> None:
    """Apply the jitter ops at order positions lo..hi-1, clamping after each (m: mean gray)."""
    for k in range(lo, hi):
        op = int(row[P_ORDER + k])
        if op == BRIGHTNESS:
            f = row[P_BRIGHTNESS]
            for i in range(n):
                r[i], g[i], b[i] = _clamp(r[i] * f), _clamp(g[i] * f), _clamp(b[i] * f)
        elif op == CONTRAST:
            f = row[P_CONTRAST]
            for i in range(n):
                r[i] = _clamp(m + f * (r[i] - m))
                g[i] = _clamp(m + f * (g[i] - m))
                b[i] = _clamp(m + f * (b[i] - m))
        elif op == SATURATION:
            f = row[P_SATURATION]
            for i in range(n):
                y = _WR * r[i] + _WG * g[i] + _WB * b[i]
                r[i] = _clamp(y + f * (r[i] - y))
                g[i] = _clamp(y + f * (g[i] - y))
                b[i] = _clamp(y + f * (b[i] - y))
        else:
            _hue_chunk(r, g, b, n, row[P_HUE])


@numba.njit(**_JIT)
def _load_u8(src: np.ndarray, r: np.ndarray, g: np.ndarray, b: np.ndarray, n: int) -> None:
    for i in range(n):
        r[i] = _U8_TO_F32[src[3 * i]]
        g[i] = _U8_TO_F32[src[3 * i + 1]]
        b[i] = _U8_TO_F32[src[3 * i + 2]]


@numba.njit(**_JIT)
def _load_masked(src: np.ndarray, mask: np.ndarray, fill: np.ndarray, r, g, b, n: int) -> None:
    """Load uint8 pixels and blend them towards ``fill`` where ``mask`` (uint8) is low."""
    fr, fg, fb = fill[0], fill[1], fill[2]
    for i in range(n):
        a = _U8_TO_F32[mask[i]]
        r[i] = fr + a * (_U8_TO_F32[src[3 * i]] - fr)
        g[i] = fg + a * (_U8_TO_F32[src[3 * i + 1]] - fg)
        b[i] = fb + a * (_U8_TO_F32[src[3 * i + 2]] - fb)


@numba.njit(**_JIT)
def _copy(src: np.ndarray, i: int, dst: np.ndarray, j: int, n: int) -> None:
    """dst[:, j : j + n] = src[:, i : i + n] for planar (3, *) arrays."""
    for c in range(3):
        a, b = src[c, i : i + n], dst[c, j : j + n]
        for x in range(n):
            b[x] = a[x]


@numba.njit(**_JIT)
def _colour_kernel(src: np.ndarray, row: np.ndarray, dst: np.ndarray, mask: np.ndarray) -> None:
    """uint8 HWC ``src`` -> background fill -> jitter in the row's order -> grayscale ->
    float32 CHW ``dst``.

    ``mask`` is the flat uint8 foreground mask (255 = keep) or empty for no masking; the
    fill colour is the row's ``P_FILL`` columns.

    Contrast needs the mean gray of the image as it is when contrast runs, so unless it runs
    first the chain is cut there: pass 1 runs the ops before contrast and sums the gray,
    pass 2 the rest.
    """
    n = src.shape[0] * src.shape[1]
    flat = src.reshape(3 * n)
    planes = dst.reshape(3, n)
    px = np.empty((3, _CHUNK), _F)  # one planar chunk
    r, g, b = px[0], px[1], px[2]
    jitter = row[P_JITTER] != 0
    cut = 0  # order position of contrast
    if jitter:
        for k in range(4):
            if int(row[P_ORDER + k]) == CONTRAST:
                cut = k
    masked = mask.size > 0
    fill = row[P_FILL : P_FILL + 3].copy()
    mean = 0.0
    if jitter and cut == 0 and masked:  # contrast sees the filled input
        f0, f1, f2 = float(fill[0]), float(fill[1]), float(fill[2])
        acc = 0.0
        for i in range(n):
            a = mask[i] / 255.0
            acc += WR * (f0 + a * (flat[3 * i] / 255.0 - f0))
            acc += WG * (f1 + a * (flat[3 * i + 1] / 255.0 - f1))
            acc += WB * (f2 + a * (flat[3 * i + 2] / 255.0 - f2))
        mean = acc / n
    elif jitter and cut == 0:  # contrast sees the input: exact integer channel sums
        sums = np.zeros(3, np.int64)
        for c in range(3):
            for i in range(n):
                sums[c] += flat[3 * i + c]
        mean = (WR * sums[0] + WG * sums[1] + WB * sums[2]) / (255.0 * n)
    lanes = np.zeros(_CHUNK, np.float64)  # per-position running sums of the gray
    passes = 2 if cut > 0 else 1
    for ps in range(passes):
        last = ps == passes - 1
        lo, hi = (cut, 4) if last else (0, cut)
        for a in range(0, n, _CHUNK):
            m = min(_CHUNK, n - a)
            if ps == 0 and masked:
                _load_masked(flat[3 * a : 3 * (a + m)], mask[a : a + m], fill, r, g, b, m)
            elif ps == 0:
                _load_u8(flat[3 * a : 3 * (a + m)], r, g, b, m)
            else:
                _copy(planes, a, px, 0, m)
            if jitter:
                _jitter_chunk(r, g, b, m, row, lo, hi, _F(mean))
            if not last:
                for i in range(m):
                    lanes[i] += _WR * r[i] + _WG * g[i] + _WB * b[i]
            elif row[P_GRAY] != 0:
                for i in range(m):
                    r[i] = g[i] = b[i] = _WR * r[i] + _WG * g[i] + _WB * b[i]
            _copy(px, 0, planes, a, m)
        if not last:
            mean = lanes.sum() / n


@numba.njit(**_JIT)
def _finish_kernel(
    src: np.ndarray, solarize: bool, mean: np.ndarray, inv_std: np.ndarray, out: np.ndarray
) -> None:
    """Solarize and normalise CHW float32 ``src`` into ``out`` (which may be ``src``)."""
    n = src.shape[1] * src.shape[2]
    planes, dst = src.reshape(3, n), out.reshape(3, n)
    for c in range(3):
        a, o, m, s = planes[c], dst[c], mean[c], inv_std[c]
        for i in range(n):
            v = a[i]
            if solarize and v >= _HALF:
                v = _1 - v
            o[i] = (v - m) * s


@numba.njit(**_JIT)
def _lut_kernel(src: np.ndarray, lut: np.ndarray, out: np.ndarray) -> None:
    """``out[c, i] = lut[c, src[i, c]]``: uint8 HWC through a per-channel table into CHW,
    in one pass over the pixels (three output streams)."""
    n = src.shape[0] * src.shape[1]
    flat, dst = src.reshape(3 * n), out.reshape(3, n)
    o0, o1, o2 = dst[0], dst[1], dst[2]
    t0, t1, t2 = lut[0], lut[1], lut[2]
    for i in range(n):
        o0[i] = t0[flat[3 * i]]
        o1[i] = t1[flat[3 * i + 1]]
        o2[i] = t2[flat[3 * i + 2]]


_LUTS: dict[tuple, np.ndarray] = {}


def _normalise_lut(spec: ViewSpec, solarize: bool) -> np.ndarray:
    """(3, 256) float32: each uint8 value solarized (optionally) and normalised, computed
    with the same float32 operations as ``_finish_kernel``, so the results are identical."""
    key = (spec.mean, spec.std, solarize)
    lut = _LUTS.get(key)
    if lut is None:
        v = _U8_TO_F32.copy()
        if solarize:
            v = np.where(v >= _HALF, _1 - v, v).astype(_F)
        mean = np.asarray(spec.mean, dtype=_F)[:, None]
        inv_std = (1.0 / np.asarray(spec.std)).astype(_F)[:, None]
        lut = _LUTS[key] = np.ascontiguousarray((v[None, :] - mean) * inv_std, dtype=_F)
    return lut


_scratch = threading.local()


def _scratch_buffer(size: int) -> np.ndarray:
    """A float32 (3, size, size) work buffer, allocated once per thread and size."""
    bufs = _scratch.__dict__.setdefault("bufs", {})
    if size not in bufs:
        bufs[size] = np.empty((3, size, size), _F)
    return bufs[size]


_NO_MASK = np.empty(0, np.uint8)


def augment_cpu(
    crop: np.ndarray,
    row: np.ndarray,
    spec: ViewSpec,
    out: np.ndarray,
    mask: np.ndarray | None = None,
) -> None:
    """Augment one view on the CPU, writing CHW float32 normalised pixels into ``out``.

    ``crop`` is the C-contiguous (size, size, 3) uint8 result of :func:`crop_resize`; ``out``
    a C-contiguous float32 (3, size, size) array, typically a slice of the batch buffer, which
    doubles as the working buffer. Every kernel releases the GIL, so threads run in parallel.

    ``mask`` is the view's (size, size) uint8 foreground mask (255 = foreground), used only
    when the row's ``P_MASK`` flag is on: the source's precomputed mask cut with
    :func:`crop_resize_mask`, or None to estimate it from the crop
    (``saliency.saliency_mask``, spectral residual).
    """
    s = spec.size
    if crop.shape != (s, s, 3) or out.shape != (3, s, s) or not out.flags.c_contiguous:
        raise ValueError(
            f"augment_cpu: want a ({s}, {s}, 3) crop and a C-contiguous (3, {s}, {s}) out, "
            f"got {crop.shape} and {out.shape}"
        )
    row = np.ascontiguousarray(row, dtype=_F)
    if not (row[P_JITTER] or row[P_GRAY] or row[P_BLUR_SIGMA] > 0 or row[P_MASK]):
        # Only (solarize and) normalise: one pass through a 256-entry table per channel.
        _lut_kernel(np.ascontiguousarray(crop), _normalise_lut(spec, bool(row[P_SOLARIZE])), out)
        return
    flat_mask = _NO_MASK
    if row[P_MASK]:
        if mask is None:
            mask = saliency_mask(crop)
        elif mask.shape != (s, s):
            raise ValueError(f"augment_cpu: want a ({s}, {s}) uint8 mask, got {mask.shape}")
        flat_mask = np.ascontiguousarray(mask, dtype=np.uint8).reshape(-1)
    _colour_kernel(np.ascontiguousarray(crop), row, out, flat_mask)
    src = out
    sigma = float(row[P_BLUR_SIGMA])
    if sigma > 0:
        k = gaussian_taps_host(sigma, blur_radius(spec, sigma)).astype(_F)
        src = _scratch_buffer(s)
        for c in range(3):  # one plane at a time: the working buffer is planar
            cv2.sepFilter2D(out[c], -1, k, k, dst=src[c], borderType=cv2.BORDER_REFLECT_101)
    mean = np.asarray(spec.mean, dtype=_F)
    inv_std = (1.0 / np.asarray(spec.std)).astype(_F)
    _finish_kernel(src, bool(row[P_SOLARIZE]), mean, inv_std, out)


def warmup() -> None:
    """Compile (or load from numba's on-disk cache) every kernel the CPU path uses."""
    spec = ViewSpec(size=8, jitter_p=1.0, grayscale_p=1.0, blur_p=1.0, solarize_p=1.0)
    crop = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    row = np.zeros(NPARAM, dtype=_F)
    row[P_ORDER : P_ORDER + 4] = (3, 2, 1, 0)
    row[[P_JITTER, P_GRAY, P_SOLARIZE, P_BRIGHTNESS, P_CONTRAST, P_SATURATION]] = 1.0
    row[P_HUE], row[P_BLUR_SIGMA] = 0.1, 1.0
    augment_cpu(crop, row, spec, np.empty((3, 8, 8), dtype=_F))
    row[P_MASK] = 1.0
    augment_cpu(crop, row, spec, np.empty((3, 8, 8), dtype=_F), np.full((8, 8), 200, np.uint8))
    plain = np.zeros(NPARAM, dtype=_F)  # no colour op: the table path
    augment_cpu(crop, plain, spec, np.empty((3, 8, 8), dtype=_F))
