"""Barlow Twins (Zbontar et al., 2021): two views' cross-correlation pushed to the identity.

Projector: ``proj_layers`` linear layers (Linear without bias + BN + ReLU on the hidden ones,
a last Linear without bias), 8192-8192-8192 in the paper. The loss
(``selfsup.losses.barlow_twins``) normalises each embedding dimension over the global batch
and sums the cross-correlation over ranks with an autograd-aware all-reduce. With more than two
views, the loss is averaged over every pair.
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


@register("barlow_twins")
class BarlowTwins(nn.Module):
    recipe = "byol"  # the paper uses BYOL's augmentations
    min_views = 2
    sync_bn = True  # the official code converts every BatchNorm to SyncBatchNorm

    @dataclass
    class Config:
        name: ClassVar[str]
        lambd: float = bounded(0.0051, 0.0)  # weight of the off-diagonal terms
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
        pairs = list(combinations(range(len(z)), 2))
        return sum(losses.barlow_twins(z[a], z[b], self.cfg.lambd) for a, b in pairs) / len(pairs)
