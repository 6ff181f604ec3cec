"""Fused kernels, each beside a plain-torch reference with the same signature.

This layer depends on torch (and, for the fused kernels, triton) only; of selfsup it imports
nothing but the leaf modules ``selfsup.errors`` and ``selfsup.distributed``.
"""

from __future__ import annotations

import contextlib
import functools
import os

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


def launch_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """The context every Triton launch runs in: the CUDA device of its tensors.

    Triton launches on the *current* device's stream; a batch on ``cuda:1`` while ``cuda:0``
    is current would otherwise run on the wrong device (an illegal address or a silent copy).
    CPU tensors run only in Triton's interpreter (``TRITON_INTERPRET=1``); compiled kernels
    cannot read them, so they are refused here with a ValueError that says so.
    """
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    if not triton_interpreting():
        raise ValueError(
            f"a Triton kernel got a {t.device.type} tensor: compiled kernels need CUDA tensors "
            "(impl='auto' picks plain torch for CPU tensors; TRITON_INTERPRET=1, set before "
            "triton is imported, runs the kernels in Triton's interpreter on the CPU)"
        )
    return contextlib.nullcontext()


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``).

    ``triton.knobs`` (Triton 3.4 and newer) holds the setting as Triton read it; older
    releases read the environment variable, so that is the answer there.
    """
    import triton

    knobs = getattr(triton, "knobs", None)
    runtime = getattr(knobs, "runtime", None)
    if runtime is not None and hasattr(runtime, "interpret"):
        return bool(runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
