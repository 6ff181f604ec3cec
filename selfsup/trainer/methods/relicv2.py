"""ReLICv2 (Tomasev et al., 2022): online network against an EMA target, two loss terms.

Contrastive and invariance terms between the online network and the target, over large and
small crops with saliency-masked large crops.

No pretraining code of the authors exists (methods.md A.7); this follows the paper's
pseudo-code. The networks are BYOL's (the ReLICv2 code "relies heavily on the BYOL code"):
online backbone, projector and predictor; a target backbone and projector following them by
EMA with a cosine momentum ramp. The recipe (``relicv2``) gives large crops first, saliency
masking (p 0.1, background replaced) on the large crops only, then small crops. The target
sees the large crops only. The loss (``selfsup.losses.relicv2``) compares every online crop
with every large crop's target: cross-entropy of the sample's own target among the global
batch's, plus ``beta`` times the KL divergence from the large crop's own distribution over the
same targets, normalised by (crops x large crops) as the pseudo-code does. The weights
``alpha``, ``beta`` and the temperature are not given by a primary source; the defaults here
(1, 1, 0.1) are choices, said as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from selfsup import losses
from selfsup.fields import bounded
from selfsup.trainer.heads import embed_views
from selfsup.trainer.methods import register
from selfsup.trainer.methods.byol import BYOL


@register("relicv2")
class ReLICv2(BYOL):
    recipe = "relicv2"

    @dataclass
    class Config(BYOL.Config):
        name: ClassVar[str]
        temperature: float = bounded(0.1, 1e-4)
        alpha: float = bounded(1.0, 0.0)  # weight of the contrastive term
        beta: float = bounded(1.0, 0.0)  # weight of the KL invariance term

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        z = embed_views(self.backbone, self.projector, views)  # [V, B, D], large crops first
        p = self.predictor(z.flatten(0, 1)).reshape(z.shape)
        with torch.no_grad():  # the target sees the large crops (the first view size) only
            t = embed_views(self.target_backbone, self.target_projector, views[:1])
        c = self.cfg
        return losses.relicv2(p, t, c.temperature, c.alpha, c.beta)
