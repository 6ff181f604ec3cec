"""SwAV (Caron et al., 2020): swapped prediction of Sinkhorn codes of the large crops.

Backbone, projector (Linear + BN + ReLU, then Linear: 2048 -> 2048 -> 128), L2 normalisation,
and ``num_prototypes`` prototypes (a Linear without bias) whose rows are L2-normalised before
every step. The codes of the first two crops (the large ones of the multi-crop recipe) come
from ``selfsup.kernels.sinkhorn`` without gradient; across ranks its sums are all-reduced, so
the equipartition is over the global batch. The loss (``selfsup.losses.swav``) predicts each
large crop's codes from every other crop. For the first ``freeze_prototypes_iters`` steps
the prototypes get no gradient (their gradient is dropped before the optimizer, as the
official code does). No queue yet: the recipe is the large-batch one (queue length 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import losses
from selfsup.fields import bounded
from selfsup.kernels.sinkhorn import sinkhorn
from selfsup.trainer.heads import embed_views, mlp
from selfsup.trainer.methods import register


@register("swav")
class SwAV(nn.Module):
    recipe = "swav"
    min_views = 2
    sync_bn = True
    assignment_crops = 2  # the two large crops

    @dataclass
    class Config:
        name: ClassVar[str]
        temperature: float = bounded(0.1, 1e-4)
        epsilon: float = bounded(0.05, 1e-6)
        sinkhorn_iterations: int = bounded(3, 1)
        num_prototypes: int = bounded(3000, 1)
        freeze_prototypes_iters: int = bounded(313, 0)  # 1 epoch at batch 4096
        proj_hidden_dim: int = bounded(2048, 1)
        proj_dim: int = bounded(128, 1)

    def __init__(self, cfg: Config, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(num_features, cfg.proj_hidden_dim, cfg.proj_dim, 2)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.num_prototypes, bias=False)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():  # prototypes on the unit sphere before every step
            w = self.prototypes.weight
            w.copy_(F.normalize(w, dim=1))
        z = F.normalize(embed_views(self.backbone, self.projector, views), dim=-1)  # [V, B, D]
        scores = self.prototypes(z)  # [V, B, K]
        a = min(self.assignment_crops, len(scores) - 1)
        with torch.no_grad():
            codes = torch.stack(
                [
                    sinkhorn(scores[s].detach(), self.cfg.epsilon, self.cfg.sinkhorn_iterations)
                    for s in range(a)
                ]
            )
        return losses.swav(scores, codes, self.cfg.temperature)

    def after_backward(self) -> None:
        if self.step < self.cfg.freeze_prototypes_iters:
            self.prototypes.weight.grad = None
