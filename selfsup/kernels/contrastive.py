"""InfoNCE / NT-Xent over V >= 2 views per sample.

``info_nce_reference`` is the readable definition: every other view of the same sample is
a positive, every view of every other sample a negative, self-similarity excluded. The
fused Triton kernel and the tiled CPU path (the kernels issue) share its signature and
are tested against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce_reference(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss of embeddings ``z`` of shape [V, N, D] (V views of N samples).

    Embeddings are L2-normalised; each of the V*N anchors has V-1 positives. The loss of an
    anchor is the mean over its positives of -log(exp(s_pos/t) / sum_{k != anchor} exp(s_k/t)),
    as in SimCLR for V=2; the result is the mean over anchors. Computed in float32 at least.
    """
    v, n, _ = z.shape
    if v < 2:
        raise ValueError(f"info_nce needs at least 2 views per sample, got {v}")
    dtype = torch.promote_types(z.dtype, torch.float32)
    flat = F.normalize(z.to(dtype).reshape(v * n, -1), dim=1)
    logits = flat @ flat.T / temperature
    eye = torch.eye(v * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    sample = torch.arange(v * n, device=z.device) % n
    positive = (sample[:, None] == sample[None, :]) & ~eye
    return -(log_prob.masked_fill(~positive, 0.0).sum(1) / (v - 1)).mean()


def info_nce(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """The NT-Xent loss used by the methods (dispatches to the fastest implementation)."""
    return info_nce_reference(z, temperature)
