"""Fused Triton kernels for the NT-Xent loss (definition and reference in ``contrastive.py``).

Three kernels, none of which materialises the [VN, VN + M] similarity matrix:

- ``_fwd``: one program per block of anchor rows loops over column tiles (rows, then extra
  negatives) with ``tl.dot``, keeping a running maximum and sum of exponentials (online
  log-sum-exp) and the sum of the positives' logits; writes per-row ``lse`` and per-row loss
  ``lse - mean positive logit``.
- ``_bwd_dq``: per block of anchor rows, recomputes each tile's softmax from the saved ``lse``;
  ``d loss_i / d s_ik = p_ik - [k positive of i] / (V - 1)``; accumulates dQ = W K * scale.
- ``_bwd_dk``: per block of candidate columns, loops over anchor tiles and accumulates
  dK = W^T Q * scale (no atomics: every column block is owned by one program).

Extra negatives are handled in the kernels (they are columns that are never positives). The
ReLIC term is *not* fused: ``info_nce_triton`` adds it with the tiled plain-torch
``relic_term_tiled`` from ``contrastive.py``.

On a machine without a GPU the kernels run under ``TRITON_INTERPRET=1``, which triton reads
when the kernels are decorated, i.e. it must be set before this module is first imported.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from selfsup.kernels import launch_guard, no_autocast, triton_interpreting
from selfsup.kernels.contrastive import _check, _key_rows, _normalised, relic_term_tiled


@triton.jit
def _fwd(
    Q, K, LSE, LOSS, R, C, D, NS, NL, OFF, RK, scale, inv_pos, stride_q, stride_k,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = tl.load(
        Q + rows[:, None] * stride_q + dims[None, :],
        mask=(rows[:, None] < R) & (dims[None, :] < D),
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    own = (rows // NL) * NS + OFF + rows % NL  # each anchor row's own key column
    run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_M], tl.float32)
    pos_sum = tl.zeros([BLOCK_M], tl.float32)
    for c0 in range(0, C, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        k = tl.load(
            K + cols[:, None] * stride_k + dims[None, :],
            mask=(cols[:, None] < C) & (dims[None, :] < D),
            other=0.0,
        )
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        valid = (cols[None, :] < C) & (cols[None, :] != own[:, None])
        positive = valid & (cols[None, :] < RK) & (cols[None, :] % NS == own[:, None] % NS)
        pos_sum += tl.sum(tl.where(positive, s, 0.0), 1)
        s = tl.where(valid, s, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(s, 1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # all masked so far
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(s - shift[:, None]), 1)
        run_max = new_max
    lse = run_max + tl.log(run_sum)
    tl.store(LSE + rows, lse, mask=rows < R)
    tl.store(LOSS + rows, lse - pos_sum * inv_pos, mask=rows < R)


@triton.jit
def _tile_weights(
    q, k, rows, cols, lse, g, R, C, NS, NL, OFF, RK, scale, inv_pos, PREC: tl.constexpr
):
    """d loss / d (q.k) for one tile: g_i * (p_ik - [positive] / (V - 1)) * scale."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    own = (rows // NL) * NS + OFF + rows % NL
    valid = (rows[:, None] < R) & (cols[None, :] < C) & (cols[None, :] != own[:, None])
    positive = valid & (cols[None, :] < RK) & (cols[None, :] % NS == own[:, None] % NS)
    p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
    return (p - tl.where(positive, inv_pos, 0.0)) * (g * scale)[:, None]


