import pytest
import torch
import torch.nn.functional as F

from selfsup.kernels.contrastive import info_nce, info_nce_reference, info_nce_tiled


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


# --- extra negatives and the ReLIC term, against explicit loops (float64) ---------------------


def explicit_loss(z, t, extra=None, alpha=0.0):
    """The module doc's definition written as loops over anchors, positives and candidates."""
    v, n, _ = z.shape
    f = F.normalize(z.reshape(v * n, -1), dim=1)
    e = F.normalize(extra, dim=1) if extra is not None else z.new_zeros(0, z.shape[2])
    cands = torch.cat([f, e])
    total = 0.0
    for i in range(v * n):
        denom = sum(torch.exp(f[i] @ cands[k] / t) for k in range(len(cands)) if k != i)
        pos = [k for k in range(v * n) if k != i and k % n == i % n]
        total += sum(-torch.log(torch.exp(f[i] @ f[p] / t) / denom) for p in pos) / len(pos)
    loss = total / (v * n)
    if alpha:
        views = f.reshape(v, n, -1)
        kl_sum, pairs = 0.0, 0
        for a in range(v):
            for b in range(v):
                if a == b:
                    continue
                pairs += 1
                for s in range(n):
                    lp = torch.stack([views[a, s] @ c / t for c in torch.cat([views[b], e])])
                    lq = torch.stack([views[b, s] @ c / t for c in torch.cat([views[a], e])])
                    p, q = torch.softmax(lp, 0), torch.softmax(lq, 0).detach()
                    kl_sum += sum(p[m] * torch.log(p[m] / q[m]) for m in range(len(p))) / n
        loss = loss + alpha * kl_sum / pairs
    return loss


@pytest.mark.parametrize("v,n,m,alpha", [(2, 5, 0, 0.7), (3, 4, 6, 0.0), (3, 3, 4, 1.5)])
def test_extra_negatives_and_relic_by_explicit_loops(v, n, m, alpha):
    gen = torch.Generator().manual_seed(10 * v + n + m)
    z = torch.randn(v, n, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    extra = torch.randn(m, 8, dtype=torch.float64, generator=gen) if m else None
    ours = info_nce_reference(z, 0.3, extra_negatives=extra, relic_alpha=alpha)
    want = explicit_loss(z, 0.3, extra, alpha)
    assert torch.allclose(ours, want, atol=1e-10)
    g_ours, g_want = torch.autograd.grad(ours, z)[0], torch.autograd.grad(want, z)[0]
    assert torch.allclose(g_ours, g_want, atol=1e-10)


def test_relic_target_side_gets_no_gradient():
    """With V=2 and a detached view b, only the KL(p_ab || sg p_ba) path reaches view a."""
    torch.manual_seed(3)
    z = torch.randn(2, 6, 8, dtype=torch.float64)
    zero = info_nce_reference(z, 0.2, relic_alpha=1.0) - info_nce_reference(z, 0.2)
    assert zero > 0  # the KL between two different distributions is positive
    same = torch.stack([z[0], z[0]])
    relic = info_nce_reference(same, 0.2, relic_alpha=1.0) - info_nce_reference(same, 0.2)
    assert abs(relic) < 1e-12  # identical views: p_ab == p_ba, KL is zero


def test_extra_negatives_shape_checked():
    with pytest.raises(ValueError, match="extra_negatives"):
        info_nce_reference(torch.randn(2, 4, 8), 0.1, extra_negatives=torch.randn(3, 7))


# --- the tiled implementation against the float64 reference -----------------------------------


def rel_err(a, b):
    """Normwise relative error (pointwise is meaningless for gradient entries near zero)."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check_against_reference(fn, v, n, d, m, alpha, dtype, tol, seed, **kw):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(v, n, d, generator=gen).to(dtype).requires_grad_()
    extra = torch.randn(m, d, generator=gen).to(dtype).requires_grad_() if m else None
    z64 = z.detach().double().requires_grad_()
    e64 = extra.detach().double().requires_grad_() if m else None
    want = info_nce_reference(z64, 0.1, extra_negatives=e64, relic_alpha=alpha)
    got = fn(z, 0.1, extra_negatives=extra, relic_alpha=alpha, **kw)
    assert got.dtype == torch.float32
    assert rel_err(got, want) < tol, (got.item(), want.item())
    inputs, inputs64 = [z] + ([extra] if m else []), [z64] + ([e64] if m else [])
    grads = torch.autograd.grad(got, inputs)
    grads64 = torch.autograd.grad(want, inputs64)
    for g, g64, x in zip(grads, grads64, inputs, strict=True):
        assert g.dtype == x.dtype
        assert rel_err(g, g64) < tol


# every N in {1, 7, 64, 300, 1024}, D in {16, 128, 256}, V in {2, 4, 8} appears; tiles are small
# so that row and column tiling, ragged last tiles and the self mask across tiles are exercised
SHAPES = [
    (2, 1, 16, 2, 0.0),
    (8, 1, 128, 3, 0.5),
    (4, 7, 128, 0, 0.0),
    (8, 7, 256, 5, 1.0),
    (2, 64, 256, 37, 0.0),
    (8, 64, 16, 0, 0.3),
    (4, 300, 16, 100, 0.0),
    (2, 300, 128, 0, 1.0),
    (2, 1024, 16, 64, 0.0),
    (4, 1024, 128, 0, 0.0),
]


@pytest.mark.parametrize("v,n,d,m,alpha", SHAPES)
def test_tiled_matches_reference_fp32(v, n, d, m, alpha):
    check_against_reference(
        info_nce_tiled,
        v,
        n,
        d,
        m,
        alpha,
        torch.float32,
        1e-5,
        seed=v * n + d,
        row_block=96,
        col_block=160,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("v,n,d,m,alpha", [(2, 64, 128, 17, 0.5), (4, 300, 16, 0, 0.0)])
def test_tiled_matches_reference_half(v, n, d, m, alpha, dtype):
    check_against_reference(
        info_nce_tiled, v, n, d, m, alpha, dtype, 1e-2, seed=n + d, row_block=64, col_block=128
    )


def test_single_pair_without_negatives_is_zero():
    z = torch.randn(2, 1, 16, requires_grad=True)
    loss = info_nce_tiled(z, 0.1)
    assert abs(loss.item()) < 1e-6
    assert torch.autograd.grad(loss, z)[0].abs().max() < 1e-5


def test_dispatch_choices():
    z = torch.randn(2, 6, 8)
    ref = info_nce(z, 0.2, impl="reference")
    assert torch.allclose(info_nce(z, 0.2), ref, atol=1e-6)  # auto on CPU -> tiled
    assert torch.allclose(info_nce(z, 0.2, impl="tiled"), ref, atol=1e-6)
    with pytest.raises(ValueError, match="reference, tiled, triton"):
        info_nce(z, 0.2, impl="fused")
