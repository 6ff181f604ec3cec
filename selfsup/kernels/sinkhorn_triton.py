"""Triton kernels for SwAV's Sinkhorn-Knopp (same signature as ``sinkhorn_reference``).

The log-domain form keeps the scores read-only: the assignments are
``exp(scores/eps + u[k] + v[n] + log N)`` and an iteration only updates the K log row
scalings ``u`` and the N log column scalings ``v``. Each half-iteration is one fused pass
over the scores computing a numerically stable (online max) log-sum-exp:

- ``_row_partial_kernel``: per prototype, over a strided share of the samples, the max and
  the sum of exp relative to it. The shares are combined in torch, where the all-reduce
  across ranks also happens (MAX of the maxima, then SUM of the rescaled sums).
- ``_col_kernel``: per sample, over all prototypes (local to the rank), writing ``v``.
- ``_assign_kernel``: the final exp, for the batch's own rows only.

Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (the tests do this).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from selfsup.distributed import all_reduce_, world_size
from selfsup.kernels import launch_guard, no_autocast
from selfsup.kernels.sinkhorn import _check, compute_dtype

ROW_BLOCK_N, ROW_BLOCK_K, ROW_SPLITS = 32, 128, 16
COL_BLOCK_N, COL_BLOCK_K = 16, 128
OUT_BLOCK_N, OUT_BLOCK_K = 32, 128


@triton.jit
def _row_partial_kernel(
    s_ptr, v_ptr, pmax_ptr, psum_ptr, n, k, stride_s, c_ptr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLITS: tl.constexpr,
):  # fmt: skip
    pid_split = tl.program_id(0)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < k
    dtype = v_ptr.dtype.element_ty
    inv_eps = tl.load(c_ptr)
    m = tl.full((BLOCK_K,), -1.0e30, dtype)  # finite: exp(-inf - m) = 0, no NaN
    acc = tl.zeros((BLOCK_K,), dtype)
    for start in range(pid_split * BLOCK_N, n, SPLITS * BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n
        mask = mask_n[:, None] & mask_k[None, :]
        s = tl.load(
            s_ptr + offs_n[:, None].to(tl.int64) * stride_s + offs_k[None, :], mask=mask, other=0.0
        )
        v = tl.load(v_ptr + offs_n, mask=mask_n, other=0.0)
        x = tl.where(mask, s.to(dtype) * inv_eps + v[:, None], float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=0))
        acc = acc * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[None, :]), axis=0)
        m = m_new
    out = pid_split * k + offs_k
    tl.store(pmax_ptr + out, m, mask=mask_k)
    tl.store(psum_ptr + out, acc, mask=mask_k)


@triton.jit
def _col_kernel(
    s_ptr, u_ptr, v_ptr, n, k, stride_s, c_ptr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    dtype = v_ptr.dtype.element_ty
    inv_eps = tl.load(c_ptr)
    m = tl.full((BLOCK_N,), -1.0e30, dtype)
    acc = tl.zeros((BLOCK_N,), dtype)
    for start in range(0, k, BLOCK_K):
        offs_k = start + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k
        mask = mask_n[:, None] & mask_k[None, :]
        s = tl.load(
            s_ptr + offs_n[:, None].to(tl.int64) * stride_s + offs_k[None, :], mask=mask, other=0.0
        )
        u = tl.load(u_ptr + offs_k, mask=mask_k, other=0.0)
        x = tl.where(mask, s.to(dtype) * inv_eps + u[None, :], float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=1))
        acc = acc * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
        m = m_new
    # v = -(log-sum-exp) - log N: each sample's column then sums to 1/N.
    acc = tl.where(mask_n, acc, 1.0)  # rows past the end: keep log() finite
    tl.store(v_ptr + offs_n, -(m + tl.log(acc)) - tl.load(c_ptr + 1), mask=mask_n)


@triton.jit
def _assign_kernel(
    s_ptr, u_ptr, v_ptr, out_ptr, row0, n_out, k, stride_s, c_ptr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_n = offs_n < n_out
    mask_k = offs_k < k
    mask = mask_n[:, None] & mask_k[None, :]
    dtype = out_ptr.dtype.element_ty
    inv_eps = tl.load(c_ptr)
    shift = tl.load(c_ptr + 1)
    rows = row0 + offs_n
    s = tl.load(
        s_ptr + rows[:, None].to(tl.int64) * stride_s + offs_k[None, :], mask=mask, other=0.0
    )
    u = tl.load(u_ptr + offs_k, mask=mask_k, other=0.0)
    v = tl.load(v_ptr + rows, mask=mask_n, other=0.0)
    x = tl.where(mask, s.to(dtype) * inv_eps + u[None, :] + v[:, None] + shift, float("-inf"))
    q = tl.exp(x)
    tl.store(out_ptr + offs_n[:, None].to(tl.int64) * k + offs_k[None, :], q, mask=mask)


def _row_lse(s: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """log sum_n exp(s[n, k] * c[0] + v[n]) over all ranks' samples, for each k."""
    n, k = s.shape
    pmax = torch.empty(ROW_SPLITS, k, dtype=v.dtype, device=s.device)
    psum = torch.empty_like(pmax)
    grid = (ROW_SPLITS, triton.cdiv(k, ROW_BLOCK_K))
    with launch_guard(s):
        _row_partial_kernel[grid](
            s, v, pmax, psum, n, k, s.stride(0), c,
            BLOCK_N=ROW_BLOCK_N, BLOCK_K=ROW_BLOCK_K, SPLITS=ROW_SPLITS,
        )  # fmt: skip
    m = all_reduce_(pmax.amax(0), "max")
    total = all_reduce_((psum * torch.exp(pmax - m)).sum(0))
    return m + torch.log(total)


@no_autocast
def sinkhorn_triton(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    queue: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sinkhorn_reference`` with the passes over the scores as Triton kernels."""
    _check(scores, epsilon, iterations, queue)
    with torch.no_grad(), launch_guard(scores):
        dtype = compute_dtype(scores.dtype)
        s = scores if queue is None else torch.cat([queue.to(scores.dtype), scores])
        s = s.contiguous()
        n, k = s.shape
        n_total = n * world_size()
        # [1/eps, log N] in the compute dtype (a Python float would reach the kernel as fp32).
        c = torch.tensor([1.0 / epsilon, math.log(n_total)], dtype=dtype, device=s.device)
        v = torch.zeros(n, dtype=dtype, device=s.device)
        if iterations == 0:
            u = (-torch.logsumexp(_row_lse(s, v, c), 0)).expand(k).contiguous()
        for _ in range(iterations):
            u = (-_row_lse(s, v, c) - math.log(k)).contiguous()
            _col_kernel[(triton.cdiv(n, COL_BLOCK_N),)](
                s, u, v, n, k, s.stride(0), c,
                BLOCK_N=COL_BLOCK_N, BLOCK_K=COL_BLOCK_K,
            )  # fmt: skip
        b = scores.shape[0]
        out = torch.empty(b, k, dtype=dtype, device=s.device)
        grid = (triton.cdiv(b, OUT_BLOCK_N), triton.cdiv(k, OUT_BLOCK_K))
        _assign_kernel[grid](
            s, u, v, out, n - b, b, k, s.stride(0), c,
            BLOCK_N=OUT_BLOCK_N, BLOCK_K=OUT_BLOCK_K,
        )  # fmt: skip
        return out
