"""The per-pixel colour chain as batched torch ops: the readable reference of the fused kernel.

Every function takes a batch of views ``[B, 3, H, W]`` (any strides, NCHW or channels_last) and
its parameter rows ``[B, NPARAM]`` (``layout.py``), and applies every choice per sample from the
rows with ``torch.where``, so nothing waits on the host. ``color_triton.py`` holds the fused
Triton kernels with the same signatures.

The chain, per sample, on float values in [0, 1], following torchvision:

1. saliency-mask blend (when ``masks`` is given and the row's ``P_MASK`` is on): the
   background, where the mask (uint8, 255 = foreground) is low, is blended towards the row's
   fill colour, ``fill + a * (x - fill)`` with ``a = mask / 255``;
2. colour jitter (row ``P_JITTER``): brightness, contrast, saturation and hue in the sample's
   own order (``P_ORDER``), each clamped to [0, 1]; contrast blends towards the image's mean
   gray at its point in the chain; hue goes through torchvision's HSV formulas;
3. grayscale (row ``P_GRAY``), ITU-R 601-2 luma in all three channels;
4. (blur: not here, see ``blur.py``; it sits between the head and the tail below);
5. solarize (row ``P_SOLARIZE``): values >= 0.5 become 1 - value;
6. normalisation ``(x - mean) / std`` per channel, cast to ``out_dtype``.

Split for the blur: ``color_head_*`` runs 1-3 from uint8 to float32, ``color_tail_*`` runs 5-6
from uint8 or float32, ``color_jitter_*`` runs all of them in one go. The keyword flags
``jitter``, ``gray`` and ``solarize`` switch a stage off for the whole batch (a recipe whose
probability is 0 never turns it on), so a chain with nothing to do costs nothing.
"""

from __future__ import annotations

import torch

from selfsup.kernels import autocast_off
from selfsup.kernels.layout import (
    BRIGHTNESS,
    CONTRAST,
    GRAY_WEIGHTS,
    HUE,
    NPARAM,
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
)

OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
WR, WG, WB = GRAY_WEIGHTS


def check_inputs(x: torch.Tensor, params: torch.Tensor, out_dtype: torch.dtype | None = None):
    """Shapes and dtypes every colour function (torch or fused) accepts."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a batch [B, 3, H, W], got {tuple(x.shape)}")
    if tuple(params.shape) != (x.shape[0], NPARAM):
        raise ValueError(f"params must be [{x.shape[0]}, {NPARAM}], got {tuple(params.shape)}")
    if out_dtype is not None and out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")


def gray_t(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] luma of a float batch [B, 3, H, W]."""
    return WR * x[:, 0:1] + WG * x[:, 1:2] + WB * x[:, 2:3]


def hue_t(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
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


def _on(p: torch.Tensor, column: int) -> torch.Tensor:
    """A per-sample flag from the rows, broadcastable over [B, C, H, W]."""
    return (p[:, column] != 0).view(-1, 1, 1, 1)


def _jitter(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    # Hue comes exactly once per sample, so run it once on the whole batch, between a pass
    # over the positions before each sample's hue and one over those after it.
    order = p[:, P_ORDER : P_ORDER + 4].to(torch.int64)
    hue_at = (order == HUE).to(torch.int64).argmax(dim=1).view(-1, 1, 1, 1)
    cols = (P_BRIGHTNESS, P_CONTRAST, P_SATURATION, P_HUE)  # indexed by op code
    factors = torch.stack([p[:, j] for j in cols], dim=1)
    jitter = _on(p, P_JITTER)

    def blend_at(x: torch.Tensor, k: int, here: torch.Tensor) -> torch.Tensor:
        # brightness, contrast and saturation are each the blend ref + f * (x - ref) with
        # ref 0, the image's mean gray or the pixel's gray: pick the sample's own.
        op = order[:, k].view(-1, 1, 1, 1)
        gray = gray_t(x)
        ref = torch.where(op == CONTRAST, gray.mean(dim=(2, 3), keepdim=True), gray)
        ref = torch.where(op == BRIGHTNESS, 0.0, ref)
        f = torch.gather(factors, 1, order[:, k : k + 1]).view(-1, 1, 1, 1)
        return torch.where(jitter & here, torch.lerp(ref, x, f).clamp_(0.0, 1.0), x)

    for k in range(3):
        x = blend_at(x, k, k < hue_at)
    x = torch.where(jitter, hue_t(x, p[:, P_HUE]).clamp_(0.0, 1.0), x)
    for k in range(1, 4):
        x = blend_at(x, k, k > hue_at)
    return x


def color_head_torch(
    x_u8: torch.Tensor,
    params: torch.Tensor,
    masks: torch.Tensor | None = None,
    *,
    jitter: bool = True,
    gray: bool = True,
) -> torch.Tensor:
    """Stages 1-3 (mask blend if ``masks``, jitter, grayscale): uint8 -> float32 in [0, 1]."""
    check_inputs(x_u8, params)
    if x_u8.dtype != torch.uint8:
        raise ValueError(f"the colour head takes uint8 views, got {x_u8.dtype}")
    with autocast_off(x_u8.device):
        p = params.to(device=x_u8.device, dtype=torch.float32)
        x = x_u8.to(torch.float32) / 255.0
        if masks is not None:
            m = masks.reshape(x.shape[0], 1, x.shape[2], x.shape[3]).to(torch.float32) / 255.0
            fill = p[:, P_FILL : P_FILL + 3].reshape(-1, 3, 1, 1)
            x = torch.where(_on(p, P_MASK), torch.lerp(fill, x, m), x)
        if jitter:
            x = _jitter(x, p)
        if gray:
            x = torch.where(_on(p, P_GRAY), gray_t(x).expand_as(x), x)
        return x


def color_tail_torch(
    x: torch.Tensor,
    params: torch.Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    out_dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    *,
    solarize: bool = True,
) -> torch.Tensor:
    """Stages 5-6 (solarize, normalise) of uint8 views or float32 values in [0, 1]."""
    check_inputs(x, params, out_dtype)
    if x.dtype not in (torch.uint8, torch.float32):
        raise ValueError(f"the colour tail takes uint8 or float32 views, got {x.dtype}")
    with autocast_off(x.device):
        x = x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x
        if solarize:
            p = params.to(device=x.device, dtype=torch.float32)
            x = torch.where(_on(p, P_SOLARIZE) & (x >= 0.5), 1.0 - x, x)
        # per-channel Python scalars: a host tensor copied to the device would sync the stream
        norm = [(x[:, c] - m) / s for c, (m, s) in enumerate(zip(mean, std, strict=True))]
        out = torch.stack(norm, dim=1).to(out_dtype)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def color_jitter_torch(
    x_u8: torch.Tensor,
    params: torch.Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    out_dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    masks: torch.Tensor | None = None,
    *,
    jitter: bool = True,
    gray: bool = True,
    solarize: bool = True,
) -> torch.Tensor:
    """The whole chain without blur: uint8 -> mask, jitter, gray, solarize, normalise."""
    head = color_head_torch(x_u8, params, masks, jitter=jitter, gray=gray)
    return color_tail_torch(head, params, mean, std, out_dtype, channels_last, solarize=solarize)
