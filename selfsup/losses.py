"""Every method's loss as a pure function of plain tensors, for selfsup's methods and for any
other trainer.

Each function works in one process and, when ``torch.distributed`` is initialised, across
processes: called by every rank on its own rows, it returns this rank's part of the loss such
that the mean over ranks is the single-process loss on all rows, and such that the ranks'
gradients, averaged as ``DistributedDataParallel`` does, are the single-process gradient. Two
patterns (see ``selfsup.distributed``):

- local rows (NT-Xent anchors, BYOL, MoCo, ReLICv2, SwAV, DINO, VICReg's invariance term):
  the mean over this rank's rows; batch-wide terms go through ``gather_with_grad``;
- batch statistics (Barlow Twins' BatchNorm and cross-correlation, VICReg's variance and
  covariance): every rank computes the same global value through ``all_reduce_with_grad`` /
  ``gather_with_grad``, whose backward sums over ranks.

Losses compute in float32 at least (float64 inputs stay float64), whatever autocast context
the caller is in. Shapes: N is this rank's number of samples, D an embedding width, K a
number of prototypes (SwAV) or output dimensions (DINO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import distributed
from selfsup.kernels import no_autocast
from selfsup.kernels.contrastive import info_nce

__all__ = [
    "barlow_twins",
    "byol",
    "dino",
    "dino_center",
    "distillation",
    "info_nce",
    "moco",
    "moco_v3",
    "nt_xent",
    "relicv2",
    "swav",
    "vicreg",
]


def _f32(*xs: torch.Tensor) -> list[torch.Tensor]:
    dtype = torch.promote_types(xs[0].dtype, torch.float32)
    return [x.to(dtype) for x in xs]


def nt_xent(z: torch.Tensor, temperature: float, *, gather: bool = True) -> torch.Tensor:
    """SimCLR's NT-Xent over ``z`` [V, N, D] (V >= 2 views of N samples):
    ``mean_i mean_{p pos of i} [-log exp(s_ip / t) / sum_{k != i} exp(s_ik / t)]`` with cosine
    similarities s. With ``gather`` and a process group, this rank's anchors see every rank's
    rows as candidates (SimCLR's global negatives); the tiled/Triton kernels never build the
    full matrix. See ``selfsup.kernels.contrastive`` for ``info_nce`` (extra negatives, the
    ReLIC term, implementations)."""
    if not gather or distributed.world_size() == 1:
        return info_nce(z, temperature)
    keys = distributed.gather_with_grad(z, dim=1)
    return info_nce(z, temperature, keys=keys, offset=distributed.rank() * z.shape[1])


def _global_rows(z: torch.Tensor) -> torch.Tensor:
    """The number of rows over every rank, as a tensor on z's device (no host sync)."""
    return distributed.all_reduce_(torch.tensor(float(len(z)), dtype=z.dtype, device=z.device))


def _global_standardise(z: torch.Tensor, n: torch.Tensor, eps: float) -> torch.Tensor:
    """``(z - mean) / sqrt(var + eps)`` per column over every rank's ``n`` rows (BatchNorm
    without affine, biased variance)."""
    mean = distributed.all_reduce_with_grad(z.sum(0)) / n
    var = distributed.all_reduce_with_grad((z - mean).square().sum(0)) / n
    return (z - mean) / torch.sqrt(var + eps)


@no_autocast
def barlow_twins(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5
) -> torch.Tensor:
    """Barlow Twins: ``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2`` with the
    cross-correlation ``C = BN(z1)^T BN(z2) / N`` [D, D].

    ``z1``, ``z2``: [N, D] projections of two views, *before* the normalisation: BN here is
    BatchNorm without affine over the global batch (biased variance, ``eps``), and N is the
    global batch. Across ranks C is summed with an autograd-aware all-reduce (the official
    code's raw all_reduce leaves gradients W times too small); every rank returns the same
    value."""
    z1, z2 = _f32(z1, z2)
    n = _global_rows(z1)
    a = _global_standardise(z1, n, eps)
    b = _global_standardise(z2, n, eps)
    c = distributed.all_reduce_with_grad(a.T @ b) / n
    on_diag = (torch.diagonal(c) - 1).square().sum()
    off_diag = c.square().sum() - torch.diagonal(c).square().sum()
    return on_diag + lambd * off_diag


@no_autocast
def vicreg(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg: ``sim_coeff * s + std_coeff * v + cov_coeff * c`` for ``z1``, ``z2`` [N, D].

    - invariance ``s``: mean squared error between z1 and z2 (over rows and columns);
    - variance ``v = mean_j relu(1 - sqrt(Var(x_j) + eps)) / 2 + the same for y``;
    - covariance ``c = sum_{i != j} Cov(x)_ij^2 / D + the same for y``, with
      ``Cov(x) = x_c^T x_c / (N - 1)`` on centred rows;

    where x, y are z1, z2 gathered from every rank with gradients (N the global batch), as the
    official code does."""
    z1, z2 = _f32(z1, z2)
    repr_loss = F.mse_loss(z1, z2)
    x = distributed.gather_with_grad(z1)
    y = distributed.gather_with_grad(z2)
    n, d = x.shape
    x = x - x.mean(0)
    y = y - y.mean(0)
    std_x = torch.sqrt(x.var(0) + eps)
    std_y = torch.sqrt(y.var(0) + eps)
    std_loss = F.relu(1 - std_x).mean() / 2 + F.relu(1 - std_y).mean() / 2
    cov_x = x.T @ x / (n - 1)
    cov_y = y.T @ y / (n - 1)

    def off_diagonal_sq(c: torch.Tensor) -> torch.Tensor:
        return c.square().sum() - torch.diagonal(c).square().sum()

    cov_loss = (off_diagonal_sq(cov_x) + off_diagonal_sq(cov_y)) / d
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


@no_autocast
def byol(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss: the mean over rows of ``2 - 2 cos(p, z)`` for predictions ``p``
    [N, D] and targets ``z`` [N, D]; ``z`` is detached here (the stop-gradient). Symmetrise by
    adding ``byol(p2, z1)``."""
    p, z = _f32(p, z)
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


@no_autocast
def moco(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo (v1/v2) InfoNCE with a queue: ``-log exp(q.k / t) / (exp(q.k / t) +
    sum_m exp(q.queue_m / t))``, averaged over rows. ``q``, ``k`` [N, D] (queries and their
    momentum keys), ``queue`` [K, D] of negatives; all L2-normalised here; keys and queue get
    no gradient."""
    q, k, queue = _f32(q, k, queue)
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    queue = F.normalize(queue.detach(), dim=1)
    positive = (q * k).sum(1, keepdim=True)
    logits = torch.cat([positive, q @ queue.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@no_autocast
def moco_v3(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's in-batch InfoNCE for one direction: queries ``q`` [N, D] against the momentum
    keys ``k`` [N, D] of every rank (gathered, no gradient; the positive of row i is this rank's
    key i), cross-entropy scaled by ``2 * temperature``, both L2-normalised here. Symmetrise
    with ``moco_v3(q2, k1, t)``."""
    q, k = _f32(q, k)
    q = F.normalize(q, dim=1)
    keys = distributed.gather_no_grad(F.normalize(k.detach(), dim=1))
    logits = q @ keys.T / temperature
    labels = torch.arange(len(q), device=q.device) + distributed.rank() * len(q)
    return F.cross_entropy(logits, labels) * (2 * temperature)


@no_autocast
def relicv2(
    online: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 0.1,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> torch.Tensor:
    """ReLICv2's loss (Tomasev et al. 2022, methods.md A.7). ``online`` [V, N, D]: the online
    network's outputs for every crop, the first L being the large crops; ``target`` [L, N, D]:
    the EMA target's outputs for the large crops (no gradient; gathered from every rank here).
    Both are L2-normalised inside.

    For online crop i, large crop j and sample n, ``p_ij(m | n) = softmax_m <o_i[n], t_j[m]> /
    temperature`` over the targets of every sample m of the (global) batch; sample n's own target
    is the positive. Each pair (i, j), the i = j pairs of large crops included as in the paper's
    pseudo-code, contributes ``alpha * -log p_ij(n | n) + beta * KL(p_ij(.|n) || sg[p_jj(.|n)])``:
    the contrastive term, and the invariance term pulling the crop's distribution over the
    candidates towards the large crop j's own (online j against the same targets; zero when
    i = j). The loss is the mean over rows, summed over the V x L pairs and divided by V * L,
    as the pseudo-code normalises ("loss /= (num_large + num_small) * num_large").
    """
    online, target = _f32(online, target)
    v, n, _ = online.shape
    o = F.normalize(online, dim=-1)
    t = distributed.gather_no_grad(F.normalize(target.detach(), dim=-1), dim=1)  # [L, Ng, D]
    labels = torch.arange(n, device=o.device) + distributed.rank() * n
    total = online.new_zeros(())
    for j in range(len(t)):
        log_p = F.log_softmax(o @ t[j].T / temperature, dim=-1)  # [V, N, Ng]: every crop vs t_j
        partner = log_p[j].detach()  # p_jj, no gradient
        for i in range(v):
            nll = F.nll_loss(log_p[i], labels)
            kl = (log_p[i].exp() * (log_p[i] - partner)).sum(-1).mean()
            total = total + alpha * nll + beta * kl
    return total / (v * len(t))


@no_autocast
def swav(scores: torch.Tensor, codes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped prediction. ``scores`` [V, N, K]: every crop's prototype scores
    (normalised embeddings times normalised prototypes); ``codes`` [A, N, K]: the Sinkhorn codes
    of the first A crops (A = 2: the large crops; no gradient). For each assigned crop s and
    every other crop t: ``-sum_k codes[s, n, k] log softmax(scores[t, n] / temperature)_k``,
    averaged over rows and the V - 1 other crops, then over the A assigned crops."""
    scores, codes = _f32(scores, codes)
    v, a = len(scores), len(codes)
    log_p = F.log_softmax(scores / temperature, dim=-1)  # [V, N, K]
    total = scores.new_zeros(())
    for s in range(a):
        others = [t for t in range(v) if t != s]
        ce = -(codes[s].detach() * log_p[others]).sum(-1)  # [V-1, N]
        total = total + ce.mean()
    return total / a


@no_autocast
def dino(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO's cross-entropy. ``student`` [Vs, N, K]: the student's outputs for every crop, the
    first Vt being the teacher's crops; ``teacher`` [Vt, N, K] (no gradient); ``center`` [K].
    ``P_t = softmax((teacher - center) / teacher_temp)``, ``log P_s = log_softmax(student /
    student_temp)``; the loss is ``-sum_k P_t[i] log P_s[v]`` averaged over rows and over every
    pair (teacher crop i, student crop v != i)."""
    student, teacher, center = _f32(student, teacher, center)
    p_t = F.softmax((teacher.detach() - center) / teacher_temp, dim=-1)
    log_p_s = F.log_softmax(student / student_temp, dim=-1)
    total, terms = student.new_zeros(()), 0
    for i in range(len(teacher)):
        for v in range(len(student)):
            if v == i:
                continue
            total = total + (-(p_t[i] * log_p_s[v]).sum(-1)).mean()
            terms += 1
    return total / terms


@torch.no_grad()
def dino_center(teacher: torch.Tensor, center: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """DINO's next centre: ``momentum * center + (1 - momentum) * mean of the teacher outputs``
    [Vt, N, K] over every row of every rank (all-reduced). Returns a new tensor."""
    total = distributed.all_reduce_(teacher.float().sum((0, 1)))
    count = _global_rows(teacher.flatten(0, 1).float())
    return center * momentum + total / count * (1 - momentum)


def distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Knowledge distillation (SimCLRv2's step 3): the cross-entropy between the teacher's and
    the student's class distributions softened by ``temperature``,
    ``-sum_y softmax(t / T)_y * log softmax(s / T)_y``, averaged over this rank's rows and
    multiplied by ``T^2`` (Hinton et al.; SimCLRv2's released distillation code does the
    same; at high T it keeps the gradient's size about independent of T, while at T below 1
    it shrinks it: by 10x at SimCLRv2's 0.1). No gradient reaches the teacher.
    [N, C] logits each."""
    s, t = _f32(student_logits, teacher_logits.detach())
    target = F.softmax(t / temperature, dim=1)
    return -(target * F.log_softmax(s / temperature, dim=1)).sum(1).mean() * temperature**2
