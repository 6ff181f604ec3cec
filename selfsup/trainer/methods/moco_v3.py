"""MoCo v3, ResNet recipe (Chen, Xie, He, 2021): in-batch InfoNCE against a momentum encoder.

Online: backbone, projector (Linear + BN + ReLU, then Linear and a BatchNorm without affine:
2048 -> 4096 -> 256) and predictor (256 -> 4096 -> 256, no last BN). Momentum encoder: a copy
of the backbone and projector, updated by EMA after every step with the momentum ramped from
``base_momentum`` to 1 along a cosine. Loss: ``moco_v3(q1, k2) + moco_v3(q2, k1)``
(``selfsup.losses.moco_v3``): each rank's queries against the keys of every rank (gathered,
no gradient), cross-entropy scaled by 2 * temperature. No queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from selfsup import losses
from selfsup.fields import bounded
from selfsup.trainer.ema import follow_, frozen_copy
from selfsup.trainer.heads import embed_views, mlp
from selfsup.trainer.methods import register


@register("moco_v3")
class MoCoV3(nn.Module):
    recipe = "moco_v3"
    min_views = 2
    sync_bn = True  # convert_sync_batchnorm in the official code

    @dataclass
    class Config:
        name: ClassVar[str]
        temperature: float = bounded(1.0, 1e-4)  # 1.0 for ResNets, 0.2 for ViTs
        base_momentum: float = bounded(0.99, 0.0, 1.0)  # the 100- and 300-epoch recipes
        proj_hidden_dim: int = bounded(4096, 1)
        proj_dim: int = bounded(256, 1)
        pred_hidden_dim: int = bounded(4096, 1)

    def __init__(self, cfg: Config, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(
            num_features, cfg.proj_hidden_dim, cfg.proj_dim, 2, last_bn=True, last_bn_affine=False
        )
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, 2)
        self.momentum_backbone = frozen_copy(backbone)
        self.momentum_projector = frozen_copy(self.projector)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z = embed_views(self.backbone, self.projector, views)  # [V, B, D]
        q = self.predictor(z.flatten(0, 1)).reshape(z.shape)
        with torch.no_grad():
            k = embed_views(self.momentum_backbone, self.momentum_projector, views)
        t = self.cfg.temperature
        return losses.moco_v3(q[0], k[1], t) + losses.moco_v3(q[1], k[0], t)

    @torch.no_grad()
    def after_step(self) -> None:
        pairs = [(self.momentum_backbone, self.backbone), (self.momentum_projector, self.projector)]
        follow_(pairs, self.cfg.base_momentum, self.step, self.total_steps)
