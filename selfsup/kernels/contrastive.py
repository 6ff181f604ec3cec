"""InfoNCE / NT-Xent over V >= 2 views per sample, with optional extra negatives and ReLIC term.

Three implementations share one signature ``(z, temperature, *, extra_negatives, relic_alpha)``:

- ``info_nce_reference``: the readable definition (materialises every similarity matrix).
- ``info_nce_tiled``: plain torch, processes anchor rows in chunks and column tiles with an
  online log-sum-exp, so no [VN, VN] matrix ever exists; backward recomputes the tiles.
- ``info_nce_triton`` (``contrastive_triton.py``): the same tiling as fused Triton kernels.

``info_nce`` dispatches between them.

Across ranks (SimCLR's global negatives): pass ``keys``, every rank's ``z`` gathered along
the sample axis with ``selfsup.distributed.gather_with_grad`` ([V, N_global, D]), and
``offset``, where this rank's samples start in it. The anchors stay the local rows; their
candidates are every gathered row except themselves (plus the extra negatives), their
positives are the other views of the same sample. The loss is the mean over the local
anchors, so under DDP's gradient averaging W ranks compute exactly the single-process loss
on the global batch. Without ``keys`` the candidates are z's own rows (one process).

Definitions (z: [V, N, D]; every embedding is L2-normalised; t is the temperature):

- Rows: the V*N anchors ``f = normalize(z).reshape(V*N, D)``; row ``i`` is view ``i // N`` of
  sample ``i % N``. Candidates of an anchor: every other row (self excluded) plus the M
  ``extra_negatives`` (normalised; e.g. a MoCo queue or keys from other ranks). Extra negatives
  are never positives and are never anchors.
- NT-Xent: for anchor i, ``lse_i = logsumexp_k f_i.c_k / t`` over its candidates; its loss is
  the mean over its V-1 positives p (other views of the same sample) of ``lse_i - f_i.f_p / t``;
  the NT-Xent term is the mean over anchors.
- ReLIC / ReLICv2 invariance term (methods.md A.7). For an ordered pair of distinct views
  (a, b) and a sample n, the anchor ``f_a[n]`` predicts which sample of view b it came from:
  ``p_ab(m | n) = softmax_m f_a[n].c^b_m / t`` over the candidate set ``c^b = [f_b[0..N-1];
  extra_negatives]`` (N + M candidates; the positive is m = n). Its partner distribution
  ``p_ba(. | n)`` uses anchor ``f_b[n]`` over ``c^a = [f_a; extra_negatives]``, so candidate m
  means "sample m" (or extra negative m - N) in both and the two distributions are aligned.
  Following the ReLICv2 loss ``KL(p(.|x^l) || sg[p(.|x^l')])``, the term for (a, b, n) is
  ``KL(p_ab(.|n) || sg[p_ba(.|n)]) = sum_m p_ab(m) (log p_ab(m) - log p_ba(m))`` with the
  stop-gradient on the target ``p_ba`` (no gradient reaches it). The ReLIC term is the mean over
  the V(V-1) ordered view pairs and the N samples, and the returned loss is
  ``nt_xent + relic_alpha * relic``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.kernels import no_autocast, triton_available

IMPLS = ("auto", "reference", "tiled", "triton")


def _check(
    z: torch.Tensor,
    extra_negatives: torch.Tensor | None,
    keys: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[int, int, int]:
    if z.dim() != 3:
        raise ValueError(f"info_nce expects z of shape [V, N, D], got {tuple(z.shape)}")
    v, n, d = z.shape
    if v < 2:
        raise ValueError(f"info_nce needs at least 2 views per sample, got {v}")
    if extra_negatives is not None and (
        extra_negatives.dim() != 2 or extra_negatives.shape[1] != d
    ):
        raise ValueError(
            f"extra_negatives must have shape [M, {d}] to match z's D, "
            f"got {tuple(extra_negatives.shape)}"
        )
    if keys is not None:
        if keys.dim() != 3 or keys.shape[0] != v or keys.shape[2] != d:
            raise ValueError(
                f"keys must have shape [{v}, N_global, {d}] to match z, got {tuple(keys.shape)}"
            )
        if not 0 <= offset <= keys.shape[1] - n:
            raise ValueError(
                f"offset {offset} does not place z's {n} samples inside keys' {keys.shape[1]}"
            )
    elif offset:
        raise ValueError("offset needs keys (z's samples inside the gathered keys)")
    return v, n, d


def _normalised(
    z: torch.Tensor, extra_negatives: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [V*N, D] and extra negatives [M, D], L2-normalised, in float32 at least."""
    v, n, d = z.shape
    dtype = torch.promote_types(z.dtype, torch.float32)
    if extra_negatives is not None:
        dtype = torch.promote_types(dtype, extra_negatives.dtype)
    rows = F.normalize(z.to(dtype).reshape(v * n, d), dim=1)
    if extra_negatives is None:
        extra = rows.new_zeros(0, d)
    else:
        extra = F.normalize(extra_negatives.to(dtype), dim=1)
    return rows, extra


