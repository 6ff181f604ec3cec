"""Batch normalisation over the global batch, on every device.

SimCLR, BYOL, MoCo v3, Barlow Twins, VICReg and DINO (ResNet) normalise with statistics of the
whole global batch, not of each rank's slice; otherwise W processes do not compute what one
process does on the same batch. torch's ``nn.SyncBatchNorm`` does this on CUDA only, so
``convert_sync_bn`` uses it there and :class:`GlobalBatchNorm` (below) elsewhere: each rank
computes its per-channel count, mean and sum of squared deviations, the ranks gather them
with gradients (``selfsup.distributed.gather_with_grad``) and combine them exactly (Chan et
al.'s parallel variance), and every rank normalises with the same global mean and variance.
The running statistics then stay identical on every rank, so no buffer needs broadcasting.

Parameter and buffer names are BatchNorm's, so state dicts load either way.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup import distributed


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any of 1d/2d/3d) whose training statistics cover every rank's batch.

    One process, or evaluation mode: exactly BatchNorm. Computes in float32 at least whatever
    the input dtype (as BatchNorm does under autocast) and returns the input dtype.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and distributed.world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        count = x.numel() // c
        mean = xf.mean(dims)
        m2 = (xf - mean.view(1, c, *[1] * (x.dim() - 2))).square().sum(dims)
        local = torch.cat([mean, m2, mean.new_full((1,), float(count))])
        stats = distributed.gather_with_grad(local[None])  # [W, 2C + 1]
        means, m2s, counts = stats[:, :c], stats[:, c : 2 * c], stats[:, 2 * c :].detach()
        n = counts.sum()
        g_mean = (counts * means).sum(0) / n
        g_m2 = (m2s + counts * (means - g_mean).square()).sum(0)
        var = g_m2 / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                f = self.momentum
                if f is None:  # cumulative average, as BatchNorm with momentum=None
                    f = 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(g_mean.to(self.running_mean.dtype), f)
                unbiased = g_m2 / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), f)
        shape = (1, c, *[1] * (x.dim() - 2))
        y = (xf - g_mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_bn(module: nn.Module, device_type: str) -> nn.Module:
    """Every BatchNorm in ``module`` normalising over the global batch: ``nn.SyncBatchNorm``
    on CUDA, :class:`GlobalBatchNorm` elsewhere. Weights and running statistics are kept."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        out = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        like = module.weight if module.affine else module.running_mean
        if like is not None:
            out = out.to(device=like.device, dtype=like.dtype)
        with torch.no_grad():
            if module.affine:
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
                out.weight.requires_grad_(module.weight.requires_grad)
                out.bias.requires_grad_(module.bias.requires_grad)
            if module.track_running_stats:
                out.running_mean.copy_(module.running_mean)
                out.running_var.copy_(module.running_var)
                out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


@torch.no_grad()
def average_bn_buffers(module: nn.Module) -> None:
    """Average BatchNorm running statistics over ranks (when each rank kept its own, i.e. without
    global BN), so that what rank 0 saves and evaluates with describes the whole data."""
    if distributed.world_size() == 1:
        return
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            distributed.all_reduce_(m.running_mean, "mean")
            distributed.all_reduce_(m.running_var, "mean")
