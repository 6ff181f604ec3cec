"""The readable reference of the per-sample augmentation chain: float64 numpy, op by op.

Written for obviousness, not speed: the tests compare ``augment.augment_cpu`` and
``augment_device.augment_batch`` against :func:`augment_reference` on fresh random inputs.
Semantics are described in ``augment.py``.
"""

from __future__ import annotations

import numpy as np

from selfsup.kernels.blur import gaussian_taps
from selfsup.kernels.layout import (
    BRIGHTNESS,
    CONTRAST,
    GRAY_WEIGHTS,
    HUE,
    P_BLUR_SIGMA,
    P_BRIGHTNESS,
    P_CONTRAST,
    P_FILL,
    P_GRAY,
    P_HUE,
    P_JITTER,
    P_MASK,
    P_ORDER,
    P_SATURATION,
    P_SOLARIZE,
    SATURATION,
)
from selfsup.pipeline.views import ViewSpec, blur_radius

WR, WG, WB = GRAY_WEIGHTS


def _gray(x: np.ndarray) -> np.ndarray:
    return WR * x[..., 0] + WG * x[..., 1] + WB * x[..., 2]


def _rgb2hsv(x: np.ndarray) -> np.ndarray:
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = x.max(axis=-1), x.min(axis=-1)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / np.where(eqc, 1.0, maxc)
    crd = np.where(eqc, 1.0, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = np.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return np.stack([h, s, maxc], axis=-1)


def _hsv2rgb(x: np.ndarray) -> np.ndarray:
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(np.int64) % 6
    p = np.clip(v * (1.0 - s), 0.0, 1.0)
    q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    sectors = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros(h.shape + (3,))
    for n, sector in enumerate(sectors):
        rgb[i == n] = np.stack(sector, axis=-1)[i == n]
    return rgb


def adjust_brightness(x: np.ndarray, f: float) -> np.ndarray:
    return np.clip(x * f, 0.0, 1.0)


def adjust_contrast(x: np.ndarray, f: float) -> np.ndarray:
    m = _gray(x).mean()
    return np.clip(m + f * (x - m), 0.0, 1.0)


def adjust_saturation(x: np.ndarray, f: float) -> np.ndarray:
    g = _gray(x)[..., None]
    return np.clip(g + f * (x - g), 0.0, 1.0)


def adjust_hue(x: np.ndarray, f: float) -> np.ndarray:
    hsv = _rgb2hsv(x)
    hsv[..., 0] = (hsv[..., 0] + f) % 1.0
    return np.clip(_hsv2rgb(hsv), 0.0, 1.0)


def _blur_axis(x: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    r = len(k) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="reflect")  # numpy "reflect" does not repeat the edge
    n = x.shape[axis]
    return sum(k[j] * np.take(xp, range(j, j + n), axis=axis) for j in range(len(k)))


def augment_reference(
    crop: np.ndarray, row: np.ndarray, spec: ViewSpec, mask: np.ndarray | None = None
) -> np.ndarray:
    """The chain written plainly in float64 numpy; returns CHW float32 normalised pixels.

    ``mask``: the view's uint8 foreground mask (255 = foreground) for saliency masking;
    None estimates it from the crop with ``saliency.saliency_mask``.
    """
    x = crop.astype(np.float64) / 255.0
    if row[P_MASK]:
        if mask is None:
            from selfsup.pipeline.saliency import saliency_mask  # keeps this module light

            mask = saliency_mask(crop)
        a = mask.astype(np.float64)[..., None] / 255.0
        fill = np.asarray(row[P_FILL : P_FILL + 3], dtype=np.float64)
        x = a * x + (1.0 - a) * fill
    if row[P_JITTER]:
        ops = {
            BRIGHTNESS: (adjust_brightness, P_BRIGHTNESS),
            CONTRAST: (adjust_contrast, P_CONTRAST),
            SATURATION: (adjust_saturation, P_SATURATION),
            HUE: (adjust_hue, P_HUE),
        }
        for k in range(4):
            fn, col = ops[int(row[P_ORDER + k])]
            x = fn(x, float(row[col]))
    if row[P_GRAY]:
        x = np.repeat(_gray(x)[..., None], 3, axis=-1)
    sigma = float(row[P_BLUR_SIGMA])
    if sigma > 0:
        k = gaussian_taps(sigma, blur_radius(spec, sigma)).numpy()
        x = _blur_axis(_blur_axis(x, k, axis=1), k, axis=0)
    if row[P_SOLARIZE]:
        x = np.where(x >= 0.5, 1.0 - x, x)
    x = (x - np.asarray(spec.mean)) / np.asarray(spec.std)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
