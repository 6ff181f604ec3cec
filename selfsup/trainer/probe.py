"""Linear classifiers on fixed features, many at once: the fast linear probe's sweep.

:func:`fit_linear` trains G multinomial logistic-regression classifiers together, one per
(learning rate, weight decay) pair, with mini-batch SGD (Nesterov momentum, cosine schedule)
over the same shuffled batches: one ``[B, D] x [D, G*C]`` product per step serves them all, so
a sweep of 20 settings costs little more than one. The features are standardised first
(per-dimension mean and standard deviation of the training features), which makes one range
of learning rates fit every backbone; the returned classifiers take raw features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LinearFit:
    """G classifiers ``x -> (x - mean) / std @ weight[g] + bias[g]``."""

    weight: torch.Tensor  # [G, D, C]
    bias: torch.Tensor  # [G, C]
    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]

    def scores(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """[G, N, C] class scores of raw features ``x`` [N, D]."""
        g, d, c = self.weight.shape
        w = self.weight.permute(1, 0, 2).reshape(d, g * c)
        out = []
        for start in range(0, len(x), chunk):
            z = (x[start : start + chunk].to(w) - self.mean) / self.std
            out.append((z @ w).reshape(len(z), g, c))
        return torch.cat(out).permute(1, 0, 2).add_(self.bias[:, None])

    def select(self, g: int) -> LinearFit:
        return LinearFit(self.weight[g : g + 1], self.bias[g : g + 1], self.mean, self.std)


def fit_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lrs: tuple[float, ...],
    weight_decays: tuple[float, ...] = (0.0,),
    *,
    epochs: int = 30,
    batch_size: int = 256,
    momentum: float = 0.9,
    seed: int = 0,
) -> LinearFit:
    """Train ``len(lrs) * len(weight_decays)`` classifiers on features ``x`` [N, D] and labels
    ``y`` [N]; classifier ``i * len(weight_decays) + j`` has ``lrs[i]``, ``weight_decays[j]``.

    Cross-entropy, zero-initialised weights, Nesterov SGD with a cosine learning rate over
    ``epochs``; the weight decay applies to the weights, not the biases. Batches come from a
    permutation drawn from a generator seeded with ``seed``: the same inputs give the same
    classifiers, and every classifier sees the same batches.
    """
    x = x.float()
    dev = x.device
    n, d = x.shape
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6) if n > 1 else torch.ones(d, device=dev)
    z_all = (x - mean) / std
    y = y.to(dev)
    lr = torch.tensor([a for a in lrs for _ in weight_decays], device=dev)
    wd = torch.tensor([b for _ in lrs for b in weight_decays], device=dev)
    g, c = len(lr), num_classes
    weight = torch.zeros(g, d, c, device=dev, requires_grad=True)
    bias = torch.zeros(g, c, device=dev, requires_grad=True)
    buf_w, buf_b = torch.zeros_like(weight), torch.zeros_like(bias)
    gen = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            z, t = z_all[idx], y[idx]
            logits = (z @ weight.permute(1, 0, 2).reshape(d, g * c)).reshape(len(z), g, c)
            logits = logits + bias
            # the sum over classifiers of each one's mean loss: independent gradients
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, c), t.repeat_interleave(g), reduction="sum"
            ) / len(z)
            gw, gb = torch.autograd.grad(loss, (weight, bias))
            scale = (0.5 * (1 + math.cos(math.pi * step / total)) * lr)[:, None]
            with torch.no_grad():
                gw = gw + wd[:, None, None] * weight
                buf_w.mul_(momentum).add_(gw)
                buf_b.mul_(momentum).add_(gb)
                weight -= scale[:, :, None] * (gw + momentum * buf_w)
                bias -= scale * (gb + momentum * buf_b)
            step += 1
    return LinearFit(weight.detach(), bias.detach(), mean, std)


def accuracy(scores: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(top-1 %, top-5 %) of class scores [N, C] against labels [N]."""
    top = scores.topk(min(5, scores.shape[-1]), dim=-1).indices
    hit = top == y.to(top.device)[:, None]
    n = max(len(y), 1)
    return 100.0 * hit[:, 0].sum().item() / n, 100.0 * hit.any(1).sum().item() / n
