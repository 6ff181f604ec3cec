"""SimCLRv2 (Chen et al., 2020): SimCLR with a deeper projection head kept for fine-tuning.

The projection head has three layers (``proj_layers``: hidden width = the backbone's, BN on
every layer, no bias or ReLU on the last), and the loss is SimCLR's NT-Xent across ranks. The
v2 recipe fine-tunes on few labels from the head's first layer, not from the backbone's output:
``head_blocks(k)`` gives the first k layers (Linear + BN + ReLU each) for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from selfsup.fields import bounded
from selfsup.trainer.methods import register
from selfsup.trainer.methods.simclr import SimCLR


@register("simclrv2")
class SimCLRv2(SimCLR):
    @dataclass
    class Config:
        name: ClassVar[str]
        temperature: float = bounded(0.1, 1e-4)
        proj_layers: int = bounded(3, 1)
        proj_hidden_dim: int = bounded(0, 0)  # 0: the backbone's feature width
        proj_dim: int = bounded(128, 1)

    def head_blocks(self, k: int) -> nn.Sequential:
        """The projection head's first ``k`` layers, each Linear + BN + ReLU (the same modules,
        so their trained weights): what SimCLRv2 fine-tunes on top of the backbone."""
        if not 0 <= k < self.cfg.proj_layers:
            hidden = self.cfg.proj_layers - 1
            raise ValueError(f"the head has {hidden} hidden layers, asked for {k}")
        return nn.Sequential(*list(self.projector)[: 3 * k])
