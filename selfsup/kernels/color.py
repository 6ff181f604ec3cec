"""The per-pixel colour chain as one fused Triton kernel, beside its plain-torch reference.

:func:`color_jitter_fused` and :func:`color_jitter_torch` share one signature: uint8 views
``[B, 3, H, W]`` (any strides, NCHW or channels_last) and their parameter rows ``[B, NPARAM]``
-> the normalised batch in ``out_dtype`` (float32, bfloat16 or float16), NCHW or
channels_last. Per sample, as ``augment_device.augment_batch`` (semantics in ``augment.py``):
saliency-mask blend (when ``masks`` is given), colour jitter (brightness, contrast,
saturation, hue in the sample's own order from the ``P_ORDER`` columns, clamped to [0, 1]
after each op), grayscale, solarize, normalisation. Blur is not part of it.

Design
------
*Contrast mean.* Contrast blends towards the image's mean gray *at its point in the chain*,
so it needs a reduction over the whole image before any pixel can be finished. Every op
that can precede contrast (mask, brightness, saturation, hue) is per pixel, so a cheap
pre-pass (``_gray_sum_kernel``) reads the uint8 image once, runs each sample's chain up to
its contrast op, and writes one partial sum of gray per (sample, pixel block); torch sums
the partials on the device (deterministic, no atomics, no host sync). The main kernel then
reads the image a second time and writes the output once. Traffic: two uint8 reads and one
output write, against a dozen float passes for the torch chain.

*Blur split.* The chain order is mask -> jitter -> gray -> blur -> solarize -> normalise, and
blur needs neighbours. One kernel body (``_color_kernel``) has three instantiations chosen by
constexpr flags:

- full (``COLOR`` and ``FINISH``): uint8 -> everything -> out dtype; used when the spec never
  blurs (``blur_p == 0``);
- head (``COLOR`` only): uint8 -> mask, jitter, gray -> float32 in [0, 1];
- tail (``FINISH`` only): float32 -> solarize, normalise -> out dtype.

A spec that can blur runs head -> the torch blur of ``augment_device`` -> tail
(:func:`augment_batch_fused`). Samples whose sigma is 0 get a delta kernel there, as on the
torch path.

``TRITON_INTERPRET`` is read by ``triton.jit`` when this module is imported (Triton 3.x
decides interpreter or compiler per decorated function), so set it before the first import.
"""

from __future__ import annotations

import torch

from selfsup.pipeline.augment_device import _augment_batch, _blur_t
from selfsup.pipeline.saliency import saliency_masks_torch
from selfsup.pipeline.views import (
    BRIGHTNESS,
    CONTRAST,
    GRAY_WEIGHTS,
    HUE,
    NPARAM,
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
)

try:
    import triton
    import triton.language as tl
except ImportError:  # the fused path is optional; the torch path needs nothing more
    triton = None

OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fused_available() -> bool:
    """True when Triton imports (the caller checks the device is CUDA)."""
    return triton is not None


# ---------------------------------------------------------------------------------------
# Plain-torch reference (same signature as the fused kernel)
# ---------------------------------------------------------------------------------------


def _torch_spec(h: int, mean, std, masked: bool, finish: bool) -> ViewSpec:
    # Every op switched on in the spec, so only the rows decide (as in the kernel).
    return ViewSpec(
        size=h,
        jitter_p=1.0,
        grayscale_p=1.0,
        blur_p=0.0,
        solarize_p=1.0 if finish else 0.0,
        mask_p=1.0 if masked else 0.0,
        mean=tuple(mean) if finish else (0.0, 0.0, 0.0),
        std=tuple(std) if finish else (1.0, 1.0, 1.0),
    )


