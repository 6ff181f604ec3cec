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

from selfsup import distributed, losses
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
        queue_length: int = bounded(0, 0)  # 0: no queue; rounded down to the global batch
        epoch_queue_starts: float = bounded(15.0, 0.0)  # pushing starts at this epoch

    def __init__(self, cfg: Config, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(num_features, cfg.proj_hidden_dim, cfg.proj_dim, 2)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.num_prototypes, bias=False)
        self.global_batch = 0
        self.register_buffer("queue", None)  # made by prepare() when queue_length > 0

    def prepare(self, global_batch: int) -> None:
        """Called by the trainer with the run's global batch, before weights are loaded."""
        self.global_batch = global_batch
        length = self.cfg.queue_length - self.cfg.queue_length % global_batch
        if length:
            shape = (self.assignment_crops, length, self.cfg.proj_dim)
            self.register_buffer("queue", torch.zeros(shape))

    def _queue_steps(self) -> tuple[int, int]:
        """(first step that pushes, first step that uses the full queue)."""
        start = round(self.cfg.epoch_queue_starts * self.steps_per_epoch)
        return start, start + self.queue.shape[1] // self.global_batch

    def _queue_scores(self) -> torch.Tensor | None:
        """[A, L/W, K]: this rank's share of the queue scored by the current prototypes, or
        None while there is no full queue."""
        if self.queue is None or self.step < self._queue_steps()[1]:
            return None
        share = self.queue.shape[1] // distributed.world_size()
        rows = self.queue[:, distributed.rank() * share : (distributed.rank() + 1) * share]
        return self.prototypes(rows)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():  # prototypes on the unit sphere before every step
            w = self.prototypes.weight
            w.copy_(F.normalize(w, dim=1))
        z = F.normalize(embed_views(self.backbone, self.projector, views), dim=-1)  # [V, B, D]
        scores = self.prototypes(z)  # [V, B, K]
        a = self.assignment_crops  # min_views = 2: the two large crops
        with torch.no_grad():
            queued = self._queue_scores()
            codes = torch.stack(
                [
                    sinkhorn(
                        scores[s].detach(),
                        self.cfg.epsilon,
                        self.cfg.sinkhorn_iterations,
                        None if queued is None else queued[s],
                    )
                    for s in range(a)
                ]
            )
            if self.queue is not None and self.step >= self._queue_steps()[0]:
                new = distributed.gather_no_grad(z[:a].detach(), dim=1).to(self.queue.dtype)
                self.queue.copy_(torch.cat([new, self.queue[:, : -new.shape[1]]], dim=1))
        return losses.swav(scores, codes, self.cfg.temperature)

    def after_backward(self) -> None:
        if self.step < self.cfg.freeze_prototypes_iters:
            self.prototypes.weight.grad = None