def _key_rows(z: torch.Tensor, rows: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
    """The candidate rows [V*N_global, D]: ``rows`` themselves, or the normalised ``keys``."""
    if keys is None:
        return rows
    return F.normalize(keys.to(rows.dtype).reshape(-1, keys.shape[-1]), dim=1)


def _key_index(r: torch.Tensor, n: int, n_global: int, offset: int) -> torch.Tensor:
    """Where anchor row r (view r // n of local sample r % n) sits among the key rows."""
    return (r // n) * n_global + offset + r % n


@no_autocast
def info_nce_reference(
    z: torch.Tensor,
    temperature: float,
    *,
    extra_negatives: torch.Tensor | None = None,
    relic_alpha: float = 0.0,
    keys: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """NT-Xent loss of ``z`` [V, N, D] (+ ``relic_alpha`` * ReLIC term); see the module doc.

    Readable and float64-capable (computes in float32 at least); materialises [VN, VN' + M]
    (N' = N_global with ``keys``).
    """
    v, n, _ = _check(z, extra_negatives, keys, offset)
    rows, extra = _normalised(z, extra_negatives)
    key_rows = _key_rows(z, rows, keys)
    n_global = len(key_rows) // v
    logits = rows @ torch.cat([key_rows, extra]).T / temperature
    r = torch.arange(v * n, device=z.device)
    self_col = _key_index(r, n, n_global, offset)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[r, self_col] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    sample = offset + r % n
    positive = sample[:, None] == torch.arange(v * n_global, device=z.device)[None, :] % n_global
    positive = F.pad(positive, (0, len(extra))) & ~self_mask
    loss = -(log_prob.masked_fill(~positive, 0.0).sum(1) / (v - 1)).mean()
    if relic_alpha:
        views = rows.reshape(v, n, -1)
        key_views = key_rows.reshape(v, n_global, -1)
        terms = []
        for a in range(v):
            for b in range(v):
                if a == b:
                    continue
                log_p = torch.log_softmax(
                    views[a] @ torch.cat([key_views[b], extra]).T / temperature, 1
                )
                target = views[b] @ torch.cat([key_views[a], extra]).T / temperature
                log_q = torch.log_softmax(target.detach(), 1)
                terms.append((log_p.exp() * (log_p - log_q)).sum(1).mean())
        loss = loss + relic_alpha * torch.stack(terms).mean()
    return loss


# ---------------------------------------------------------------------------------------------
# Tiled plain-torch implementation


def _tiles(size: int, block: int):
    for start in range(0, size, block):
        yield start, min(start + block, size)


def _self_mask(r0: int, r1: int, c0: int, c1: int, self_map, device) -> torch.Tensor | None:
    """Where a row's own key column falls inside the tile [r0:r1, c0:c1], or None if nowhere.

    ``self_map`` = (n, n_global, offset): row r's own column is ``_key_index(r, ...)``, which
    grows with r, so the tile is skipped on the host (no synchronisation) when it cannot hold
    one. ``None``: no self column (the ReLIC target sets)."""
    if self_map is None:
        return None
    n, n_global, offset = self_map

    def key(r: int) -> int:
        return (r // n) * n_global + offset + r % n

    if key(r1 - 1) < c0 or key(r0) >= c1:
        return None
    own = _key_index(torch.arange(r0, r1, device=device), n, n_global, offset)
    return own[:, None] == torch.arange(c0, c1, device=device)[None, :]


class _RowLogSumExp(torch.autograd.Function):
    """``lse_i = logsumexp_k q_i . k_k * scale`` over all k, except row i's own column
    (``self_map``, see ``_self_mask``; None: every k).

    Forward keeps, per anchor row, a running maximum and a running sum of exponentials over
    column tiles; only the [R] result is saved. Backward recomputes each tile's softmax from the
    saved lse: d lse_i / d s_ik = p_ik.
    """

    @staticmethod
    @no_autocast
    def forward(ctx, q, k, scale, self_map, row_block, col_block):
        lse = q.new_empty(len(q))
        for r0, r1 in _tiles(len(q), row_block):
            qb = q[r0:r1]
            run_max = q.new_full((r1 - r0,), float("-inf"))
            run_sum = q.new_zeros(r1 - r0)
            for c0, c1 in _tiles(len(k), col_block):
                s = (qb @ k[c0:c1].T) * scale
                mask = _self_mask(r0, r1, c0, c1, self_map, q.device)
                if mask is not None:
                    s.masked_fill_(mask, float("-inf"))
                new_max = torch.maximum(run_max, s.amax(1))
                # a row whose candidates so far are all masked keeps max -inf: shift by 0 then
                shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
                run_sum = run_sum * torch.exp(run_max - shift) + torch.exp(s - shift[:, None]).sum(
                    1
                )
                run_max = new_max
            lse[r0:r1] = run_max + torch.log(run_sum)
        ctx.save_for_backward(q, k, lse)
        ctx.scale, ctx.self_map = scale, self_map
        ctx.row_block, ctx.col_block = row_block, col_block
        return lse

    @staticmethod
    @no_autocast
    def backward(ctx, grad_lse):
        q, k, lse = ctx.saved_tensors
        dq, dk = torch.zeros_like(q), torch.zeros_like(k)
        for r0, r1 in _tiles(len(q), ctx.row_block):
            qb = q[r0:r1]
            for c0, c1 in _tiles(len(k), ctx.col_block):
                s = (qb @ k[c0:c1].T) * ctx.scale
                mask = _self_mask(r0, r1, c0, c1, ctx.self_map, q.device)
                if mask is not None:
                    s.masked_fill_(mask, float("-inf"))
                w = torch.exp(s - lse[r0:r1, None]) * (grad_lse[r0:r1, None] * ctx.scale)
                dq[r0:r1] += w @ k[c0:c1]
                dk[c0:c1] += w.T @ qb
        return dq, dk, None, None, None, None


class _RelicKL(torch.autograd.Function):
    """Per row n: ``KL(softmax(q_n . k * scale) || softmax(tq_n . tk * scale))``, tiled.

    ``tq``/``tk`` give the (stop-gradient) target logits and get no gradient. Forward keeps, per
    row, running maxima and sums of both softmaxes plus ``sum_m exp(lp_m - max) (lp_m - lq_m)``,
    so KL = that / sum - lse_p + lse_q. Backward, with p fixed-target KL:
    d KL / d lp_m = p_m (log p_m - log q_m - KL).
    """

    @staticmethod
    @no_autocast
    def forward(ctx, q, k, tq, tk, scale, row_block, col_block):
        n = len(q)
        lse_p, lse_q, kl = q.new_empty(n), q.new_empty(n), q.new_empty(n)
        for r0, r1 in _tiles(n, row_block):
            max_p = q.new_full((r1 - r0,), float("-inf"))
            max_q = max_p.clone()
            sum_p, sum_q, acc = q.new_zeros(r1 - r0), q.new_zeros(r1 - r0), q.new_zeros(r1 - r0)
            for c0, c1 in _tiles(len(k), col_block):
                lp = (q[r0:r1] @ k[c0:c1].T) * scale
                lq = (tq[r0:r1] @ tk[c0:c1].T) * scale
                new_p = torch.maximum(max_p, lp.amax(1))
                new_q = torch.maximum(max_q, lq.amax(1))
                decay = torch.exp(max_p - new_p)
                e = torch.exp(lp - new_p[:, None])
                sum_p = sum_p * decay + e.sum(1)
                acc = acc * decay + (e * (lp - lq)).sum(1)
                sum_q = sum_q * torch.exp(max_q - new_q) + torch.exp(lq - new_q[:, None]).sum(1)
                max_p, max_q = new_p, new_q
            lse_p[r0:r1] = max_p + torch.log(sum_p)
            lse_q[r0:r1] = max_q + torch.log(sum_q)
            kl[r0:r1] = acc / sum_p - lse_p[r0:r1] + lse_q[r0:r1]
        ctx.save_for_backward(q, k, tq, tk, lse_p, lse_q, kl)
        ctx.scale, ctx.row_block, ctx.col_block = scale, row_block, col_block
        return kl

    @staticmethod
    @no_autocast
    def backward(ctx, grad_kl):
        q, k, tq, tk, lse_p, lse_q, kl = ctx.saved_tensors
        dq, dk = torch.zeros_like(q), torch.zeros_like(k)
        for r0, r1 in _tiles(len(q), ctx.row_block):
            for c0, c1 in _tiles(len(k), ctx.col_block):
                log_p = (q[r0:r1] @ k[c0:c1].T) * ctx.scale - lse_p[r0:r1, None]
                log_q = (tq[r0:r1] @ tk[c0:c1].T) * ctx.scale - lse_q[r0:r1, None]
                w = torch.exp(log_p) * (log_p - log_q - kl[r0:r1, None])
                w = w * (grad_kl[r0:r1, None] * ctx.scale)
                dq[r0:r1] += w @ k[c0:c1]
                dk[c0:c1] += w.T @ q[r0:r1]
        return dq, dk, None, None, None, None, None


def _positive_logit_mean(rows: torch.Tensor, v: int, n: int, temperature: float) -> torch.Tensor:
    """Per anchor, the mean over its V-1 positives of f_i.f_p / t, in O(V N D)."""
    views = rows.reshape(v, n, -1)
    others = views.sum(0, keepdim=True) - views  # for each anchor: sum of its positives
    return (views * others).sum(-1).reshape(-1) / ((v - 1) * temperature)


@no_autocast
def relic_term_tiled(
    rows: torch.Tensor,
    extra: torch.Tensor,
    v: int,
    temperature: float,
    row_block: int = 1024,
    col_block: int = 4096,
    key_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ReLIC term (module doc) from normalised rows [V*N, D] and extras [M, D], tiled;
    ``key_rows`` [V*N_global, D]: the candidates' rows when they are gathered from every rank."""
    views = rows.reshape(v, -1, rows.shape[1])
    key_views = views if key_rows is None else key_rows.reshape(v, -1, rows.shape[1])
    terms = []
    for a in range(v):
        for b in range(v):
            if a == b:
                continue
            kl = _RelicKL.apply(
                views[a],
                torch.cat([key_views[b], extra]),
                views[b].detach(),
                torch.cat([key_views[a], extra]).detach(),
                1.0 / temperature,
                row_block,
                col_block,
            )
            terms.append(kl.mean())
    return torch.stack(terms).mean()


@no_autocast
def info_nce_tiled(
    z: torch.Tensor,
    temperature: float,
    *,
    extra_negatives: torch.Tensor | None = None,
    relic_alpha: float = 0.0,
    keys: torch.Tensor | None = None,
    offset: int = 0,
    row_block: int = 1024,
    col_block: int = 4096,
) -> torch.Tensor:
    """Same loss as ``info_nce_reference``, never materialising more than a [row_block,
    col_block] tile of similarities. fp32/bf16/fp16 inputs are computed in float32; gradients
    come back in the input dtype. Peak extra memory ~ a few tiles + O((VN' + M) D)."""
    v, n, _ = _check(z, extra_negatives, keys, offset)
    rows, extra = _normalised(z, extra_negatives)
    key_rows = _key_rows(z, rows, keys)
    self_map = (n, len(key_rows) // v, offset)
    lse = _RowLogSumExp.apply(
        rows, torch.cat([key_rows, extra]), 1.0 / temperature, self_map, row_block, col_block
    )
    # the positives (the sample's other views) are local rows, wherever the keys come from
    loss = (lse - _positive_logit_mean(rows, v, n, temperature)).mean()
    if relic_alpha:
        relic = relic_term_tiled(
            rows, extra, v, temperature, row_block, col_block, None if keys is None else key_rows
        )
        loss = loss + relic_alpha * relic
    return loss


# ---------------------------------------------------------------------------------------------
# Dispatch


def info_nce(
    z: torch.Tensor,
    temperature: float,
    *,
    extra_negatives: torch.Tensor | None = None,
    relic_alpha: float = 0.0,
    keys: torch.Tensor | None = None,
    offset: int = 0,
    impl: str = "auto",
) -> torch.Tensor:
    """The NT-Xent (+ ReLIC) loss used by the methods; see the module doc for the definition
    (``keys``/``offset``: candidates gathered from every rank).

    ``impl``: "auto" (Triton for CUDA tensors when triton imports, else tiled), "reference",
    "tiled" or "triton" (on CPU tensors this needs ``TRITON_INTERPRET=1`` set before
    ``selfsup.kernels.contrastive_triton`` is first imported).
    """
    if impl not in IMPLS:
        raise ValueError(f"info_nce impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    if impl == "auto":
        # the Triton kernels hold whole rows of D per program: D up to 256 (MAX_D there)
        fits = z.shape[-1] <= 256
        impl = "triton" if z.is_cuda and fits and triton_available() else "tiled"
    kwargs = dict(
        extra_negatives=extra_negatives, relic_alpha=relic_alpha, keys=keys, offset=offset
    )
    if impl == "reference":
        return info_nce_reference(z, temperature, **kwargs)
    if impl == "tiled":
        return info_nce_tiled(z, temperature, **kwargs)
    from selfsup.kernels.contrastive_triton import info_nce_triton

    return info_nce_triton(z, temperature, **kwargs)
