"""Optimisers and per-iteration schedules: LARS (foreach), parameter groups, cosine schedules.

LARS follows the FB family (Barlow Twins, VICReg, DINO, MoCo v3), whose math equals SimCLR's:
``d = g + wd*w``, ``d *= eta*||w||/||d||``, ``mu = m*mu + d``, ``w -= lr*mu``. Biases and norm
parameters (``ndim <= 1``) get neither weight decay nor adaptation; :func:`param_groups` puts
them in a group flagged ``lars_exclude``. ``param_groups(..., exclude_1d=False)`` adapts every
parameter. LARC (SwAV's optimiser, apex's LARC with ``clip=False``) is the same loop with its
own ratio, ``eta*||w|| / (||g|| + wd*||w||)``, applied to ``g + wd*w``; SwAV adapts every
parameter with it (``exclude_1d: false``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from selfsup.errors import ConfigError


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling, over ``torch._foreach_*`` ops.

    Trust ratios stay on the device (``torch.where``), so a step never synchronises with the
    host. A group with ``lars_exclude=True`` takes plain momentum SGD steps without weight decay.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        larc: bool = False,
    ):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ConfigError(
                f"LARS needs lr, momentum, weight_decay >= 0 and eta > 0, got lr={lr}, "
                f"momentum={momentum}, weight_decay={weight_decay}, eta={eta}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "lars_exclude": False,
            "larc": larc,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError("LARS does not support sparse gradients")
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])

            if group["lars_exclude"]:
                update = grads
            else:
                wd = group["weight_decay"]
                # New tensors: p.grad itself is never modified.
                update = torch._foreach_add(grads, params, alpha=wd) if wd else list(grads)
                p_norm = torch.stack(torch._foreach_norm(params))
                if group["larc"]:  # ||g|| + wd * ||w||
                    d_norm = torch.stack(torch._foreach_norm(grads)) + wd * p_norm
                else:  # ||g + wd * w||
                    d_norm = torch.stack(torch._foreach_norm(update))
                # Zero weights (fresh layers) or zero updates keep the plain step, never NaN.
                ok = (p_norm > 0) & (d_norm > 0)
                trust = torch.where(ok, group["eta"] * p_norm / d_norm.clamp_min(1e-30), 1.0)
                update = torch._foreach_mul(update, list(trust.to(grads[0].dtype).unbind()))

            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, update)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


def param_groups(
    model: nn.Module, weight_decay: float, exclude_1d: bool = True, lr_scale_1d: float = 1.0
) -> list[dict[str, Any]]:
    """Split trainable parameters into ``decay`` (ndim > 1) and ``no_decay`` (biases, norms).

    The ``no_decay`` group has ``weight_decay=0.0``, ``lars_exclude=True`` and ``lr_scale``
    ``lr_scale_1d`` (its learning rate is the schedule's times that: Barlow Twins' own rate for
    biases and norms); with ``exclude_1d=False`` every parameter goes in one ``decay`` group.
    Empty groups are dropped.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not exclude_1d:
        return [{"name": "decay", "params": trainable, "weight_decay": weight_decay}]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {
            "name": "no_decay",
            "params": no_decay,
            "weight_decay": 0.0,
            "lars_exclude": True,
            "lr_scale": lr_scale_1d,
        },  # fmt: skip
    ]
    return [g for g in groups if g["params"]]


OPTIMIZERS = ("lars", "larc", "sgd", "adamw")


def build_optimizer(
    name: str,
    groups: Iterable[Any],
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Build an optimiser by name; a group's own ``weight_decay`` wins over ``weight_decay``."""
    if name in ("lars", "larc"):
        larc = name == "larc"
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, larc=larc)
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True
        )
    if name == "adamw":
        return torch.optim.AdamW(
            groups, lr=lr, betas=betas, weight_decay=weight_decay, foreach=True
        )
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (DINO's weight decay)."""
    progress = min(step / max(total_steps, 1), 1.0)
    return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2


def warmup_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base: float,
    final: float = 0.0,
    start: float = 0.0,
) -> float:
    """Linear warmup ``start -> base`` over ``warmup_steps``, then cosine ``base -> final``.

    Step ``s < warmup_steps`` gives ``start + (base - start) * s / warmup_steps``; the cosine
    reaches ``final`` at ``total_steps`` and stays there. A warmup longer than the run is cut
    short (a short smoke run of a long recipe), not an error.
    """
    if warmup_steps < 0:
        raise ConfigError(f"schedule needs warmup_steps >= 0, got {warmup_steps}")
    if step < warmup_steps:
        return start + (base - start) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_ramp(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA momentum ``tau_k = final - (final - base) * (cos(pi k / K) + 1) / 2`` (BYOL)."""
    if total_steps <= 0:
        raise ConfigError(f"schedule needs total_steps > 0, got {total_steps}")
    k = min(max(step, 0), total_steps)
    return final - (final - base) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


def schedule_array(fn: Callable[..., float], total_steps: int, **kw: Any) -> np.ndarray:
    """``fn(step, total_steps, **kw)`` for every step in ``range(total_steps)`` (float64)."""
    return np.array([fn(s, total_steps, **kw) for s in range(total_steps)], dtype=np.float64)
