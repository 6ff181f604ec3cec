"""An online linear classifier: a probe trained beside pretraining, as BYOL and solo-learn do.

A ``Linear(num_features, num_classes)`` learns the training batches' labels from the
backbone's features of the very forward the method runs, detached: the probe never reaches the
method's parameters, gradients or optimizer, so pretraining gives the same weights with it as
without it. The features come from hooks, not from an extra forward pass: a pre-hook on the
method sees the step's views (``[V, B, 3, S, S]`` per size) and arms a hook on the backbone,
which keeps the backbone's outputs until it holds B rows. Every method passes view 0 of its B
images through its (online) backbone first, flattened view-major, so those B rows are view 0
of the batch's images in order; a method that passes anything else through it first (Jigsaw's
tiles) says so with ``online_features = False``, and the config refuses the option for it.

Under W processes each rank trains the probe on its share of the batch and the probe's
gradients are averaged over the ranks, so every rank keeps the same probe. Its accuracy is
counted on the device and read only when the loop logs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed


class OnlineLinear:
    """The probe, its SGD optimizer and its running top-1 on the training batches.

    ``method`` is the unwrapped method (``method.backbone`` is hooked); the classifier is
    initialised like ``nn.Linear`` but from its own generator seeded with ``seed``, so the
    global torch RNG stream (and so the run) is untouched.
    """

    def __init__(
        self,
        method: nn.Module,
        num_classes: int,
        *,
        lr: float,
        seed: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        backbone = method.backbone
        self.classifier = _linear(backbone.num_features, num_classes, seed).to(device, dtype)
        self.optimizer = torch.optim.SGD(self.classifier.parameters(), lr=lr, momentum=0.9)
        self.dtype = dtype
        self.correct = torch.zeros((), dtype=torch.int64, device=device)  # since the last log
        self.seen = 0  # this rank's samples counted in ``correct``
        self._want = 0  # rows to keep from the backbone's outputs in this step
        self._kept: list[torch.Tensor] = []
        self._hooks = [
            method.register_forward_pre_hook(self._arm),
            backbone.register_forward_hook(self._keep),
        ]

    def _arm(self, module, args) -> None:
        views = args[0]
        self._want, self._kept = views[0].shape[1], []

    def _keep(self, module, args, output) -> None:
        if self._want > sum(len(f) for f in self._kept):
            self._kept.append(output.detach())  # stop-gradient: the probe never reaches the method

    def update(self, labels: torch.Tensor) -> None:
        """One SGD step of the probe on the features of the step that just ran."""
        n = self._want
        if n == 0 or sum(len(f) for f in self._kept) < n:
            raise RuntimeError("the online classifier saw no backbone features in this step")
        x = torch.cat(self._kept)[:n].to(self.dtype)
        self._want, self._kept = 0, []
        logits = self.classifier(x)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.classifier.parameters())
        if distributed.world_size() > 1:  # one all-reduce: every rank keeps the same probe
            flat = distributed.all_reduce_(torch.cat([p.grad.flatten() for p in params]), "mean")
            for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
                p.grad.copy_(g.view_as(p))
        self.optimizer.step()
        with torch.no_grad():
            self.correct += (logits.argmax(1) == labels).sum()
        self.seen += n

    def train_top1(self) -> float:
        """Top-1 (percent) over every rank's batches since the last call, then reset; a
        collective, and a host sync: call it on logging steps only."""
        counts = torch.stack([self.correct.double(), self.correct.new_tensor(self.seen).double()])
        correct, seen = distributed.all_reduce_(counts, "sum").tolist()
        self.correct.zero_()
        self.seen = 0
        return 100.0 * correct / max(seen, 1)

    @torch.no_grad()
    def top1(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 (percent) on given (unnormalised) features, e.g. the held-out split's."""
        correct = 0
        for start in range(0, len(features), 4096):
            x = features[start : start + 4096].to(self.correct.device, self.dtype)
            y = labels[start : start + 4096].to(self.correct.device)
            correct += int((self.classifier(x).argmax(1) == y).sum())
        return 100.0 * correct / max(len(features), 1)

    def state_dict(self) -> dict:
        return {
            "classifier": self.classifier.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "correct": self.correct.clone(),
            "seen": self.seen,
        }

    def load_state_dict(self, state: dict) -> None:
        self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.correct.copy_(state["correct"])
        self.seen = int(state["seen"])

    def close(self) -> None:
        """Remove the hooks (the method trains on as if the probe never was)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _linear(in_features: int, out_features: int, seed: int) -> nn.Linear:
    """``nn.Linear``'s own initialisation (uniform in +-1/sqrt(in) for weight and bias), drawn
    from a generator seeded with ``seed`` instead of the global one."""
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features)
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(in_features)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.uniform_(-bound, bound, generator=gen)
    return layer
