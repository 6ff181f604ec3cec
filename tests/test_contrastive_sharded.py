"""NT-Xent with local anchors against gathered keys is the single-process loss, split.

W simulated ranks each take a slice of the global batch as anchors and the whole batch as keys
(``keys``, ``offset``). The mean of their losses must equal the loss of one process on the
whole batch, and the sum over ranks of each rank's gradient on the whole batch (what
``gather_with_grad``'s backward adds up), divided by W (DDP's average), must equal its
gradient. Every implementation, with extra negatives and the ReLIC term; the Triton kernels run
under the interpreter without a GPU.
"""

import os

import pytest
import torch

from tests.deps import require

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from selfsup.kernels.contrastive import info_nce  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [  # V, N global, D, M extra negatives, ReLIC alpha, W ranks
    (2, 8, 16, 0, 0.0, 2),
    (2, 12, 16, 5, 0.0, 3),
    (3, 8, 32, 0, 0.0, 4),
    (2, 6, 16, 3, 0.7, 2),
]


def _split_loss_and_grad(impl, z_all, extra, alpha, world, t=0.2):
    v, n, d = z_all.shape
    b = n // world
    losses, grads = [], []
    for r in range(world):
        leaf = z_all.detach().clone().requires_grad_(True)
        local = leaf[:, r * b : (r + 1) * b]
        loss = info_nce(
            local, t, extra_negatives=extra, relic_alpha=alpha, keys=leaf, offset=r * b, impl=impl
        )
        (g,) = torch.autograd.grad(loss, leaf)
        losses.append(loss.detach())
        grads.append(g)
    return torch.stack(losses).mean(), torch.stack(grads).sum(0) / world


@pytest.mark.parametrize("impl", ["reference", "tiled", "triton"])
@pytest.mark.parametrize("v,n,d,m,alpha,world", CASES)
def test_sharded_anchors_equal_the_single_process_loss(impl, v, n, d, m, alpha, world):
    if impl == "triton":
        require("triton")
        if alpha:
            pytest.skip("the Triton path adds the ReLIC term with the tiled code (tested there)")
    dtype = torch.float64 if impl != "triton" else torch.float32
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    gen = torch.Generator().manual_seed(v * 100 + n + m)
    z_all = torch.randn(v, n, d, generator=gen, dtype=dtype).to(DEVICE)
    extra = torch.randn(m, d, generator=gen, dtype=dtype).to(DEVICE) if m else None

    leaf = z_all.clone().requires_grad_(True)
    want = info_nce(leaf, 0.2, extra_negatives=extra, relic_alpha=alpha, impl="reference")
    (want_grad,) = torch.autograd.grad(want, leaf)

    got, got_grad = _split_loss_and_grad(impl, z_all, extra, alpha, world)
    assert torch.allclose(got, want, rtol=tol, atol=tol), (got, want)
    assert torch.allclose(got_grad, want_grad, rtol=tol, atol=tol)


def test_keys_of_one_rank_equal_no_keys():
    z = torch.randn(2, 6, 8, dtype=torch.float64)
    for impl in ("reference", "tiled"):
        a = info_nce(z, 0.3, impl=impl)
        b = info_nce(z, 0.3, keys=z, offset=0, impl=impl)
        assert torch.allclose(a, b, rtol=1e-12)


def test_tiled_tiles_smaller_than_the_shards():
    """Self columns found across tile edges (row and column blocks smaller than a rank's slice)."""
    from selfsup.kernels.contrastive import info_nce_tiled

    z_all = torch.randn(2, 20, 8, dtype=torch.float64)
    b = 5
    for r in range(4):
        local = z_all[:, r * b : (r + 1) * b]
        big = info_nce(local, 0.2, keys=z_all, offset=r * b, impl="reference")
        small = info_nce_tiled(local, 0.2, keys=z_all, offset=r * b, row_block=3, col_block=7)
        assert torch.allclose(big, small, rtol=1e-12)


@pytest.mark.parametrize(
    "keys_shape,offset,match",
    [((2, 8, 16), 6, "offset"), ((3, 8, 16), 0, "keys must have shape"), (None, 2, "needs keys")],
)
def test_bad_keys_or_offset_are_rejected(keys_shape, offset, match):
    z = torch.randn(2, 4, 16)
    keys = None if keys_shape is None else torch.randn(*keys_shape)
    with pytest.raises(ValueError, match=match):
        info_nce(z, 0.2, keys=keys, offset=offset)
