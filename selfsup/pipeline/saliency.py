"""Foreground masks for saliency masking (ReLICv2) without pretrained weights.

ReLICv2 removes the background of some large crops using masks from an unsupervised
saliency network (DeepUSPS). selfsup needs no weights: it estimates the foreground with the
*spectral residual* of Hou & Zhang ("Saliency Detection: A Spectral Residual Approach",
CVPR 2007), or takes a precomputed per-image mask from the source (uint8 HxW, 255 =
foreground) that the engine crops with the view's box (``augment.crop_resize_mask``).

The estimator, at a working resolution of ``WORK`` x ``WORK`` pixels:

1. gray = ITU-R 601 luma of the view in [0, 1], area-averaged down to WORK x WORK;
2. F = FFT(gray); L = log |F|; the spectral residual R = L - box3x3(L) (the average taken
   circularly, the spectrum being periodic);
3. S = |IFFT(exp(R) * F / |F|)|^2, i.e. the residual amplitude with the original phase,
   with the DC term dropped (the mean brightness is not salient, and keeping it would make
   S depend on rounding: it is a large constant added before squaring);
4. S is smoothed by a Gaussian (sigma ``SIGMA`` working pixels, reflect-101 borders) and
   scaled to [0, 1] by its min and max (``mat2gray`` in Hou & Zhang's code);
5. Hou & Zhang's object map: foreground where S > ``THRESHOLD`` x mean(S);
6. the binary map is upsampled bilinearly to the view size (soft edges), as uint8 0..255.

An image with (almost) no contrast has no salient region; its mask is all foreground, so
masking leaves it unchanged rather than blanking it.

The per-image path (:func:`saliency_mask`: OpenCV resampling and filters, numpy's FFT at
64 x 64, about 0.3 ms for a 224 view) and the batched torch path
(:func:`saliency_masks_torch`: ``torch.fft``, every resampling and filter a small matrix
applied on both sides, ``M @ X @ M.T``, no host sync) compute the same function. They
differ by floating-point rounding only, which can flip a pixel lying on the threshold or
move a mask value by one step; the tests bound both.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
import torch

from selfsup.kernels.blur import gaussian_taps_host, radius_for_sigma
from selfsup.kernels.layout import GRAY_WEIGHTS

WORK = 64  # working resolution (Hou & Zhang use 64 px)
SIGMA = 2.5  # Gaussian smoothing of the saliency map, in working pixels (Hou & Zhang's code)
THRESHOLD = 3.0  # object map: S > THRESHOLD * mean(S) (Hou & Zhang)
FLAT_STD = 1e-3  # below this std of the working gray image, the mask is all foreground
_EPS = 1e-8

__all__ = ["saliency_map", "saliency_mask", "saliency_masks_torch"]


# ---------------------------------------------------------------------------------------
# The matrices (float64, cached per size)
# ---------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def area_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) exact area averaging: output pixel i covers [i, i + 1) * n_in / n_out."""
    m = np.zeros((n_out, n_in))
    step = n_in / n_out
    for i in range(n_out):
        lo, hi = i * step, (i + 1) * step
        for j in range(int(math.floor(lo)), min(n_in, int(math.ceil(hi)))):
            m[i, j] = (min(hi, j + 1) - max(lo, j)) / step
    return m


@lru_cache(maxsize=64)
def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) bilinear resampling with half-pixel centres and clamped edges."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        j = min(int(math.floor(x)), n_in - 2) if n_in > 1 else 0
        f = x - j
        m[i, j] += 1.0 - f
        if n_in > 1:
            m[i, j + 1] += f
    return m


@lru_cache(maxsize=8)
def box3_circular_matrix(n: int) -> np.ndarray:
    """(n, n) 3-tap moving average with wrap-around."""
    m = np.zeros((n, n))
    for i in range(n):
        for d in (-1, 0, 1):
            m[i, (i + d) % n] += 1.0 / 3.0
    return m


