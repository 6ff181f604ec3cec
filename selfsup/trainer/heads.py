"""Projection and prediction heads (MLPs) shared by the methods."""

from __future__ import annotations

import torch
from torch import nn


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    *,
    hidden_bn: bool = True,
    last_bn: bool = False,
    last_bn_affine: bool = True,
    last_bias: bool = True,
) -> nn.Sequential:
    """``num_layers`` linear layers; hidden ones are Linear(+BN)+ReLU, the last is bare.

    A linear layer followed by BN has no bias (BN's shift replaces it). ``last_bn`` adds a
    BatchNorm after the last layer, as SimCLR and MoCo v3 heads do; ``last_bias=False`` drops
    the last layer's bias (Barlow Twins, VICReg).
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not hidden_bn))
        if hidden_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=last_bias and not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*layers)


def embed_views(backbone: nn.Module, head: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """[V, B, D]: every view through the backbone (one pass per view size) and the head."""
    h = torch.cat([backbone(g.flatten(0, 1)) for g in views])
    v = sum(g.shape[0] for g in views)
    z = head(h)
    return z.reshape(v, -1, z.shape[-1])
