"""The device path of the augmentation chain: a batch of uint8 crops, augmented on its device.

:func:`augment_batch` runs the chain of ``augment.py`` (same semantics, documented in
``selfsup/kernels/color.py``) on a whole batch ``[B, 3, S, S]`` on its device, with every
choice per sample taken from the parameter rows and no host synchronisation. The pipeline
uses it on CUDA devices. The per-pixel work is the kernels layer's: the fused Triton colour
kernel on CUDA when Triton is installed, its plain-torch reference elsewhere; this module
decides which stages a ViewSpec needs, estimates saliency masks, and places the blur.
"""

from __future__ import annotations

import torch

from selfsup.kernels import autocast_off, triton_available
from selfsup.kernels import color as color_torch
from selfsup.kernels.blur import blur_torch, gaussian_taps
from selfsup.kernels.layout import P_BLUR_SIGMA
from selfsup.pipeline.saliency import saliency_masks_torch
from selfsup.pipeline.views import ViewSpec, blur_radius


def blur_taps(sigma: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """Per-sample Gaussians [B, 2R + 1] (R = ``spec.blur_radius_max``) for sigmas [B] on the
    device: each sample's own radius by the spec's rule, zero-padded to R; sigma 0 is a
    delta. The same taps as the CPU path's, built without leaving the device."""
    s = sigma.to(torch.float64)
    if spec.blur_kernel == "relative":
        radius = torch.full_like(s, float(blur_radius(spec, 1.0)))
    else:  # radius_for_sigma, on the device
        radius = torch.ceil(3.0 * s).clamp(min=1.0)
    return gaussian_taps(s, radius, spec.blur_radius_max).to(torch.float32)


def _use_fused(x: torch.Tensor) -> bool:
    """The fused Triton kernels for CUDA tensors when Triton imports (imported lazily, so the
    CPU path never imports Triton)."""
    return x.device.type == "cuda" and triton_available()


def augment_batch(
    x: torch.Tensor,
    params: torch.Tensor,
    spec: ViewSpec,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    masks: torch.Tensor | None = None,
    *,
    fused: bool | None = None,
) -> torch.Tensor:
    """Augment a batch of cropped views on its device: uint8 [B, 3, S, S] -> normalised.

    ``params`` holds one row per sample (float32 [B, NPARAM]). Every choice is per sample;
    a stage whose probability in ``spec`` is 0 is skipped outright (rows drawn from ``spec``
    never turn it on), so a view without colour ops (the evaluation crop) only normalises.
    The result is cast to ``dtype`` and, with ``channels_last``, laid out NHWC. The blur
    kernel has ``spec.blur_radius_max`` taps each side for every sample (a smaller radius is
    zero-padded), so the view must be larger than that.

    ``masks`` (uint8 [B, S, S] or [B, 1, S, S], 255 = foreground, same device) are the
    views' foreground masks for saliency masking, used where a row's ``P_MASK`` is on; None
    estimates them from ``x`` on the device (``saliency.saliency_masks_torch``). Both are
    skipped when ``spec.mask_p`` is 0.

    Runs with autocast off, so a caller's autocast region cannot push the chain (its FFTs
    and convolutions) into half precision. ``fused``: None picks the Triton kernels for CUDA
    tensors when Triton imports; True or False forces the choice.
    """
    if fused is None:
        fused = _use_fused(x)
    if fused:
        from selfsup.kernels import color_triton as impl

        head, tail, whole = impl.color_head_fused, impl.color_tail_fused, impl.color_jitter_fused
    else:
        c = color_torch
        head, tail, whole = c.color_head_torch, c.color_tail_torch, c.color_jitter_torch
    with autocast_off(x.device):
        p = params.to(device=x.device, dtype=torch.float32)
        if spec.mask_p > 0:
            # Before the colour chain, as ReLICv2 masks the image before crop and augmentation.
            masks = saliency_masks_torch(x) if masks is None else masks
        else:
            masks = None
        stages = {"jitter": spec.jitter_p > 0, "gray": spec.grayscale_p > 0}
        solarize = spec.solarize_p > 0
        finish = (spec.mean, spec.std, dtype, channels_last)
        if not spec.colour_stages:
            return tail(x, p, *finish, solarize=solarize)
        if spec.blur_p == 0:
            return whole(x, p, *finish, masks, **stages, solarize=solarize)
        y = blur_torch(head(x, p, masks, **stages), blur_taps(p[:, P_BLUR_SIGMA], spec))
        return tail(y, p, *finish, solarize=solarize)
