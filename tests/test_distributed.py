"""The collectives of ``selfsup.distributed`` and global BN, on 2 gloo processes with
rank-distinct data, against one process on the concatenated batch (float64).

Convention checked throughout: each rank's loss is its local part, DDP then averages the
ranks' gradients, so the gradient a rank computes for its own inputs, divided by W, must equal
the single-process gradient of the mean loss for those inputs.
"""

import pytest
import torch

from selfsup import distributed
from selfsup.errors import ConfigError, SelfsupError
from tests.ranks import run_ranks

W = 2


def _global_batch(seed=0, v=2, n=8, d=16):
    return torch.randn(v, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- gather_with_grad: NT-Xent with local anchors against every rank's keys -------------------


def _nt_xent_rank(rank, world):
    from selfsup.kernels.contrastive import info_nce

    z_all = _global_batch()
    b = z_all.shape[1] // world
    local = z_all[:, rank * b : (rank + 1) * b].clone().requires_grad_(True)
    keys = distributed.gather_with_grad(local, dim=1)
    loss = info_nce(local, 0.2, keys=keys, offset=rank * b, impl="tiled")
    loss.backward()
    mean_loss = distributed.all_reduce_(loss.detach().clone(), "mean")
    return mean_loss, local.grad


@pytest.mark.parametrize("wrong", [None, "own-slice", "reduce-own-slice"])
def test_gather_with_grad_gives_the_single_process_gradient(wrong, monkeypatch):
    from selfsup.kernels.contrastive import info_nce

    z = _global_batch().requires_grad_(True)
    want = info_nce(z, 0.2, impl="reference")
    want.backward()
    results = run_ranks(_nt_xent_rank, W)
    b = z.shape[1] // W
    for rank, (loss, grad) in enumerate(results):
        assert torch.allclose(loss, want, rtol=1e-12)
        assert torch.allclose(grad / W, z.grad[:, rank * b : (rank + 1) * b], rtol=1e-10)
    if wrong is not None:
        # the two backward passes public trainers shipped give a different gradient here,
        # so this comparison can fail (simulated in one process from the per-rank gradients)
        full = [_per_rank_gathered_grad(r) for r in range(W)]
        own = torch.stack([g[:, r * b : (r + 1) * b] for r, g in enumerate(full)])
        reduced = own.sum(0) if wrong == "reduce-own-slice" else own[0]
        assert not torch.allclose(reduced / W, z.grad[:, :b], rtol=1e-3)


def _per_rank_gathered_grad(rank):
    """Rank ``rank``'s gradient for the whole gathered key tensor (no collective)."""
    from selfsup.kernels.contrastive import info_nce

    z_all = _global_batch()
    b = z_all.shape[1] // W
    keys = z_all.clone().requires_grad_(True)
    info_nce(keys[:, rank * b : (rank + 1) * b], 0.2, keys=keys, offset=rank * b).backward()
    return keys.grad


# -- all_reduce_with_grad: a replicated loss of summed statistics ----------------------------


def _replicated_rank(rank, world):
    x = _global_batch(1)[:, rank::world].clone().requires_grad_(True)
    s = distributed.all_reduce_with_grad((x**2).sum(1))  # [V, D] summed over every rank
    loss = (s.log() * torch.arange(s.shape[1], dtype=s.dtype)).sum()
    loss.backward()
    return loss.detach(), x.grad


def test_all_reduce_with_grad_is_autograd_aware():
    x = _global_batch(1).requires_grad_(True)
    s = (x**2).sum(1)
    want = (s.log() * torch.arange(s.shape[1], dtype=s.dtype)).sum()
    want.backward()
    for rank, (loss, grad) in enumerate(run_ranks(_replicated_rank, W)):
        assert torch.allclose(loss, want, rtol=1e-12)
        assert torch.allclose(grad / W, x.grad[:, rank::W], rtol=1e-10)


# -- global BN --------------------------------------------------------------------------------


def _bn_rank(rank, world, dims):
    from selfsup.trainer.sync_bn import convert_sync_bn

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3) if dims == 4 else torch.nn.BatchNorm1d(3)
    bn = convert_sync_bn(bn.double(), "cpu")
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x_all, w_all = _bn_inputs(dims)
    n = len(x_all) // world
    x = x_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    y = bn(x)
    loss = (y * w_all[rank * n : (rank + 1) * n]).sum()
    loss.backward()
    return y.detach(), x.grad, bn.weight.grad, bn.running_mean, bn.running_var


def _bn_inputs(dims):
    g = torch.Generator().manual_seed(3)
    shape = (8, 3, 5, 4) if dims == 4 else (8, 3)
    # rank-distinct statistics: the second half is shifted and scaled
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x[4:] = x[4:] * 3 + 2
    return x, torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("dims", [2, 4])
def test_global_batch_norm_equals_batch_norm_on_the_whole_batch(dims):
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3) if dims == 4 else torch.nn.BatchNorm1d(3)
    bn = bn.double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x_all, w_all = _bn_inputs(dims)
    x_all.requires_grad_(True)
    y_all = bn(x_all)
    (y_all * w_all).sum().backward()
    n = len(x_all) // W
    results = run_ranks(_bn_rank, W, dims)
    weight_grad = sum(r[2] for r in results)
    for rank, (y, gx, _, rm, rv) in enumerate(results):
        part = slice(rank * n, (rank + 1) * n)
        assert torch.allclose(y, y_all[part].detach(), rtol=1e-10, atol=1e-12)
        # the loss here is a sum over ranks (not a mean), so no 1/W: each rank's input
        # gradient is that of the whole batch's loss
        assert torch.allclose(gx, x_all.grad[part], rtol=1e-9, atol=1e-12)
        assert torch.allclose(rm, bn.running_mean, rtol=1e-12)
        assert torch.allclose(rv, bn.running_var, rtol=1e-12)
    assert torch.allclose(weight_grad, bn.weight.grad, rtol=1e-10)


def test_global_batch_norm_is_batch_norm_in_one_process():
    from selfsup.trainer.sync_bn import GlobalBatchNorm, convert_sync_bn

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    net[1].running_mean.fill_(0.5)
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    conv = convert_sync_bn(net, "cpu")
    assert isinstance(conv[1], GlobalBatchNorm)
    assert all(torch.equal(ref[k], v) for k, v in conv.state_dict().items())
    x = torch.randn(6, 3, 4, 4)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    plain.load_state_dict(ref)
    assert torch.equal(conv(x), plain(x))


# -- gather_uneven and together() -------------------------------------------------------------


def _uneven_rank(rank, world):
    x = torch.arange(3 + rank * 2, dtype=torch.float32)[:, None] + 100 * rank
    return distributed.gather_uneven(x)


def test_gather_uneven():
    a, b = run_ranks(_uneven_rank, W)
    want = torch.cat([torch.arange(3.0), torch.arange(5.0) + 100])[:, None]
    assert torch.equal(a, want) and torch.equal(b, want)


def _together_rank(rank, world):
    try:
        with distributed.together("setting up"):
            if rank == 1:
                raise ConfigError("data.path '/nowhere' does not exist")
    except SelfsupError as e:
        return type(e).__name__, str(e)
    return None


def test_an_error_on_one_rank_stops_every_rank():
    r0, r1 = run_ranks(_together_rank, W, timeout=60)
    assert r1 == ("ConfigError", "data.path '/nowhere' does not exist")
    assert r0[0] == "RankError"
    assert "failed on rank 1" in r0[1] and "/nowhere" in r0[1]
