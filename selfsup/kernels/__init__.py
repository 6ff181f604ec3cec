"""Fused kernels, each beside a plain-torch reference with the same signature.

This layer depends on torch (and, for the fused kernels, triton) only; of selfsup it imports
nothing but the leaf modules ``selfsup.errors`` and ``selfsup.distributed``.
"""

from __future__ import annotations

import contextlib
import functools

import torch


def triton_available() -> bool:
    """Whether Triton imports (the fused kernels' ``impl="auto"`` also needs CUDA tensors)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def autocast_off(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context in which a caller's ``torch.autocast`` does not reach the ops inside.

    Every kernel computes in the precision it documents: under autocast, matmuls would run in
    bf16/fp16 in a forward and in float32 in a recomputing backward, and the two would
    disagree (the softmax rebuilt from a bf16 log-sum-exp no longer sums to one).
    """
    device_type = torch.device(device).type
    return torch.autocast(device_type, enabled=False)


def no_autocast(fn):
    """Decorator: run ``fn`` under :func:`autocast_off` for the device of its first tensor
    argument (autograd Functions' ``forward(ctx, ...)`` and ``backward(ctx, ...)`` too)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if t is None:
            return fn(*args, **kwargs)
        with autocast_off(t.device):
            return fn(*args, **kwargs)

    return wrapped
