"""DINO, ResNet recipe (Caron et al., 2021): a student matches a momentum teacher across crops.

The teacher's outputs are centred and sharpened before the student's cross-entropy.

Head (student and teacher): a 3-layer MLP (in -> 2048 -> 2048 -> 256, GELU), L2
normalisation, then a weight-normalised last layer ``Linear(256, out_dim, bias=False)`` whose
norm is fixed at 1 (``norm_last_layer``: each output row of the weight is normalised).
``use_bn_in_head`` adds BatchNorm after both hidden layers: DINO's own option, off in its
ResNet recipe, on in the built-in demo (see ``dino_demo.yaml`` for why). The teacher, a copy
of backbone and head updated by EMA with the momentum ramped from ``base_momentum`` to 1 along
a cosine, sees only the two global crops (the recipe's first view size); the student sees
every crop. Loss: ``selfsup.losses.dino`` with the teacher's temperature warmed up linearly
from ``warmup_teacher_temp`` over ``warmup_teacher_temp_epochs``; the centre follows the
all-reduced mean of the teacher's outputs (``selfsup.losses.dino_center``). The last layer
gets no gradient during the first ``freeze_last_layer_epochs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import losses
from selfsup.fields import bounded
from selfsup.trainer.ema import follow_, frozen_copy
from selfsup.trainer.heads import embed_views
from selfsup.trainer.methods import register


class DinoHead(nn.Module):
    """MLP -> L2 normalisation -> weight-normalised linear layer with unit-norm rows."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, bn: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for dim in (in_dim, hidden_dim):  # two hidden layers: Linear (+ BN) + GELU
            layers.append(nn.Linear(dim, hidden_dim))
            if bn:  # DINO's use_bn_in_head
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden_dim, bottleneck_dim))
        # weight_norm with g fixed at 1: the layer's weight is v / |v| per output row
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer.weight, dim=1))


@register("dino")
class DINO(nn.Module):
    recipe = "dino"
    min_views = 3  # two global crops for the teacher and at least one more crop
    sync_bn = True  # DINO converts a ResNet's BatchNorms to SyncBatchNorm

    @dataclass
    class Config:
        name: ClassVar[str]
        out_dim: int = bounded(65536, 1)
        hidden_dim: int = bounded(2048, 1)
        bottleneck_dim: int = bounded(256, 1)
        student_temp: float = bounded(0.1, 1e-4)
        teacher_temp: float = bounded(0.04, 1e-4)
        warmup_teacher_temp: float = bounded(0.04, 1e-4)
        warmup_teacher_temp_epochs: float = bounded(0.0, 0.0)
        center_momentum: float = bounded(0.9, 0.0, 1.0)
        base_momentum: float = bounded(0.996, 0.0, 1.0)
        freeze_last_layer_epochs: float = bounded(1.0, 0.0)
        use_bn_in_head: bool = False

    def __init__(self, cfg: Config, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.head = DinoHead(
            num_features, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.use_bn_in_head
        )
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(cfg.out_dim))
        self._teacher_out: torch.Tensor | None = None

    def teacher_temp(self) -> float:
        c = self.cfg
        warm = c.warmup_teacher_temp_epochs * self.steps_per_epoch
        if self.step >= warm:
            return c.teacher_temp
        return c.warmup_teacher_temp + (c.teacher_temp - c.warmup_teacher_temp) * self.step / warm

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        student = embed_views(self.backbone, self.head, views)  # [Vs, B, K], global crops first
        with torch.no_grad():
            teacher = embed_views(self.teacher_backbone, self.teacher_head, views[:1])
        self._teacher_out = teacher
        c = self.cfg
        return losses.dino(student, teacher, self.center, c.student_temp, self.teacher_temp())

    def after_backward(self) -> None:
        if self.step < self.cfg.freeze_last_layer_epochs * self.steps_per_epoch:
            self.head.last_layer.weight.grad = None

    @torch.no_grad()
    def after_step(self) -> None:
        pairs = [(self.teacher_backbone, self.backbone), (self.teacher_head, self.head)]
        follow_(pairs, self.cfg.base_momentum, self.step, self.total_steps)
        if self._teacher_out is not None:
            self.center.copy_(
                losses.dino_center(self._teacher_out, self.center, self.cfg.center_momentum)
            )
            self._teacher_out = None
