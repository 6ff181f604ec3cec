"""A classifier network: backbone, optional head layers, and a linear ``fc``.

What fine-tuning trains and distillation teaches: ``backbone -> head -> fc``. The head is
empty (plain ResNet + ``fc``, torchvision's layout) unless the network is fine-tuned from
inside a projection head, as SimCLRv2 does from its first layer. ``fc`` starts at zero, as
SimCLR's fine-tuning and linear evaluation do (``zero_init_logits_layer``): the first steps
then train the classifier alone on the backbone's features.
"""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None,
        num_classes: int,
        zero_init: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Sequential()
        width = backbone.num_features
        for m in self.head.modules():
            if isinstance(m, nn.Linear):
                width = m.out_features
        # dropout before fc: a self-trained student's noise (Noisy Student); no parameters
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(width, num_classes)
        if zero_init:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    @property
    def head_layers(self) -> int:
        return sum(isinstance(m, nn.Linear) for m in self.head.modules())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What ``fc`` reads: the backbone's pooled features through the head layers."""
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))
