"""Momentum (EMA) targets: BYOL's and DINO's teacher, MoCo's key encoder, ReLICv2's target.

The target is a copy of some online modules whose parameters get no gradient and follow
``target <- m * target + (1 - m) * online`` after every optimizer step, in one foreach op per
module (no per-parameter Python loop, no host synchronisation). Buffers (BatchNorm's running
statistics) are copied as they are. The momentum usually ramps from its base value to 1 along
a cosine over the run (BYOL, MoCo v3, DINO).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """``1 - (1 - base) * (cos(pi * step / total) + 1) / 2``: ``base`` at step 0, 1 at the end."""
    progress = min(step / max(total_steps, 1), 1.0)
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters need no gradient (the target's initial weights)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for every parameter; buffers
    copied. The two modules must have the same structure."""
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError("target and online modules differ in structure")
    torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


@torch.no_grad()
def follow_(
    pairs: list[tuple[nn.Module, nn.Module]], base: float, step: int, total_steps: int
) -> None:
    """:func:`ema_update_` of each (target, online) pair at the cosine-ramped momentum of
    ``step`` (BYOL's and ReLICv2's target, MoCo v3's key encoder, DINO's teacher)."""
    m = cosine_momentum(base, step, total_steps)
    for target, online in pairs:
        ema_update_(target, online, m)
