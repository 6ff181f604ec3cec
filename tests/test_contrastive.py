import pytest
import torch
import torch.nn.functional as F

from selfsup.kernels.contrastive import info_nce_reference


def simclr_two_view_loss(z1, z2, t):
    """SimCLR's formulation: logits [ab | aa] with self masked, CE on the positive."""
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = len(a)
    mask = torch.eye(n, dtype=torch.bool)
    ab, aa = a @ b.T / t, (a @ a.T / t).masked_fill(mask, -1e9)
    ba, bb = b @ a.T / t, (b @ b.T / t).masked_fill(mask, -1e9)
    target = torch.arange(n)
    la = F.cross_entropy(torch.cat([ab, aa], 1), target)
    lb = F.cross_entropy(torch.cat([ba, bb], 1), target)
    return (la + lb) / 2


def test_two_views_match_simclr_formulation():
    torch.manual_seed(0)
    z = torch.randn(2, 9, 16, dtype=torch.float64)
    ours = info_nce_reference(z, 0.2)
    assert torch.allclose(ours, simclr_two_view_loss(z[0], z[1], 0.2), atol=1e-10)


def test_many_views_by_explicit_sum():
    torch.manual_seed(1)
    v, n, t = 3, 4, 0.5
    z = torch.randn(v, n, 8, dtype=torch.float64)
    f = F.normalize(z.reshape(v * n, -1), dim=1)
    total, count = 0.0, 0
    for i in range(v * n):
        denom = sum(torch.exp(f[i] @ f[k] / t) for k in range(v * n) if k != i)
        pos = [k for k in range(v * n) if k != i and k % n == i % n]
        total += sum(-torch.log(torch.exp(f[i] @ f[p] / t) / denom) for p in pos) / len(pos)
        count += 1
    assert torch.allclose(info_nce_reference(z, t), total / count, atol=1e-10)


def test_needs_two_views_and_is_scale_invariant():
    with pytest.raises(ValueError):
        info_nce_reference(torch.randn(1, 4, 8), 0.1)
    z = torch.randn(2, 5, 8, dtype=torch.float64)
    assert torch.allclose(info_nce_reference(z, 0.1), info_nce_reference(3 * z, 0.1))
