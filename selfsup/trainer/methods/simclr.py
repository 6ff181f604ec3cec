"""SimCLR (Chen et al., 2020): NT-Xent between projections of two views of each image.

Projection head: ``proj_layers`` linear layers with BN on every layer and no bias or ReLU
on the last (SimCLR's code; v1 used 2 layers, v2 3 layers). ``proj_hidden_dim: 0`` uses
the backbone's feature width, as SimCLR does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from selfsup import losses
from selfsup.fields import bounded
from selfsup.trainer.heads import embed_views, mlp
from selfsup.trainer.methods import register


@register("simclr")
class SimCLR(nn.Module):
    recipe = "simclr"
    min_views = 2  # positives need a second view
    sync_bn = True  # SimCLR normalises over the global batch (its TF code's global_bn)

    @dataclass
    class Config:
        name: ClassVar[str]
        temperature: float = bounded(0.1, 1e-4)
        proj_layers: int = bounded(2, 1)
        proj_hidden_dim: int = bounded(0, 0)  # 0: the backbone's feature width
        proj_dim: int = bounded(128, 1)

    def __init__(self, cfg: Config, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        hidden = cfg.proj_hidden_dim or num_features
        self.projector = mlp(num_features, hidden, cfg.proj_dim, cfg.proj_layers, last_bn=True)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        # One backbone pass per view size (multi-crop recipes), features concatenated
        # view-major; every view of a sample is a positive of every other.
        # [V, B, D]; the loss computes in float32 at least
        z = embed_views(self.backbone, self.projector, views)
        # global negatives: this rank's anchors against every rank's projections
        return losses.nt_xent(z, self.cfg.temperature)
