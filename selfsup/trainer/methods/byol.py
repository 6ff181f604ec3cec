"""BYOL (Grill et al., 2020): an online network predicts a momentum target's projection.

Online: backbone, projector (Linear + BN + ReLU, then Linear: 4096 -> 256 in the paper) and
predictor (the same shape from 256). Target: a copy of the backbone and projector whose weights
follow the online ones by EMA after every step, the momentum ramped from ``base_momentum`` to
1 along a cosine (``selfsup.trainer.ema``); it gets no gradient. The loss
(``selfsup.losses.byol``, ``2 - 2 cos``) is symmetrised: each view's prediction regresses the
other view's target projection. With more than two views, every ordered pair is used and the
sum is scaled to two terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import ClassVar

import torch
from torch import nn

from selfsup import losses
from selfsup.fields import bounded
from selfsup.trainer.ema import follow_, frozen_copy
from selfsup.trainer.heads import embed_views, mlp
from selfsup.trainer.methods import register


@register("byol")
class BYOL(nn.Module):
    recipe = "byol"
    min_views = 2
    sync_bn = True  # cross-replica BatchNorm in the official code

    @dataclass
    class Config:
        name: ClassVar[str]
        base_momentum: float = bounded(0.996, 0.0, 1.0)  # the 1000-epoch preset
        proj_hidden_dim: int = bounded(4096, 1)
        proj_dim: int = bounded(256, 1)
        pred_hidden_dim: int = bounded(4096, 1)

    def __init__(self, cfg: Config, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(num_features, cfg.proj_hidden_dim, cfg.proj_dim, 2)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, 2)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z = embed_views(self.backbone, self.projector, views)  # [V, B, D]
        p = self.predictor(z.flatten(0, 1)).reshape(z.shape)
        with torch.no_grad():
            t = embed_views(self.target_backbone, self.target_projector, views)
        pairs = list(permutations(range(len(z)), 2))
        total = sum(losses.byol(p[a], t[b]) for a, b in pairs)
        return total * (2 / len(pairs))

    @torch.no_grad()
    def after_step(self) -> None:
        pairs = [(self.target_backbone, self.backbone), (self.target_projector, self.projector)]
        follow_(pairs, self.cfg.base_momentum, self.step, self.total_steps)
