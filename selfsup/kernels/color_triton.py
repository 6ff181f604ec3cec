"""The per-pixel colour chain as one fused Triton kernel (reference and semantics: ``color.py``).

:func:`color_jitter_fused`, :func:`color_head_fused` and :func:`color_tail_fused` have the
signatures of their ``*_torch`` twins and give the same results within float rounding.

Design
------
*Contrast mean.* Contrast blends towards the image's mean gray *at its point in the chain*,
so it needs a reduction over the whole image before any pixel can be finished. Every op
that can precede contrast (mask, brightness, saturation, hue) is per pixel, so a cheap
pre-pass (``_gray_sum_kernel``) reads the uint8 image once, runs each sample's chain up to
its contrast op, and writes one partial sum of gray per (sample, pixel block); torch sums
the partials on the device (deterministic, no atomics, no host sync). The main kernel then
reads the image a second time and writes the output once. Traffic: two uint8 reads and one
output write, against a dozen float passes for the torch chain. Without jitter there is no
pre-pass.

*Stages.* One kernel body (``_color_kernel``) is specialised by constexpr flags: ``JITTER``,
``GRAY`` and the mask blend make the head (uint8 -> float32 in [0, 1]); ``FINISH`` (with
``SOLARIZE``) the tail (-> normalised ``out_dtype``). All of them together are the whole chain
in one pass, used when a view never blurs; a view that can blur runs head -> the torch blur
(``blur.py``) -> tail. A stage whose flag is off is not compiled in.

Launches run under the tensors' CUDA device (``launch_guard``), so a batch on ``cuda:1``
works while ``cuda:0`` is current.

``TRITON_INTERPRET`` is read by ``triton.jit`` when this module is imported (Triton 3.x
decides interpreter or compiler per decorated function), so set it before the first import.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from selfsup.kernels import launch_guard
from selfsup.kernels.color import check_inputs
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

_WR, _WG, _WB = (tl.constexpr(w) for w in GRAY_WEIGHTS)
_NP = tl.constexpr(NPARAM)
_PJ, _PG, _PS, _PM, _PF = (tl.constexpr(c) for c in (P_JITTER, P_GRAY, P_SOLARIZE, P_MASK, P_FILL))
_PB, _PC, _PSAT, _PH = (tl.constexpr(c) for c in (P_BRIGHTNESS, P_CONTRAST, P_SATURATION, P_HUE))
_PO = tl.constexpr(P_ORDER)
_OPB, _OPC, _OPH = tl.constexpr(BRIGHTNESS), tl.constexpr(CONTRAST), tl.constexpr(HUE)


@triton.jit
def _gray(r, g, b):
    return _WR * r + _WG * g + _WB * b


@triton.jit
def _clamp01(v):
    return tl.minimum(tl.maximum(v, 0.0), 1.0)


@triton.jit
def _hsv_channel(h6, n, v, vs):
    # torchvision's _hsv2rgb sector table in closed form (see color.hue_t)
    k = h6 + n
    k = k - 6.0 * tl.floor(k / 6.0)
    return v - _clamp01(tl.minimum(k, 4.0 - k)) * vs


@triton.jit
def _hue(r, g, b, f):
    """torchvision's adjust_hue (rgb -> hsv, shift, back), then the clamp."""
    maxc = tl.maximum(tl.maximum(r, g), b)
    minc = tl.minimum(tl.minimum(r, g), b)
    cr = maxc - minc
    flat = cr == 0
    s = cr / tl.where(flat, 1.0, maxc)
    crd = tl.where(flat, 1.0, cr)
    rc = (maxc - r) / crd
    gc = (maxc - g) / crd
    bc = (maxc - b) / crd
    h = tl.where(maxc == r, bc - gc, tl.where(maxc == g, (rc - bc) + 2.0, (gc - rc) + 4.0))
    h = h / 6.0 + f
    h6 = (h - tl.floor(h)) * 6.0
    vs = s * maxc
    r2 = _hsv_channel(h6, 5.0, maxc, vs)
    g2 = _hsv_channel(h6, 3.0, maxc, vs)
    b2 = _hsv_channel(h6, 1.0, maxc, vs)
    return _clamp01(r2), _clamp01(g2), _clamp01(b2)


