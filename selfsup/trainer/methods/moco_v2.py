"""MoCo v2 (Chen et al., 2020): queries against a momentum key encoder and a queue of keys.

Query encoder: backbone and an MLP head without BatchNorm (2048 -> 2048 -> 128). Key encoder:
a copy of both, updated by EMA (constant momentum 0.999) after every step, with no gradient.
Loss (``selfsup.losses.moco``): InfoNCE of each query against its key and the queue's
``queue_size`` L2-normalised keys, temperature 0.2. After every step the keys of every rank
are gathered and enqueued (the oldest are overwritten), so the queue is the same on every rank
and world-size free in checkpoints.

BatchNorm: global BN (``train.sync_bn``, on by default) instead of the paper's shuffle-BN.
Either stops a query and its positive key from sharing statistics of a small sub-batch that
holds both (which lets the network find the positive from the statistics). Shuffle-BN does it
by normalising keys over a random other GPU's sub-batch, which cannot be done in one process
and gives different numbers for every world size; global BN normalises over the whole global
batch, in one process and in many alike, as MoCo v3 and SimCLR do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed, losses
from selfsup.fields import bounded
from selfsup.trainer.ema import ema_update_, frozen_copy
from selfsup.trainer.heads import embed_views, mlp
from selfsup.trainer.methods import register


@register("moco_v2")
class MoCoV2(nn.Module):
    recipe = "moco_v2"
    min_views = 2
    sync_bn = True  # in place of shuffle-BN (module doc)

    @dataclass
    class Config:
        name: ClassVar[str]
        temperature: float = bounded(0.2, 1e-4)
        momentum: float = bounded(0.999, 0.0, 1.0)
        queue_size: int = bounded(65536, 1)
        proj_hidden_dim: int = bounded(2048, 1)
        proj_dim: int = bounded(128, 1)

    def __init__(self, cfg: Config, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(num_features, cfg.proj_hidden_dim, cfg.proj_dim, 2, hidden_bn=False)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        queue = F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._keys: torch.Tensor | None = None

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        q = embed_views(self.backbone, self.projector, views)  # [V, B, D]
        with torch.no_grad():
            k = embed_views(self.key_backbone, self.key_projector, views)
        # the first view's queries against the second view's keys (MoCo's one direction)
        loss = losses.moco(q[0], k[1], self.queue, self.cfg.temperature)
        self._keys = k[1]
        return loss

    @torch.no_grad()
    def after_step(self) -> None:
        ema_update_(self.key_backbone, self.backbone, self.cfg.momentum)
        ema_update_(self.key_projector, self.projector, self.cfg.momentum)
        if self._keys is not None:
            keys = distributed.gather_no_grad(F.normalize(self._keys.float(), dim=1))
            rows = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
            self.queue.index_copy_(0, rows, keys.to(self.queue.dtype))
            self.queue_ptr.copy_((self.queue_ptr + len(keys)) % len(self.queue))
            self._keys = None
