"""Gaussian blur: the one definition of selfsup's Gaussian taps, and the batched device blur.

:func:`gaussian_taps` builds every Gaussian selfsup uses (the CPU engine's per-sample blur, the
float64 reference, the saliency estimate's smoothing, the batched device blur); one sigma's taps
come from :func:`gaussian_taps_host` (numpy), many sigmas' from the batched torch form, and the
two agree to float64 rounding (tested).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_taps(
    sigma: torch.Tensor | float, radius: torch.Tensor | int, width: int | None = None
) -> torch.Tensor:
    """Normalised 1-D Gaussians, float64: ``[B, 2 * width + 1]`` for ``B`` sigmas.

    Sample ``b`` has ``exp(-x^2 / (2 sigma_b^2))`` for ``|x| <= radius_b``, normalised to sum 1,
    and zeros beyond its radius up to ``width`` (default: the largest radius), so one array holds
    kernels of different sizes. A sigma of 0 gives the identity (a delta). A scalar sigma gives
    a 1-D ``[2 * radius + 1]`` kernel.
    """
    if not isinstance(sigma, torch.Tensor):
        return torch.from_numpy(gaussian_taps_host(float(sigma), int(radius), width))
    s = sigma.to(torch.float64).reshape(-1, 1)
    r = torch.as_tensor(radius, dtype=torch.float64, device=s.device).reshape(-1, 1)
    if width is None:
        width = int(r.max().item())  # host values here: the device path passes width
    x = torch.arange(-width, width + 1, device=s.device, dtype=torch.float64).view(1, -1)
    on = s > 0
    safe = torch.where(on, s, torch.ones_like(s))
    k = torch.exp(-0.5 * (x / safe) ** 2) * (x.abs() <= r)
    k = k / k.sum(dim=1, keepdim=True)
    return torch.where(on, k, (x == 0).to(k.dtype))


def gaussian_taps_host(sigma: float, radius: int, width: int | None = None) -> np.ndarray:
    """One sigma's taps, float64 numpy ``[2 * width + 1]`` (``width`` defaults to ``radius``):
    a row of :func:`gaussian_taps`, built with numpy alone.

    The CPU engine calls this once per blurred view from every engine thread. numpy on a few
    dozen values holds the GIL for microseconds; the batched torch form is about ten torch
    ops, each releasing and retaking the GIL, and with many engine threads those hand-overs
    queued the threads behind one another (measured: 26% of the engine threads' time waiting
    in it at 8 threads).
    """
    width = radius if width is None else width
    x = np.arange(-width, width + 1, dtype=np.float64)
    if sigma <= 0:
        return (x == 0).astype(np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2) * (np.abs(x) <= radius)
    return k / k.sum()


def blur_torch(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable per-sample blur of ``x`` [B, C, H, W] with ``taps`` [B, 2R + 1], reflect
    padding (the edge pixel is not repeated), as one grouped convolution per axis."""
    b, c, h, w = x.shape
    r = (taps.shape[1] - 1) // 2
    k = taps.to(x.dtype).repeat_interleave(c, dim=0)  # [B*C, 2R+1]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


def radius_for_sigma(sigma: float) -> int:
    """The radius of a Gaussian sized from its sigma, as PIL's ``GaussianBlur``-style recipes
    size it: ``ceil(3 sigma)``, at least 1 (taps = 2 * radius + 1)."""
    return max(1, math.ceil(3.0 * sigma))