def color_jitter_torch(
    x_u8: torch.Tensor,
    params: torch.Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    out_dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask (if ``masks``), jitter, grayscale, solarize, normalise with batched torch ops."""
    spec = _torch_spec(x_u8.shape[2], mean, std, masks is not None, finish=True)
    # Without masks the spec skips masking, so the mask argument is never estimated.
    return _augment_batch(x_u8, params, spec, out_dtype, channels_last, masks)


def color_head_torch(
    x_u8: torch.Tensor, params: torch.Tensor, masks: torch.Tensor | None = None
) -> torch.Tensor:
    """Mask (if ``masks``), jitter, grayscale: uint8 -> float32 [B, 3, H, W] in [0, 1]."""
    spec = _torch_spec(x_u8.shape[2], None, None, masks is not None, finish=False)
    return _augment_batch(x_u8, params, spec, torch.float32, False, masks)


def color_tail_torch(
    x: torch.Tensor,
    params: torch.Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    out_dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """Solarize and normalise a float32 batch in [0, 1]."""
    sol = (params[:, P_SOLARIZE] != 0).view(-1, 1, 1, 1)
    x = torch.where(sol & (x >= 0.5), 1.0 - x, x)
    norm = [(x[:, c] - m) / s for c, (m, s) in enumerate(zip(mean, std, strict=True))]
    x = torch.stack(norm, dim=1).to(out_dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ---------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------

if triton is not None:
    _WR, _WG, _WB = (tl.constexpr(w) for w in GRAY_WEIGHTS)
    _NP = tl.constexpr(NPARAM)
    _PJ, _PG, _PS, _PM, _PF = (
        tl.constexpr(c) for c in (P_JITTER, P_GRAY, P_SOLARIZE, P_MASK, P_FILL)
    )
    _PB, _PC, _PSAT, _PH = (
        tl.constexpr(c) for c in (P_BRIGHTNESS, P_CONTRAST, P_SATURATION, P_HUE)
    )
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
        # torchvision's _hsv2rgb sector table in closed form (see augment_device._hue_t)
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
    def _gray_sum_kernel(x_ptr, m_ptr, p_ptr, part_ptr, H, W, NBLK,
                         sxb, sxc, sxh, sxw, smb, smh, smw,
                         HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        """Pre-pass: per (pixel block, sample), the sum of gray just before contrast."""
        bi, pid = tl.program_id(0), tl.program_id(1)  # samples on axis 0 (no 65535 cap)
        b64 = bi.to(tl.int64)
        row = p_ptr + b64 * _NP
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        inb = offs < H * W
        hh, ww = offs // W, offs % W
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
                      IN_U8: tl.constexpr, HAS_MASK: tl.constexpr, COLOR: tl.constexpr,
                      FINISH: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        """One pass over a block of one sample's pixels: read once, chain, write once."""
        bi, pid = tl.program_id(0), tl.program_id(1)  # samples on axis 0 (no 65535 cap)
        b64 = bi.to(tl.int64)
        row = p_ptr + b64 * _NP
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        inb = offs < H * W
        hh, ww = offs // W, offs % W
        r, g, b = _load_rgb(x_ptr, m_ptr, row, b64, hh, ww, inb, sxb, sxc, sxh, sxw,
                            smb, smh, smw, IN_U8, HAS_MASK)  # fmt: skip
        if COLOR:
            if tl.load(row + _PJ) != 0:
                mgray = tl.load(mg_ptr + b64)
                for k in tl.static_range(4):
                    r, g, b = _jitter_op(r, g, b, row, k, mgray)
            if tl.load(row + _PG) != 0:
                y = _gray(r, g, b)
                r, g, b = y, y, y
        if FINISH:
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


def _block(hw: int) -> int:
    return min(1024, triton.next_power_of_2(hw))


def _mask_view(masks: torch.Tensor | None, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    if masks is None:
        return x, (0, 0, 0)  # any valid pointer; HAS_MASK=False never reads it
    m = masks.reshape(x.shape[0], x.shape[2], x.shape[3])
    if m.dtype != torch.uint8:
        raise ValueError(f"masks must be uint8 (255 = foreground), got {m.dtype}")
    return m, m.stride()


def _launch(x, params, masks, mean, std, out_dtype, channels_last, color, finish):
    if triton is None:
        raise RuntimeError("the fused colour kernel needs triton (pip install selfsup[triton])")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a batch [B, 3, H, W], got {tuple(x.shape)}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    bsz, _, h, w = x.shape
    p = params.to(device=x.device, dtype=torch.float32).contiguous()
    if p.shape != (bsz, NPARAM):
        raise ValueError(f"params must be [{bsz}, {NPARAM}], got {tuple(p.shape)}")
    m, ms = _mask_view(masks, x)
    block = _block(h * w)
    nblk = triton.cdiv(h * w, block)
    grid = (bsz, nblk)
    in_u8 = x.dtype == torch.uint8
    mgray = p  # placeholder pointer when no colour stage
    if color:
        part = torch.empty((bsz, nblk), device=x.device, dtype=torch.float32)
        _gray_sum_kernel[grid](
            x, m, p, part, h, w, nblk, *x.stride(), *ms,
            HAS_MASK=masks is not None, BLOCK=block,
        )  # fmt: skip
        mgray = part.sum(dim=1) / (h * w)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((bsz, 3, h, w), device=x.device, dtype=out_dtype, memory_format=fmt)
    _color_kernel[grid](
        x, m, p, mgray, out, h, w, *x.stride(), *ms, *out.stride(),
        *(float(v) for v in mean), *(float(v) for v in std),
        IN_U8=in_u8, HAS_MASK=masks is not None, COLOR=color, FINISH=finish, BLOCK=block,
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
) -> torch.Tensor:
    """The fused colour chain (see the module docstring); same result as
    :func:`color_jitter_torch` within float rounding."""
    if x_u8.dtype != torch.uint8:
        raise ValueError(f"color_jitter_fused takes uint8 views, got {x_u8.dtype}")
    return _launch(x_u8, params, masks, mean, std, out_dtype, channels_last, True, True)


def color_head_fused(
    x_u8: torch.Tensor, params: torch.Tensor, masks: torch.Tensor | None = None
) -> torch.Tensor:
    """Fused :func:`color_head_torch`: uint8 -> mask, jitter, gray -> float32 in [0, 1]."""
    if x_u8.dtype != torch.uint8:
        raise ValueError(f"color_head_fused takes uint8 views, got {x_u8.dtype}")
    zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return _launch(x_u8, params, masks, zero, one, torch.float32, False, True, False)


def color_tail_fused(
    x: torch.Tensor,
    params: torch.Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    out_dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """Fused :func:`color_tail_torch`: float32 in [0, 1] -> solarize, normalise."""
    if x.dtype != torch.float32:
        raise ValueError(f"color_tail_fused takes float32, got {x.dtype}")
    return _launch(x, params, None, mean, std, out_dtype, channels_last, False, True)


def augment_batch_fused(
    x: torch.Tensor,
    params: torch.Tensor,
    spec: ViewSpec,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """``augment_device._augment_batch`` with the per-pixel chain in the fused kernel.

    ``spec.blur_p == 0``: one fused pass. Otherwise head kernel -> torch blur -> tail kernel.
    Masks are estimated on the device when the spec masks and none are given.
    """
    if spec.mask_p > 0:
        masks = saliency_masks_torch(x) if masks is None else masks
    else:
        masks = None
    p = params.to(torch.float32)
    if spec.blur_p == 0:
        return color_jitter_fused(x, p, spec.mean, spec.std, dtype, channels_last, masks)
    y = _blur_t(color_head_fused(x, p, masks), p[:, P_BLUR_SIGMA], spec)
    return color_tail_fused(y, p, spec.mean, spec.std, dtype, channels_last)
