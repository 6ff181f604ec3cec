"""SwAV's Sinkhorn-Knopp: reference vs SwAV's literal formula, stability, the fast torch and
Triton versions (under TRITON_INTERPRET=1 without a GPU), dispatch, and 2 ranks vs 1."""

import os
import socket

import pytest
import torch

# Triton picks interpreted or compiled kernels when it is imported and when a kernel is
# defined, so without a GPU the interpreter is switched on before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.kernels.sinkhorn import (
    sinkhorn,
    sinkhorn_reference,
    sinkhorn_torch,
)
from tests.deps import require  # noqa: E402

SIZES = [(64, 30, 0), (7, 5, 0), (7, 5, 9), (33, 70, 16)]  # batch, prototypes, queue rows


def swav_sinkhorn(scores, epsilon, iterations):
    """SwAV's distributed_sinkhorn on one process, literally (no stabilisation)."""
    q = torch.exp(scores / epsilon).t()
    b, k = q.shape[1], q.shape[0]
    q /= torch.sum(q)
    for _ in range(iterations):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= k
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def cosine_scores(b, k, dtype=torch.float64, seed=0):
    """Scores as SwAV has them: normalised embeddings against normalised prototypes."""
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, 16, generator=g, dtype=torch.float64), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, 16, generator=g, dtype=torch.float64), dim=1)
    return (z @ c.T).to(dtype)


def make(b, k, nq, dtype=torch.float64, seed=0):
    s = cosine_scores(b + nq, k, dtype, seed)
    return s[nq:], (s[:nq] if nq else None)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def triton_impl():
    """sinkhorn_triton on the GPU when there is one (inputs moved there, the codes brought
    back), else interpreted on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1 before
    anything imports triton)."""
    require("triton")
    from selfsup.kernels import triton_interpreting

    if not torch.cuda.is_available() and not triton_interpreting():
        pytest.fail("no CUDA and Triton is not interpreting: set TRITON_INTERPRET=1 first")
    from selfsup.kernels.sinkhorn_triton import sinkhorn_triton

    def on_device(scores, *args):
        args = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
        return sinkhorn_triton(scores.to(DEVICE), *args).cpu()

    on_device.__name__ = sinkhorn_triton.__name__
    return on_device


@pytest.mark.parametrize("b,k,nq", SIZES)
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_reference_is_swav_formula(b, k, nq, iterations):
    s, queue = make(b, k, nq, seed=b + iterations)
    full = s if queue is None else torch.cat([queue, s])
    expected = swav_sinkhorn(full.clone(), 0.05, iterations)[-b:]
    got = sinkhorn_reference(s, 0.05, iterations, queue)
    assert got.shape == (b, k) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    if iterations:
        torch.testing.assert_close(got.sum(1), torch.ones(b, dtype=torch.float64))


def test_reference_properties():
    s = cosine_scores(64, 30)
    q = sinkhorn_reference(s, 0.05, 200)  # converged: rows 1, prototypes used equally
    torch.testing.assert_close(q.sum(0), torch.full((30,), 64 / 30, dtype=torch.float64))
    x = s.float().requires_grad_()
    out = sinkhorn_reference(x.to(torch.bfloat16))
    assert out.dtype == torch.float32 and not out.requires_grad
    with pytest.raises(ValueError, match="scores"):
        sinkhorn_reference(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="queue"):
        sinkhorn_reference(torch.randn(3, 4), queue=torch.randn(2, 5))
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_reference(torch.randn(3, 4), epsilon=0.0)


