"""``selfsup.losses``: each loss against a direct transcription of its paper's formula written
here (float64, loops where the paper sums), and each across 2 gloo processes on rank-distinct
rows against one process on all of them (the loss averaged over ranks, and each rank's input
gradient divided by W, as DDP averages)."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup import losses
from tests.ranks import run_ranks

N, D, K = 8, 6, 5


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- direct transcriptions --------------------------------------------------------------------


def barlow_formula(z1, z2, lambd):
    def bn(z):  # BatchNorm1d(affine=False) in training mode: biased variance, eps 1e-5
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)

    a, b = bn(z1), bn(z2)
    n, d = a.shape
    total = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[b_, i] * b[b_, j] for b_ in range(n)) / n
            total = total + ((1 - c_ij) ** 2 if i == j else lambd * c_ij**2)
    return total


def vicreg_formula(z1, z2, lam, mu, nu, eps):
    n, d = z1.shape
    s = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def v(z):
        return sum(max(0.0, 1 - math.sqrt(z[:, j].var(unbiased=True).item() + eps))
                   for j in range(d)) / d  # fmt: skip

    def c(z):
        zc = z - z.mean(0)
        cov = zc.T @ zc / (n - 1)
        return sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    return lam * s + mu * (v(z1) / 2 + v(z2) / 2) + nu * (c(z1) + c(z2))


def byol_formula(p, z):
    return sum(2 - 2 * (p[i] @ z[i]) / (p[i].norm() * z[i].norm()) for i in range(len(p))) / len(p)


def moco_formula(q, k, queue, t):
    total = 0.0
    for i in range(len(q)):
        qi = q[i] / q[i].norm()
        pos = torch.exp(qi @ (k[i] / k[i].norm()) / t)
        neg = sum(torch.exp(qi @ (m / m.norm()) / t) for m in queue)
        total = total - torch.log(pos / (pos + neg))
    return total / len(q)


def moco_v3_formula(q, k, t):
    total = 0.0
    for i in range(len(q)):
        logits = torch.stack([(q[i] / q[i].norm()) @ (kj / kj.norm()) / t for kj in k])
        total = total - torch.log_softmax(logits, 0)[i]
    return total / len(q) * 2 * t


def swav_formula(scores, codes, t):
    v, n, k = scores.shape
    total = 0.0
    for s in range(len(codes)):
        for u in range(v):
            if u == s:
                continue
            for i in range(n):
                p = torch.softmax(scores[u, i] / t, 0)
                total = total - sum(codes[s, i, j] * torch.log(p[j]) for j in range(k)) / n / (
                    v - 1
                )
    return total / len(codes)


def dino_formula(student, teacher, center, ts, tt):
    total, terms = 0.0, 0
    for i in range(len(teacher)):
        for v in range(len(student)):
            if v == i:
                continue
            for r in range(student.shape[1]):
                pt = torch.softmax((teacher[i, r] - center) / tt, 0)
                ps = torch.softmax(student[v, r] / ts, 0)
                total = total - (pt * torch.log(ps)).sum() / student.shape[1]
            terms += 1
    return total / terms


def relicv2_formula(o, t, tau, alpha, beta):
    """The paper's pseudo-code: sum over online crops i and large crops j of L(o_i, t_j), each
    -alpha log p(own target) + beta KL(p_i || p_j) over the targets of crop j, / (V * L)."""
    v, n, _ = o.shape

    def p(a, j, row):  # softmax over the targets of crop j, anchor o_a[row]
        u = o[a, row] / o[a, row].norm()
        logits = [u @ (t[j, m] / t[j, m].norm()) / tau for m in range(n)]
        return torch.softmax(torch.stack(logits), 0)

    total = 0.0
    for i in range(v):
        for j in range(len(t)):
            for r in range(n):
                pi, pj = p(i, j, r), p(j, j, r)
                kl = sum(pi[m] * (torch.log(pi[m]) - torch.log(pj[m])) for m in range(n))
                total = total + (alpha * -torch.log(pi[r]) + beta * kl) / n
    return total / (v * len(t))


def nt_xent_formula(z, t):
    v, n, _ = z.shape
    f = [z[a, i] / z[a, i].norm() for a in range(v) for i in range(n)]
    total = 0.0
    for a in range(v * n):
        denom = sum(torch.exp(f[a] @ f[b] / t) for b in range(v * n) if b != a)
        pos = [b for b in range(v * n) if b != a and b % n == a % n]
        total = total - sum(torch.log(torch.exp(f[a] @ f[b] / t) / denom) for b in pos) / len(pos)
    return total / (v * n)


# each case: the loss call on full-batch inputs, the formula, and how to split rows by rank
CASES = {
    "barlow_twins": (
        lambda x: losses.barlow_twins(x["z1"], x["z2"], lambd=0.0051),
        lambda x: barlow_formula(x["z1"], x["z2"], 0.0051),
        {"z1": 0, "z2": 0},
    ),
    "vicreg": (
        lambda x: losses.vicreg(x["z1"], x["z2"]),
        lambda x: vicreg_formula(x["z1"], x["z2"], 25.0, 25.0, 1.0, 1e-4),
        {"z1": 0, "z2": 0},
    ),
    "byol": (
        lambda x: losses.byol(x["p"], x["z"]),
        lambda x: byol_formula(x["p"], x["z"]),
        {"p": 0, "z": 0},
    ),
    "moco": (
        lambda x: losses.moco(x["q"], x["k"], x["queue"], 0.2),
        lambda x: moco_formula(x["q"], x["k"], x["queue"], 0.2),
        {"q": 0, "k": 0, "queue": None},
    ),
    "moco_v3": (
        lambda x: losses.moco_v3(x["q"], x["k"], 0.2),
        lambda x: moco_v3_formula(x["q"], x["k"], 0.2),
        {"q": 0, "k": 0},
    ),
    "swav": (
        lambda x: losses.swav(x["scores"], x["codes"], 0.1),
        lambda x: swav_formula(x["scores"], x["codes"], 0.1),
        {"scores": 1, "codes": 1},
    ),
    "dino": (
        lambda x: losses.dino(x["student"], x["teacher"], x["center"], 0.1, 0.04),
        lambda x: dino_formula(x["student"], x["teacher"], x["center"], 0.1, 0.04),
        {"student": 1, "teacher": 1, "center": None},
    ),
    "relicv2": (
        lambda x: losses.relicv2(x["online"], x["target"], 0.2, 0.7, 1.3),
        lambda x: relicv2_formula(x["online"], x["target"], 0.2, 0.7, 1.3),
        {"online": 1, "target": 1},
    ),
    "nt_xent": (
        lambda x: losses.nt_xent(x["z"], 0.2),
        lambda x: nt_xent_formula(x["z"], 0.2),
        {"z": 1},
    ),
}


def _inputs(name):
    codes = torch.softmax(_randn(2, N, K, seed=7) * 3, -1)
    return {
        "barlow_twins": lambda: {"z1": _randn(N, D, seed=1), "z2": _randn(N, D, seed=2) + 0.5},
        "vicreg": lambda: {"z1": _randn(N, D, seed=1) * 0.3, "z2": _randn(N, D, seed=2)},
        "byol": lambda: {"p": _randn(N, D, seed=1), "z": _randn(N, D, seed=2)},
        "moco": lambda: {
            "q": _randn(N, D, seed=1),
            "k": _randn(N, D, seed=2),
            "queue": _randn(11, D, seed=3),
        },  # fmt: skip
        "moco_v3": lambda: {"q": _randn(N, D, seed=1), "k": _randn(N, D, seed=2)},
        "swav": lambda: {"scores": _randn(4, N, K, seed=1), "codes": codes},
        "dino": lambda: {
            "student": _randn(4, N, K, seed=1),
            "teacher": _randn(2, N, K, seed=2),
            "center": _randn(K, seed=3) * 0.1,
        },  # fmt: skip
        "nt_xent": lambda: {"z": _randn(2, N, D, seed=1)},
        # 2 large + 2 small crops online, the 2 large ones through the target
        "relicv2": lambda: {"online": _randn(4, N, D, seed=1), "target": _randn(2, N, D, seed=2)},
    }[name]()


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_equals_the_papers_formula(name):
    fn, formula, _ = CASES[name]
    x = _inputs(name)
    got, want = fn(x), formula(x)
    assert got.dtype == torch.float64
    assert abs(got.item() - float(want)) <= 1e-6 * max(1.0, abs(float(want))), (got, want)


def _rank_worker(rank, world, name):
    fn, _, split = CASES[name]
    x = _inputs(name)
    local = {}
    for key, value in x.items():
        dim = split[key]
        if dim is None:
            local[key] = value
        else:
            b = value.shape[dim] // world
            local[key] = value.narrow(dim, rank * b, b).clone().requires_grad_(True)
    loss = fn(local)
    loss.backward()
    from selfsup import distributed

    mean = distributed.all_reduce_(loss.detach().clone(), "mean")
    grads = {k: v.grad for k, v in local.items() if split[k] is not None and v.grad is not None}
    return mean, grads


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_compute_the_single_process_loss_and_gradients(name):
    fn, _, split = CASES[name]
    x = {k: v.clone().requires_grad_(split[k] is not None) for k, v in _inputs(name).items()}
    want = fn(x)
    want.backward()
    world = 2
    for rank, (loss, grads) in enumerate(run_ranks(_rank_worker, world, name)):
        assert torch.allclose(loss, want.detach(), rtol=1e-10), (rank, loss, want)
        for key, g in grads.items():
            dim = split[key]
            b = x[key].shape[dim] // world
            full = x[key].grad.narrow(dim, rank * b, b)
            assert torch.allclose(g / world, full, rtol=1e-9, atol=1e-12), (rank, key)


def test_dino_center_is_the_global_mean_with_momentum():
    teacher = _randn(2, N, K, seed=4)
    center = _randn(K, seed=5)
    new = losses.dino_center(teacher, center, 0.9)
    assert torch.allclose(new, 0.9 * center + 0.1 * teacher.mean((0, 1)).float(), atol=1e-6)


def test_losses_ignore_the_callers_autocast():
    x = _inputs("barlow_twins")
    z1, z2 = x["z1"].float(), x["z2"].float()
    plain = losses.barlow_twins(z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = losses.barlow_twins(z1, z2)
    assert inside.dtype == torch.float32 and torch.equal(plain, inside)
