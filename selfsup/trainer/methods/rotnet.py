"""RotNet (Gidaris, Singh, Komodakis, 2018): predict which of four rotations an image shows.

Every image of the batch is rotated by 0, 90, 180 and 270 degrees on the device (four batched
``rot90`` calls, the four rotations of an image in the same batch, as the paper feeds them),
and a linear classifier on the backbone's features predicts the rotation (cross-entropy). A
pretext baseline: expect far less than the contrastive methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.trainer.methods import register


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[4N, 3, S, S] (x rotated by k * 90 degrees, k-major) and the labels k [4N]."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    if x.is_contiguous(memory_format=torch.channels_last):
        rotated = rotated.contiguous(memory_format=torch.channels_last)
    labels = torch.arange(4, device=x.device).repeat_interleave(len(x))
    return rotated, labels


@register("rotnet")
class RotNet(nn.Module):
    recipe = "supervised"  # random resized crop and flip (VISSL's RotNet transforms)
    min_views = 1
    sync_bn = False

    @dataclass
    class Config:
        name: ClassVar[str]

    def __init__(self, cfg: Config, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.classifier = nn.Linear(num_features, 4)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x, labels = rotations(views[0].flatten(0, 1))
        return F.cross_entropy(self.classifier(self.backbone(x)).float(), labels)
