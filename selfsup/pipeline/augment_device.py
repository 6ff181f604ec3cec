"""The device path of the augmentation chain: batched torch ops over uint8 crops.

:func:`augment_batch` runs the chain of ``augment.py`` (same semantics, documented there) on
a whole batch ``[B, 3, S, S]`` on its device, with every choice per sample taken from the
parameter rows and no host synchronisation. The pipeline uses it on CUDA devices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.pipeline.saliency import saliency_masks_torch
from selfsup.pipeline.views import (
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
    ViewSpec,
    blur_radius,
)

WR, WG, WB = GRAY_WEIGHTS


def _gray_t(x: torch.Tensor) -> torch.Tensor:
    return WR * x[:, 0:1] + WG * x[:, 1:2] + WB * x[:, 2:3]


def _hue_t(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue on a float batch [B, 3, H, W] with per-sample shifts [B].

    rgb -> hsv by torchvision's _rgb2hsv formulas; back with the closed form of _hsv2rgb's
    sector table (channel n in (5, 3, 1): v - v * s * clamp(min(k, 4 - k), 0, 1) with
    k = (n + 6 h) mod 6), which needs no per-sector planes.
    """
    r, g, b = x.unbind(dim=1)
    minc, maxc = x.aminmax(dim=1)
    cr = maxc - minc
    gray = cr == 0
    s = cr / torch.where(gray, 1.0, maxc)
    crd = torch.where(gray, 1.0, cr)
    rc, gc, bc = (maxc - r).div_(crd), (maxc - g).div_(crd), (maxc - b).div_(crd)
    h = torch.where(
        maxc == r, bc - gc, torch.where(maxc == g, (rc - bc).add_(2.0), (gc - rc).add_(4.0))
    )
    h6 = h.div_(6.0).add_(f.view(-1, 1, 1)).remainder_(1.0).mul_(6.0).unsqueeze(1)  # 6 h'
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # 5,3,1
    k = (h6 + n).remainder_(6.0)
    v, vs = maxc.unsqueeze(1), s.mul_(maxc).unsqueeze(1)
    return v - torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0).mul_(vs)


