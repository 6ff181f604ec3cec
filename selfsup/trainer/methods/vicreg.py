"""VICReg (Bardes, Ponce, LeCun, 2022): variance, invariance and covariance of two views.

Expander: ``proj_layers`` linear layers (Linear + BN + ReLU on the hidden ones, a last Linear
without bias), 8192-8192-8192 in the paper. The loss (``selfsup.losses.vicreg``) takes the
invariance term on this rank's rows and the variance and covariance terms on the embeddings
gathered from every rank with gradients, as the official code does. With more than two views,
the loss is averaged over every pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import ClassVar

import torch
from torch import nn

from selfsup import losses
from selfsup.fields import bounded
from selfsup.trainer.heads import embed_views, mlp
from selfsup.trainer.methods import register


@register("vicreg")
class VICReg(nn.Module):
    recipe = "byol"  # the official code uses BYOL's augmentations
    min_views = 2
    sync_bn = True  # the official code converts every BatchNorm to SyncBatchNorm

    @dataclass
    class Config:
        name: ClassVar[str]
        sim_coeff: float = bounded(25.0, 0.0)
        std_coeff: float = bounded(25.0, 0.0)
        cov_coeff: float = bounded(1.0, 0.0)
        proj_layers: int = bounded(3, 1)
        proj_hidden_dim: int = bounded(8192, 1)
        proj_dim: int = bounded(8192, 1)

    def __init__(self, cfg: Config, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(
            num_features, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers, last_bias=False
        )

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z = embed_views(self.backbone, self.projector, views)
        c = self.cfg
        pairs = list(combinations(range(len(z)), 2))
        total = sum(
            losses.vicreg(z[a], z[b], c.sim_coeff, c.std_coeff, c.cov_coeff) for a, b in pairs
        )
        return total / len(pairs)
