"""MoCo v2 (Chen et al., 2020): queries against a momentum key encoder and a queue of keys.

Query encoder: backbone and an MLP head without BatchNorm (2048 -> 2048 -> 128). Key encoder:
a copy of both, updated by EMA (constant momentum 0.999) after every step, with no gradient.
Loss (``selfsup.losses.moco``): InfoNCE of each query against its key and the queue's
``queue_size`` L2-normalised keys, temperature 0.2. After every step the keys of every rank
are gathered and enqueued (the oldest are overwritten), so the queue is the same on every rank
and world-size free in checkpoints.

BatchNorm: shuffle-BN, as in the paper. The query encoder normalises over ``bn_groups``
contiguous sub-batches of the global batch, the key encoder over ``bn_groups`` *interleaved*
ones (sample i in key group i mod G), so a query and its positive key never share their
BatchNorm statistics beyond B/G^2 samples of a batch. Without it the network can read the
positive off the statistics: the positive key is the only candidate normalised with the
query's own batch (the queue's keys came from earlier batches), and the loss falls without the
features learning anything. Global BN does not stop this: it too normalises a query and its key
over the same batch. ``bn_groups=1`` gives that global BN (with ``train.sync_bn`` across
processes), for comparison.

The groups are defined on the global batch, so the maths does not depend on the number of
processes: each of W processes holds G/W query groups (its contiguous slice of the batch), and
the key images are gathered from every rank, each rank encodes G/W key groups and the keys are
gathered back (the paper's shuffle across GPUs; G must be a multiple of W). ``train.sync_bn``
must stay off with G > 1 (the default here): it would merge the groups across processes.

``proj_last_bn`` (off, as in the paper) adds BatchNorm after the head's last layer, as MoCo
v3's and SimCLR's heads have. The built-in demo needs it: without it the embeddings of
different images start nearly parallel (the pooled features share a large common part) and the
loss climbed to log(1 + queue size) instead of learning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed, losses
from selfsup.errors import ConfigError
from selfsup.fields import bounded
from selfsup.trainer.ema import ema_update_, frozen_copy
from selfsup.trainer.heads import mlp
from selfsup.trainer.methods import register


@register("moco_v2")
class MoCoV2(nn.Module):
    recipe = "moco_v2"
    min_views = 2
    sync_bn = False  # shuffle-BN instead (module doc)

    @dataclass
    class Config:
        name: ClassVar[str]
        temperature: float = bounded(0.2, 1e-4)
        momentum: float = bounded(0.999, 0.0, 1.0)
        queue_size: int = bounded(65536, 1)
        proj_hidden_dim: int = bounded(2048, 1)
        proj_dim: int = bounded(128, 1)
        # BatchNorm after the head's last layer (as MoCo v3's and SimCLR's heads): off in MoCo
        # v2, whose head has no BatchNorm
        proj_last_bn: bool = False
        bn_groups: int = bounded(8, 1)  # shuffle-BN sub-batches of the global batch (8 GPUs)

    @classmethod
    def check_config(cls, cfg, where: str) -> None:
        """Shuffle-BN needs whole groups and per-process BatchNorm (module doc)."""
        groups = cfg.method.bn_groups
        if cfg.train.batch_size % groups:
            raise ConfigError(
                f"{where}: train.batch_size {cfg.train.batch_size} is not a multiple of "
                f"method.bn_groups {groups} (moco_v2's shuffle-BN sub-batches)"
            )
        if groups > 1 and cfg.train.sync_bn:
            raise ConfigError(
                f"{where}: moco_v2 normalises over method.bn_groups={groups} shuffled "
                "sub-batches (shuffle-BN); train.sync_bn=true would merge them across "
                "processes: set train.sync_bn=false, or method.bn_groups=1 for global BN"
            )

    def __init__(self, cfg: Config, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(
            num_features,
            cfg.proj_hidden_dim,
            cfg.proj_dim,
            hidden_bn=False,
            last_bn=cfg.proj_last_bn,
        )
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        queue = F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._keys: torch.Tensor | None = None

    def prepare(self, global_batch: int) -> None:
        """Called by the trainer: shuffle-BN's groups must split evenly over the processes."""
        world = distributed.world_size()
        if self.cfg.bn_groups > 1 and self.cfg.bn_groups % world:
            raise ConfigError(
                f"moco_v2: method.bn_groups {self.cfg.bn_groups} does not split over the "
                f"{world} processes; make it a multiple of {world} (shuffle-BN gives each "
                "process the same number of groups), or 1 for global BN"
            )

    def _groups_per_rank(self) -> int:
        """Shuffle-BN groups each process encodes (prepare() checked they split evenly); with
        one group, each process encodes its whole slice (BatchNorm over it, or over the global
        batch under ``train.sync_bn``)."""
        return max(self.cfg.bn_groups // distributed.world_size(), 1)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        """[b, D]: this rank's queries, BatchNorm over its contiguous groups."""
        chunks = x.chunk(self._groups_per_rank())
        return torch.cat([self.projector(self.backbone(c)) for c in chunks])

    @torch.no_grad()
    def _shuffled_keys(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D]: the keys of the whole global batch in its order, each computed with
        BatchNorm over its interleaved key group (sample i in group i mod G, G > 1)."""
        groups, rank = self.cfg.bn_groups, distributed.rank()
        if groups == 1:  # no shuffle: every rank its own slice, then all keys gathered
            return distributed.gather_no_grad(self.key_projector(self.key_backbone(x)))
        images = distributed.gather_no_grad(x)
        n = images.shape[0]
        if n % groups:
            raise ValueError(f"moco_v2: a global batch of {n} does not split into {groups} groups")
        per = self._groups_per_rank()
        mine = range(rank * per, (rank + 1) * per)
        rows = [torch.arange(g, n, groups, device=x.device) for g in mine]
        keys = [self.key_projector(self.key_backbone(images[r])) for r in rows]
        keys = distributed.gather_no_grad(torch.cat(keys))  # group by group, over all ranks
        order = torch.cat([torch.arange(g, n, groups, device=x.device) for g in range(groups)])
        return torch.empty_like(keys).index_copy_(0, order, keys)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        # the first view's queries against the second view's keys (MoCo's one direction)
        xq, xk = views[0][0], views[0][1]
        q = self._queries(xq)
        keys = self._shuffled_keys(xk)
        b, r = xq.shape[0], distributed.rank()
        loss = losses.moco(q, keys[r * b : (r + 1) * b], self.queue, self.cfg.temperature)
        self._keys = keys
        return loss

    @torch.no_grad()
    def after_step(self) -> None:
        ema_update_(self.key_backbone, self.backbone, self.cfg.momentum)
        ema_update_(self.key_projector, self.projector, self.cfg.momentum)
        if self._keys is not None:  # already the whole global batch's keys
            keys = F.normalize(self._keys.float(), dim=1)
            rows = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
            self.queue.index_copy_(0, rows, keys.to(self.queue.dtype))
            self.queue_ptr.copy_((self.queue_ptr + len(keys)) % len(self.queue))
            self._keys = None