@triton.jit
def _jitter_op(r, g, b, row, k, mgray):
    """Apply the sample's k-th jitter op. Brightness, contrast and saturation are all the
    blend ref + f * (x - ref) with ref 0, the mean gray or the pixel's gray."""
    op = tl.load(row + _PO + k).to(tl.int32)
    if op == _OPH:
        r, g, b = _hue(r, g, b, tl.load(row + _PH))
    else:
        f = tl.where(
            op == _OPB,
            tl.load(row + _PB),
            tl.where(op == _OPC, tl.load(row + _PC), tl.load(row + _PSAT)),
        )
        ref = tl.where(op == _OPB, 0.0, tl.where(op == _OPC, mgray, _gray(r, g, b)))
        r = _clamp01(ref + f * (r - ref))
        g = _clamp01(ref + f * (g - ref))
        b = _clamp01(ref + f * (b - ref))
    return r, g, b


@triton.jit
def _load_rgb(x_ptr, m_ptr, row, b64, hh, ww, inb, sxb, sxc, sxh, sxw, smb, smh, smw,
              IN_U8: tl.constexpr, HAS_MASK: tl.constexpr):  # fmt: skip
    base = x_ptr + b64 * sxb + hh * sxh + ww * sxw
    r = tl.load(base, mask=inb, other=0).to(tl.float32)
    g = tl.load(base + sxc, mask=inb, other=0).to(tl.float32)
    b = tl.load(base + 2 * sxc, mask=inb, other=0).to(tl.float32)
    if IN_U8:
        r, g, b = r / 255.0, g / 255.0, b / 255.0
    if HAS_MASK:
        if tl.load(row + _PM) != 0:
            m = tl.load(m_ptr + b64 * smb + hh * smh + ww * smw, mask=inb, other=0)
            m = m.to(tl.float32) / 255.0
            f0, f1, f2 = tl.load(row + _PF), tl.load(row + _PF + 1), tl.load(row + _PF + 2)
            r, g, b = f0 + m * (r - f0), f1 + m * (g - f1), f2 + m * (b - f2)
    return r, g, b


@triton.jit
def _sample_block(p_ptr, H, W, BLOCK: tl.constexpr):
    """This program's sample (grid axis 0, which has no 65535 cap), its block of pixels (axis
    1), the sample's parameter row, and the block's pixel mask and coordinates."""
    b64 = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    return b64, pid, p_ptr + b64 * _NP, offs < H * W, offs // W, offs % W