@lru_cache(maxsize=8)
def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) normalised Gaussian of radius ceil(3 sigma), reflect-101 borders."""
    r = radius_for_sigma(sigma)
    k = gaussian_taps_host(sigma, r)
    m = np.zeros((n, n))
    for i in range(n):
        for d in range(-r, r + 1):
            j = i + d
            while j < 0 or j >= n:  # reflect without repeating the edge
                j = -j if j < 0 else 2 * (n - 1) - j
            m[i, j] += k[d + r]
    return m


# ---------------------------------------------------------------------------------------
# numpy: one image
# ---------------------------------------------------------------------------------------


def saliency_map(gray: np.ndarray) -> np.ndarray:
    """Spectral-residual saliency of a small float64 gray image, smoothed, in [0, 1]."""
    f = np.fft.fft2(gray)
    mag = np.abs(f)
    log_amp = np.log(mag + _EPS)
    wrapped = np.pad(log_amp, 1, mode="wrap")  # the spectrum is periodic
    residual = log_amp - cv2.blur(wrapped, (3, 3))[1:-1, 1:-1]
    field = np.exp(residual) * (f / (mag + _EPS))
    field[0, 0] = 0.0  # drop the DC term: the image's mean brightness is not salient
    s = np.abs(np.fft.ifft2(field)) ** 2
    k = gaussian_taps_host(SIGMA, radius_for_sigma(SIGMA))
    s = cv2.sepFilter2D(s, -1, k, k, borderType=cv2.BORDER_REFLECT_101)
    lo = s.min()
    return (s - lo) / max(s.max() - lo, _EPS)


def saliency_mask(crop: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 foreground mask (255 = foreground) of an HxWx3 uint8 image, of shape ``size``
    (default: the image's own HxW).

    OpenCV does the two resamplings (its INTER_AREA and INTER_LINEAR are the area and
    bilinear matrices of the torch path) and the filters, so no multi-threaded BLAS call
    competes with the engine's threads.
    """
    h, w = crop.shape[:2]
    out_h, out_w = size or (h, w)
    # Area averaging is linear, so shrinking before the gray conversion changes nothing.
    small = cv2.resize(crop.astype(np.float32), (WORK, WORK), interpolation=cv2.INTER_AREA)
    gray = small.reshape(-1, 3).astype(np.float64) @ (np.asarray(GRAY_WEIGHTS) / 255.0)
    gray = gray.reshape(WORK, WORK)
    if gray.std() < FLAT_STD:
        return np.full((out_h, out_w), 255, np.uint8)
    s = saliency_map(gray)
    fg = (s > THRESHOLD * s.mean()).astype(np.float32)
    up = cv2.resize(fg, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return np.rint(up * np.float32(255.0)).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# torch: a batch on its device
# ---------------------------------------------------------------------------------------


_MATRICES = {"area": area_matrix, "bilinear": bilinear_matrix, "box": box3_circular_matrix}


@lru_cache(maxsize=64)
def _on_device(kind: str, args: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A constant matrix copied to the device once (later batches reuse it, no copy)."""
    m = gaussian_matrix(*args) if kind == "gauss" else _MATRICES[kind](*args)
    return torch.as_tensor(m, dtype=dtype).to(device)


def saliency_masks_torch(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 foreground masks [B, H, W] of a uint8 batch [B, 3, H, W], on its device.

    Computed in ``dtype`` (float32 by default; float64 reproduces :func:`saliency_mask`).
    No host synchronisation: the flat-image fallback is a ``torch.where``, and the constant
    matrices are copied to the device once per (size, device, dtype) and cached.
    """
    b, _, h, w = x.shape
    wr, wg, wb = GRAY_WEIGHTS
    v = x.to(dtype)
    gray = (wr * v[:, 0] + wg * v[:, 1] + wb * v[:, 2]) / 255.0
    dev = x.device
    small = _on_device("area", (WORK, h), dev, dtype) @ gray
    small = small @ _on_device("area", (WORK, w), dev, dtype).T
    f = torch.fft.fft2(small)
    mag = f.abs()
    box = _on_device("box", (WORK,), dev, dtype)
    log_amp = torch.log(mag + _EPS)
    residual = log_amp - box @ log_amp @ box.T
    field = torch.exp(residual) * (f / (mag + _EPS))
    field[:, 0, 0] = 0.0  # drop the DC term, as in saliency_map
    s = torch.fft.ifft2(field).abs().square()
    g = _on_device("gauss", (WORK, SIGMA), dev, dtype)
    s = g @ s @ g.T
    lo = s.amin(dim=(1, 2), keepdim=True)
    s = (s - lo) / (s.amax(dim=(1, 2), keepdim=True) - lo).clamp_min(_EPS)
    fg = (s > THRESHOLD * s.mean(dim=(1, 2), keepdim=True)).to(dtype)
    flat = small.flatten(1).std(dim=1, correction=0).view(b, 1, 1) < FLAT_STD
    fg = torch.where(flat, torch.ones_like(fg), fg)
    up = _on_device("bilinear", (h, WORK), dev, dtype) @ fg
    up = up @ _on_device("bilinear", (w, WORK), dev, dtype).T
    return torch.round(up * 255.0).to(torch.uint8)