def _blur_kernels(sigma: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """Per-sample 1-D Gaussians [B, 2R + 1] with R = spec.blur_radius_max.

    A sample whose own radius is smaller gets its kernel zero-padded (the same filter);
    sigma 0 gives a delta. Built in float64 like ``gaussian_kernel1d``, then cast.
    """
    big = spec.blur_radius_max
    s = sigma.to(torch.float64).view(-1, 1)
    on = s > 0
    s = torch.where(on, s, torch.ones_like(s))
    if spec.blur_kernel == "relative":
        radius = torch.full_like(s, float(blur_radius(spec, 1.0)))
    else:
        radius = torch.ceil(3.0 * s).clamp(min=1.0)
    x = torch.arange(-big, big + 1, device=sigma.device, dtype=torch.float64).view(1, -1)
    k = torch.exp(-0.5 * (x / s) ** 2) * (x.abs() <= radius)
    k = k / k.sum(dim=1, keepdim=True)
    k = torch.where(on, k, (x == 0).to(k.dtype))
    return k.to(torch.float32)


def _blur_t(x: torch.Tensor, sigma: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """Separable per-sample Gaussian blur, reflect padding, as one grouped conv per axis."""
    b, c, h, w = x.shape
    r = spec.blur_radius_max
    k = _blur_kernels(sigma, spec).to(x.dtype).repeat_interleave(c, dim=0)  # [B*C, 2R+1]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


def _augment_batch(
    x: torch.Tensor,
    params: torch.Tensor,
    spec: ViewSpec,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Augment a batch of cropped views on its device: uint8 [B, 3, S, S] -> normalised.

    ``params`` holds one row per sample (float32 [B, NPARAM], same device). Every choice is
    per sample; the ops run on the whole batch and ``torch.where`` keeps each sample's own
    result, so nothing waits on the host (no ``.item()``, no host tensor copied in). An op
    whose probability in ``spec`` is 0 is skipped outright (rows drawn from ``spec`` never
    turn it on). The chain runs in float32; the result is cast to ``dtype`` and, with
    ``channels_last``, laid out NHWC. The blur kernel has spec.blur_radius_max taps each
    side for every sample (a smaller radius is zero-padded), so the view must be larger.

    ``masks`` (uint8 [B, S, S] or [B, 1, S, S], 255 = foreground, same device) are the
    views' foreground masks for saliency masking, used where a row's ``P_MASK`` is on; None
    estimates them from ``x`` on the device (``saliency.saliency_masks_torch``). Both are
    skipped when ``spec.mask_p`` is 0.
    """
    p = params.to(torch.float32)
    u8 = x
    x = x.to(torch.float32) / 255.0

    def on(j: int) -> torch.Tensor:  # a per-sample flag, broadcastable over pixels
        return (p[:, j] != 0).view(-1, 1, 1, 1)

    if spec.mask_p > 0:
        # Before the colour chain, as ReLICv2 masks the image before crop and augmentation.
        m = saliency_masks_torch(u8) if masks is None else masks
        m = m.reshape(x.shape[0], 1, x.shape[2], x.shape[3]).to(torch.float32) / 255.0
        fill = p[:, P_FILL : P_FILL + 3].reshape(-1, 3, 1, 1)
        x = torch.where(on(P_MASK), torch.lerp(fill, x, m), x)

    if spec.jitter_p > 0:
        # Hue comes exactly once per sample, so run it once on the whole batch, between a
        # pass over the positions before each sample's hue and one over those after it.
        order = p[:, P_ORDER : P_ORDER + 4].to(torch.int64)
        hue_at = (order == HUE).to(torch.int64).argmax(dim=1).view(-1, 1, 1, 1)
        cols = (P_BRIGHTNESS, P_CONTRAST, P_SATURATION, P_HUE)  # indexed by op code
        factors = torch.stack([p[:, j] for j in cols], dim=1)
        jitter = on(P_JITTER)

        def blend_at(x: torch.Tensor, k: int, here: torch.Tensor) -> torch.Tensor:
            # brightness, contrast and saturation are each the blend ref + f * (x - ref)
            # with ref 0, the image's mean gray or the pixel's gray: pick the sample's own.
            op = order[:, k].view(-1, 1, 1, 1)
            gray = _gray_t(x)
            ref = torch.where(op == CONTRAST, gray.mean(dim=(2, 3), keepdim=True), gray)
            ref = torch.where(op == BRIGHTNESS, 0.0, ref)
            f = torch.gather(factors, 1, order[:, k : k + 1]).view(-1, 1, 1, 1)
            return torch.where(jitter & here, torch.lerp(ref, x, f).clamp_(0.0, 1.0), x)

        for k in range(3):
            x = blend_at(x, k, k < hue_at)
        x = torch.where(jitter, _hue_t(x, p[:, P_HUE]).clamp_(0.0, 1.0), x)
        for k in range(1, 4):
            x = blend_at(x, k, k > hue_at)
    if spec.grayscale_p > 0:
        x = torch.where(on(P_GRAY), _gray_t(x).expand_as(x), x)
    if spec.blur_p > 0:
        x = _blur_t(x, p[:, P_BLUR_SIGMA], spec)
    if spec.solarize_p > 0:
        x = torch.where(on(P_SOLARIZE) & (x >= 0.5), 1.0 - x, x)
    # per-channel Python scalars: a host tensor copied to the device would sync the stream
    norm = [(x[:, c] - m) / s for c, (m, s) in enumerate(zip(spec.mean, spec.std, strict=True))]
    x = torch.stack(norm, dim=1).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _use_fused(x: torch.Tensor) -> bool:
    """Run the per-pixel chain in the fused Triton kernel: CUDA tensors, Triton importable.

    Imported lazily so the CPU path never imports Triton (nor ``selfsup.kernels.color``).
    """
    if x.device.type != "cuda":
        return False
    from selfsup.kernels.color import fused_available

    return fused_available()


def augment_batch(
    x: torch.Tensor,
    params: torch.Tensor,
    spec: ViewSpec,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Augment a batch of cropped views on its device: uint8 [B, 3, S, S] -> normalised.

    See :func:`_augment_batch`. Runs with autocast off, so a caller's autocast region
    cannot push the chain (its FFTs and convolutions) into half precision. On CUDA with
    Triton, the per-pixel chain runs in the fused kernel of ``selfsup/kernels/color.py``
    (same results within float rounding); elsewhere the batched torch ops below.
    """
    with torch.autocast(x.device.type, enabled=False):
        if _use_fused(x):
            from selfsup.kernels import color

            return color.augment_batch_fused(x, params, spec, dtype, channels_last, masks)
        return _augment_batch(x, params, spec, dtype, channels_last, masks)