def extreme_scores(dtype):
    """|scores| / eps up to 500, plus a sample far below every prototype's best sample, whose
    entries all underflow even after subtracting each prototype's max."""
    g = torch.Generator().manual_seed(3)
    s = (torch.rand(64, 30, generator=g, dtype=torch.float64) * 2 - 1) * 500 * 0.05
    s[5] = -500 * 0.05
    return s.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_scores_stay_finite(dtype, triton_impl):
    s = extreme_scores(dtype)
    with torch.no_grad():
        assert not torch.isfinite(swav_sinkhorn(s.clone(), 0.05, 3)).all()  # the naive one fails
    expected = sinkhorn_reference(s.double())
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(expected.sum(1), torch.ones(64, dtype=torch.float64))
    for impl in (sinkhorn_reference, sinkhorn_torch, triton_impl):
        got = impl(s)
        assert got.dtype == dtype and torch.isfinite(got).all(), impl.__name__
        tol = 1e-12 if dtype == torch.float64 else 1e-3  # log-values ~500 carry fp32 rounding
        torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def _parity(impl, b, k, nq, iterations, dtype):
    s, queue = make(b, k, nq, dtype, seed=7 * b + k + iterations)
    # Reference in float64 on exactly the values the implementation sees.
    expected = sinkhorn_reference(
        s.double(), 0.05, iterations, None if queue is None else queue.double()
    )
    got = impl(s, 0.05, iterations, queue)
    assert got.shape == (b, k)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6)}.get(dtype, (2e-2, 1e-3))
    torch.testing.assert_close(got.double(), expected, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("b,k,nq", SIZES)
@pytest.mark.parametrize("iterations", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_matches_reference(b, k, nq, iterations, dtype):
    _parity(sinkhorn_torch, b, k, nq, iterations, dtype)


@pytest.mark.parametrize("b,k,nq", SIZES)
@pytest.mark.parametrize("iterations", [0, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_reference(b, k, nq, iterations, dtype, triton_impl):
    _parity(triton_impl, b, k, nq, iterations, dtype)


def test_triton_float64_and_strided_input(triton_impl):
    _parity(triton_impl, 40, 130, 0, 3, torch.float64)  # K over one block of prototypes
    s = cosine_scores(20, 12, torch.float32)
    wide = torch.zeros(20, 40)
    wide[:, 3:15] = s
    torch.testing.assert_close(triton_impl(wide[:, 3:15]), sinkhorn_torch(s), rtol=1e-5, atol=1e-6)


def test_dispatch(triton_impl):
    s = cosine_scores(10, 6, torch.float32).to(DEVICE)
    expected = sinkhorn_reference(s)
    for impl in ("auto", "torch", "reference", "triton"):
        torch.testing.assert_close(sinkhorn(s, 0.05, 3, impl=impl), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="impl"):
        sinkhorn(s, impl="cuda")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_worker(rank, world, port, scores, queue, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        half = scores.shape[0] // world
        mine = scores[rank * half : (rank + 1) * half]
        qhalf = queue.shape[0] // world
        my_queue = queue[rank * qhalf : (rank + 1) * qhalf]
        from selfsup.kernels.sinkhorn_triton import sinkhorn_triton

        impls = {
            "reference": sinkhorn_reference,
            "torch": sinkhorn_torch,
            "triton": sinkhorn_triton,
        }
        results = {name: f(mine, 0.05, 3, my_queue) for name, f in impls.items()}
        results |= {f"{name} no queue": f(mine, 0.05, 3) for name, f in impls.items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path, monkeypatch):
    """Each of 2 gloo ranks holds half the batch (and half the queue): the assignments equal
    those of one process holding the whole batch, with the per-rank queue halves in place."""
    require("triton")
    # gloo ranks on CPU tensors: the kernels run in Triton's interpreter there, GPU or not
    # (the variable is inherited by the spawned ranks; compiled kernels are tested above).
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    world, b, nq, k = 2, 24, 8, 10
    scores = cosine_scores(b, k, torch.float64, seed=11)
    queue = cosine_scores(nq, k, torch.float64, seed=12)
    mp.spawn(_rank_worker, args=(world, _free_port(), scores, queue, str(tmp_path)), nprocs=world)
    # One process: rows ordered as the ranks' concatenated [queue_r; batch_r] blocks.
    half, qhalf = b // world, nq // world
    rows = [
        torch.cat([queue[r * qhalf : (r + 1) * qhalf], scores[r * half : (r + 1) * half]])
        for r in range(world)
    ]
    full = torch.cat(rows)
    whole = sinkhorn_reference(full, 0.05, 3)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for r in range(world):
        start = r * (qhalf + half) + qhalf
        expected = whole[start : start + half]
        expected_no_queue = sinkhorn_reference(scores, 0.05, 3)[r * half : (r + 1) * half]
        for name, got in per_rank[r].items():
            want = expected_no_queue if name.endswith("no queue") else expected
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=f"{name} rank {r}")


def test_auto_is_the_torch_version(monkeypatch):
    """Measured on an H200 at SwAV's size, the in-place torch version beat the Triton kernel
    (0.6 against 1.2 ms): auto takes torch whatever the device (a CUDA tensor where there is
    a GPU, the case the choice is about)."""
    import selfsup.kernels.sinkhorn as ks

    called = []
    monkeypatch.setattr(ks, "sinkhorn_torch", lambda *a: called.append("torch") or a[0])
    ks.sinkhorn(cosine_scores(4, 3, torch.float32).to(DEVICE))
    assert called == ["torch"]