@triton.jit
def _gray_sum_kernel(x_ptr, m_ptr, p_ptr, part_ptr, H, W, NBLK,
                     sxb, sxc, sxh, sxw, smb, smh, smw,
                     HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """Pre-pass: per (pixel block, sample), the sum of gray just before contrast."""
    b64, pid, row, inb, hh, ww = _sample_block(p_ptr, H, W, BLOCK)
    r, g, b = _load_rgb(x_ptr, m_ptr, row, b64, hh, ww, inb, sxb, sxc, sxh, sxw,
                        smb, smh, smw, True, HAS_MASK)  # fmt: skip
    total = tl.sum(tl.where(inb, _gray(r, g, b), 0.0), axis=0)
    if tl.load(row + _PJ) != 0:
        o0 = tl.load(row + _PO).to(tl.int32)
        o1 = tl.load(row + _PO + 1).to(tl.int32)
        o2 = tl.load(row + _PO + 2).to(tl.int32)
        c_at = tl.where(o0 == _OPC, 0, tl.where(o1 == _OPC, 1, tl.where(o2 == _OPC, 2, 3)))
        for k in tl.static_range(3):
            if k < c_at:
                r, g, b = _jitter_op(r, g, b, row, k, 0.0)
        total = tl.sum(tl.where(inb, _gray(r, g, b), 0.0), axis=0)
    tl.store(part_ptr + b64 * NBLK + pid, total)


@triton.jit
def _color_kernel(x_ptr, m_ptr, p_ptr, mg_ptr, out_ptr, H, W,
                  sxb, sxc, sxh, sxw, smb, smh, smw, sob, soc, soh, sow,
                  mean0, mean1, mean2, std0, std1, std2,
                  IN_U8: tl.constexpr, HAS_MASK: tl.constexpr, JITTER: tl.constexpr,
                  GRAY: tl.constexpr, FINISH: tl.constexpr, SOLARIZE: tl.constexpr,
                  BLOCK: tl.constexpr):  # fmt: skip
    """One pass over a block of one sample's pixels: read once, chain, write once."""
    b64, pid, row, inb, hh, ww = _sample_block(p_ptr, H, W, BLOCK)
    r, g, b = _load_rgb(x_ptr, m_ptr, row, b64, hh, ww, inb, sxb, sxc, sxh, sxw,
                        smb, smh, smw, IN_U8, HAS_MASK)  # fmt: skip
    if JITTER:
        if tl.load(row + _PJ) != 0:
            mgray = tl.load(mg_ptr + b64)
            for k in tl.static_range(4):
                r, g, b = _jitter_op(r, g, b, row, k, mgray)
    if GRAY:
        if tl.load(row + _PG) != 0:
            y = _gray(r, g, b)
            r, g, b = y, y, y
    if FINISH:
        if SOLARIZE:
            if tl.load(row + _PS) != 0:
                r = tl.where(r >= 0.5, 1.0 - r, r)
                g = tl.where(g >= 0.5, 1.0 - g, g)
                b = tl.where(b >= 0.5, 1.0 - b, b)
        r, g, b = (r - mean0) / std0, (g - mean1) / std1, (b - mean2) / std2
    base = out_ptr + b64 * sob + hh * soh + ww * sow
    ty = out_ptr.dtype.element_ty
    tl.store(base, r.to(ty), mask=inb)
    tl.store(base + soc, g.to(ty), mask=inb)
    tl.store(base + 2 * soc, b.to(ty), mask=inb)


def _mask_view(masks: torch.Tensor | None, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    if masks is None:
        return x, (0, 0, 0)  # any valid pointer; HAS_MASK=False never reads it
    m = masks.reshape(x.shape[0], x.shape[2], x.shape[3])
    if m.dtype != torch.uint8:
        raise ValueError(f"masks must be uint8 (255 = foreground), got {m.dtype}")
    return m, m.stride()


def _launch(x, params, masks, mean, std, out_dtype, channels_last, *, jitter, gray, finish,
            solarize):  # fmt: skip
    check_inputs(x, params, out_dtype)
    bsz, _, h, w = x.shape
    p = params.to(device=x.device, dtype=torch.float32).contiguous()
    m, ms = _mask_view(masks, x)
    block = min(1024, triton.next_power_of_2(h * w))
    nblk = triton.cdiv(h * w, block)
    grid = (bsz, nblk)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((bsz, 3, h, w), device=x.device, dtype=out_dtype, memory_format=fmt)
    with launch_guard(x):
        mgray = p  # a placeholder pointer: JITTER=False never reads it
        if jitter:
            part = torch.empty((bsz, nblk), device=x.device, dtype=torch.float32)
            _gray_sum_kernel[grid](
                x, m, p, part, h, w, nblk, *x.stride(), *ms,
                HAS_MASK=masks is not None, BLOCK=block,
            )  # fmt: skip
            mgray = part.sum(dim=1) / (h * w)
        _color_kernel[grid](
            x, m, p, mgray, out, h, w, *x.stride(), *ms, *out.stride(),
            *(float(v) for v in mean), *(float(v) for v in std),
            IN_U8=x.dtype == torch.uint8, HAS_MASK=masks is not None, JITTER=jitter, GRAY=gray,
            FINISH=finish, SOLARIZE=solarize, BLOCK=block,
        )  # fmt: skip
    return out


def color_jitter_fused(
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
    """Fused :func:`color.color_jitter_torch`: the whole chain without blur in one pass."""
    if x_u8.dtype != torch.uint8:
        raise ValueError(f"color_jitter_fused takes uint8 views, got {x_u8.dtype}")
    return _launch(
        x_u8, params, masks, mean, std, out_dtype, channels_last,
        jitter=jitter, gray=gray, finish=True, solarize=solarize,
    )  # fmt: skip


def color_head_fused(
    x_u8: torch.Tensor,
    params: torch.Tensor,
    masks: torch.Tensor | None = None,
    *,
    jitter: bool = True,
    gray: bool = True,
) -> torch.Tensor:
    """Fused :func:`color.color_head_torch`: uint8 -> mask, jitter, gray -> float32 in [0, 1]."""
    if x_u8.dtype != torch.uint8:
        raise ValueError(f"color_head_fused takes uint8 views, got {x_u8.dtype}")
    zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return _launch(
        x_u8, params, masks, zero, one, torch.float32, False,
        jitter=jitter, gray=gray, finish=False, solarize=False,
    )  # fmt: skip


def color_tail_fused(
    x: torch.Tensor,
    params: torch.Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    out_dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    *,
    solarize: bool = True,
) -> torch.Tensor:
    """Fused :func:`color.color_tail_torch`: uint8 or float32 in [0, 1] -> solarize,
    normalise."""
    if x.dtype not in (torch.uint8, torch.float32):
        raise ValueError(f"color_tail_fused takes uint8 or float32 views, got {x.dtype}")
    return _launch(
        x, params, None, mean, std, out_dtype, channels_last,
        jitter=False, gray=False, finish=True, solarize=solarize,
    )  # fmt: skip
