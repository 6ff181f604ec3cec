"""Per-sample parameter rows: every random choice of a view, drawn once on the host.

:func:`draw_params` turns a ViewSpec, a sample's counter-based generator (``rng.py``) and the
decoded image size into one row laid out as ``selfsup.kernels.layout`` says. The CPU engine
applies a row per sample in its threads; the device path stacks the rows into ``[B, NPARAM]``.
"""

from __future__ import annotations

import math

import numpy as np

from selfsup.kernels.layout import (
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
)
from selfsup.pipeline.views import ViewSpec

# One view's random numbers come from a single bulk draw of _NDRAW uniforms in [0, 1), laid
# out in fixed slots whatever the spec says, so changing one probability reshuffles nothing
# else, and one call replaces a dozen scalar draws (the per-view cost is Python overhead).
_U_BOX = 0  # 10 tries x (area, log-ratio, y, x)
_U_COIN = 40  # flip, jitter, gray, blur, solarize, mask
_U_FACTOR = 46  # brightness, contrast, saturation, hue
_U_ORDER = 50  # 4 keys: the jitter order is their argsort (a uniform permutation)
_U_SIGMA = 54
_U_FILL = 55  # 3: the random fill colour
_NDRAW = 58


def _random_resized_box(
    spec: ViewSpec, u: list[float], h: int, w: int
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box: 10 tries in area and log-ratio, then a fallback."""
    area = h * w
    lo, hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    s0, s1 = spec.scale
    for t in range(_U_BOX, _U_BOX + 40, 4):
        target = area * (s0 + (s1 - s0) * u[t])
        aspect = math.exp(lo + (hi - lo) * u[t + 1])
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y0 = min(h - ch, int(u[t + 2] * (h - ch + 1)))
            x0 = min(w - cw, int(u[t + 3] * (w - cw + 1)))
            return y0, x0, ch, cw
    # Fallback: the whole image, clamped to the allowed aspect ratios, centred.
    in_ratio = w / h
    if in_ratio < spec.ratio[0]:
        cw, ch = w, int(round(w / spec.ratio[0]))
    elif in_ratio > spec.ratio[1]:
        ch, cw = h, int(round(h * spec.ratio[1]))
    else:
        cw, ch = w, h
    ch, cw = max(1, min(ch, h)), max(1, min(cw, w))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _center_box(spec: ViewSpec, h: int, w: int) -> tuple[int, int, int, int]:
    side = max(1, int(round(spec.center_fraction * min(h, w))))
    return (h - side) // 2, (w - side) // 2, side, side


def draw_params(spec: ViewSpec, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Draw one view's parameter row for a decoded image of ``h`` x ``w`` pixels.

    All random numbers come from one bulk draw with a fixed slot per choice, whatever the
    probabilities, so changing one probability does not reshuffle the other choices of the
    same sample.
    """
    p = np.zeros(NPARAM, dtype=np.float32)
    if spec.crop == "center":
        p[P_Y0], p[P_X0], p[P_H], p[P_W] = _center_box(spec, h, w)
        p[P_ORDER : P_ORDER + 4] = (0, 1, 2, 3)
        return p
    draws = rng.random(_NDRAW)
    u = draws.tolist()
    p[P_Y0], p[P_X0], p[P_H], p[P_W] = _random_resized_box(spec, u, h, w)
    coin = [u[_U_COIN + k] for k in range(6)]  # flip, jitter, gray, blur, solarize, mask
    p[P_FLIP] = coin[0] < spec.flip_p
    p[P_JITTER] = coin[1] < spec.jitter_p
    for k, (col, f) in enumerate(
        (
            (P_BRIGHTNESS, spec.brightness),
            (P_CONTRAST, spec.contrast),
            (P_SATURATION, spec.saturation),
        )
    ):
        lo = max(0.0, 1 - f)
        p[col] = lo + (1 + f - lo) * u[_U_FACTOR + k]
    p[P_HUE] = spec.hue * (2 * u[_U_FACTOR + 3] - 1)
    p[P_ORDER : P_ORDER + 4] = np.argsort(draws[_U_ORDER : _U_ORDER + 4], kind="stable")
    p[P_GRAY] = coin[2] < spec.grayscale_p
    s0, s1 = spec.blur_sigma
    p[P_BLUR_SIGMA] = s0 + (s1 - s0) * u[_U_SIGMA] if coin[3] < spec.blur_p else 0.0
    p[P_SOLARIZE] = coin[4] < spec.solarize_p
    p[P_MASK] = coin[5] < spec.mask_p
    if spec.mask_fill == "mean":
        p[P_FILL : P_FILL + 3] = spec.mean
    elif spec.mask_fill == "random":
        p[P_FILL : P_FILL + 3] = draws[_U_FILL : _U_FILL + 3]
    return p