@triton.jit
def _bwd_dq(
    Q, K, LSE, G, DQ, R, C, D, NS, NL, OFF, RK, scale, inv_pos, stride_q, stride_k,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_mask = (rows[:, None] < R) & (dims[None, :] < D)
    q = tl.load(Q + rows[:, None] * stride_q + dims[None, :], mask=row_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    lse = tl.load(LSE + rows, mask=rows < R, other=0.0)
    g = tl.load(G + rows, mask=rows < R, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for c0 in range(0, C, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        k = tl.load(
            K + cols[:, None] * stride_k + dims[None, :],
            mask=(cols[:, None] < C) & (dims[None, :] < D),
            other=0.0,
        )
        if UPCAST:
            k = k.to(tl.float32)
        w = _tile_weights(q, k, rows, cols, lse, g, R, C, NS, NL, OFF, RK, scale, inv_pos, PREC)
        acc += tl.dot(w.to(k.dtype), k, input_precision=PREC)
    tl.store(DQ + rows[:, None] * D + dims[None, :], acc, mask=row_mask)


@triton.jit
def _bwd_dk(
    Q, K, LSE, G, DK, R, C, D, NS, NL, OFF, RK, scale, inv_pos, stride_q, stride_k,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    col_mask = (cols[:, None] < C) & (dims[None, :] < D)
    k = tl.load(K + cols[:, None] * stride_k + dims[None, :], mask=col_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for r0 in range(0, R, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        q = tl.load(
            Q + rows[:, None] * stride_q + dims[None, :],
            mask=(rows[:, None] < R) & (dims[None, :] < D),
            other=0.0,
        )
        if UPCAST:
            q = q.to(tl.float32)
        lse = tl.load(LSE + rows, mask=rows < R, other=0.0)
        g = tl.load(G + rows, mask=rows < R, other=0.0)
        w = _tile_weights(q, k, rows, cols, lse, g, R, C, NS, NL, OFF, RK, scale, inv_pos, PREC)
        acc += tl.dot(tl.trans(w).to(q.dtype), q, input_precision=PREC)
    tl.store(DK + cols[:, None] * D + dims[None, :], acc, mask=col_mask)


def _upcast(dtype: torch.dtype) -> bool:
    """Under TRITON_INTERPRET=1 (triton 3.9) a bf16 ``tl.dot`` returns garbage (numpy has no
    bf16), so the interpreter upcasts bf16 tiles to fp32 right after loading them."""
    return dtype == torch.bfloat16 and triton_interpreting()


MAX_D = 256  # each program holds whole [BLOCK, D] row tiles; larger D goes to the tiled path


def _precision() -> str:
    """fp32 dots: "tf32x3" (three TF32 tensor-core passes, about fp32 accuracy) on the GPU;
    compiled "ieee" fp32 dots run on CUDA cores and spill (seen in sm_90 builds). The
    interpreter computes in numpy and takes "ieee"."""
    return "ieee" if triton_interpreting() else "tf32x3"


def _blocks(d: int, dtype: torch.dtype) -> tuple[int, int, int]:
    if d > MAX_D:
        raise ValueError(f"the Triton NT-Xent kernels take D <= {MAX_D}, got {d}; use impl='tiled'")
    block_d = max(16, triton.next_power_of_2(d))
    # keep q, k and the accumulator in registers (fp32 tiles are twice the bytes)
    block = 64 if block_d <= 128 and dtype != torch.float32 else 32
    return block, block, block_d


class _NTXentRows(torch.autograd.Function):
    """Per-anchor NT-Xent loss [R] of rows q [R, D] (V views of ``local`` samples, view-major)
    against k [C, D]: the key rows (V views of ``samples`` samples, view-major; q's own rows
    when one process) followed by the extra negatives. Anchor row r is key row
    ``(r // local) * samples + offset + r % local``; its positives are the other key rows of
    the same sample (index mod ``samples``)."""

    @staticmethod
    def forward(ctx, q, k, local, samples, offset, key_rows, temperature):
        r, d = q.shape
        c = len(k)
        lse = torch.empty(r, device=q.device, dtype=torch.float32)
        loss = torch.empty_like(lse)
        block_m, block_n, block_d = _blocks(d, q.dtype)
        views = r // local
        scale, inv_pos = 1.0 / temperature, 1.0 / (views - 1)
        meta = (local, offset, key_rows, scale, inv_pos)
        with launch_guard(q):
            _fwd[(triton.cdiv(r, block_m),)](
                q, k, lse, loss, r, c, d, samples, *meta, q.stride(0), k.stride(0),
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, UPCAST=_upcast(q.dtype),
                PREC=_precision(),
            )  # fmt: skip
        ctx.save_for_backward(q, k, lse)
        ctx.meta = (samples, *meta)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        q, k, lse = ctx.saved_tensors
        (r, d), c = q.shape, len(k)
        g = grad_loss.float().contiguous()
        dq = torch.empty(r, d, device=q.device, dtype=torch.float32)
        dk = torch.empty(c, d, device=q.device, dtype=torch.float32)
        block_m, block_n, block_d = _blocks(d, q.dtype)
        args = (r, c, d, *ctx.meta, q.stride(0), k.stride(0))
        blocks = dict(
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, UPCAST=_upcast(q.dtype),
            PREC=_precision(),
        )  # fmt: skip
        with launch_guard(q):
            _bwd_dq[(triton.cdiv(r, block_m),)](q, k, lse, g, dq, *args, **blocks)
            _bwd_dk[(triton.cdiv(c, block_n),)](q, k, lse, g, dk, *args, **blocks)
        return dq.to(q.dtype), dk.to(k.dtype), None, None, None, None, None


@no_autocast
def info_nce_triton(
    z: torch.Tensor,
    temperature: float,
    *,
    extra_negatives: torch.Tensor | None = None,
    relic_alpha: float = 0.0,
    keys: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Same loss as ``info_nce_reference``. Normalisation runs in float32 (torch); the kernels
    take the normalised rows in the input dtype (fp32, or bf16/fp16 for tensor-core dots) and
    accumulate in float32. The ReLIC term falls back to the tiled plain-torch implementation."""
    v, n, _ = _check(z, extra_negatives, keys, offset)
    rows, extra = _normalised(z, extra_negatives)
    key_rows = _key_rows(z, rows, keys)
    kernel_dtype = z.dtype if z.dtype in (torch.float16, torch.bfloat16) else torch.float32
    q = rows.to(kernel_dtype).contiguous()
    kr = q if keys is None else key_rows.to(kernel_dtype)
    k = torch.cat([kr, extra.to(kernel_dtype)]).contiguous()
    samples = len(key_rows) // v
    loss = _NTXentRows.apply(q, k, n, samples, offset, len(key_rows), float(temperature)).mean()
    if relic_alpha:
        relic = relic_term_tiled(
            rows, extra, v, temperature, key_rows=None if keys is None else key_rows
        )
        loss = loss + relic_alpha * relic
    return loss
