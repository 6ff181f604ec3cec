"""LARS against a per-parameter reference, parameter groups, optimiser registry, schedules."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.trainer.optim import (
    LARS,
    build_optimizer,
    cosine_ramp,
    param_groups,
    schedule_array,
    warmup_cosine,
)

LR, MOMENTUM, WD, ETA = 0.3, 0.9, 0.05, 0.02


def _model() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)]
    return nn.Sequential(*layers).double()


def _set_grads(model: nn.Module, step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _reference_lars(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    excluded: list[bool],
    bufs: list[torch.Tensor],
    lr: float,
    momentum: float,
    wd: float,
    eta: float,
) -> None:
    """The FB-family update written plainly, one parameter at a time, norms as Python floats."""
    for p, g, excl, buf in zip(params, grads, excluded, bufs, strict=True):
        if excl:
            d = g.clone()
        else:
            d = g + wd * p
            w_norm = math.sqrt(float((p * p).sum()))
            d_norm = math.sqrt(float((d * d).sum()))
            if w_norm > 0 and d_norm > 0:
                d = d * (eta * w_norm / d_norm)
        buf.mul_(momentum).add_(d)
        p.sub_(lr * buf)


@pytest.mark.parametrize("exclude_1d", [True, False])
@pytest.mark.parametrize("momentum", [MOMENTUM, 0.0])
def test_lars_matches_reference(exclude_1d: bool, momentum: float) -> None:
    model = _model()
    opt = LARS(param_groups(model, WD, exclude_1d), lr=LR, momentum=momentum, eta=ETA)
    ref = [p.detach().clone() for p in model.parameters()]
    excluded = [exclude_1d and p.ndim <= 1 for p in model.parameters()]
    bufs = [torch.zeros_like(p) for p in ref]
    for step in range(6):
        _set_grads(model, step)
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        _reference_lars(ref, grads, excluded, bufs, LR, momentum, WD, ETA)
        for p, r in zip(model.parameters(), ref, strict=True):
            torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-12)
    for p, buf in zip(model.parameters(), bufs, strict=True):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=1e-12, atol=1e-12)


def test_adaptation_is_applied() -> None:
    model = _model()
    weight = model[0].weight
    before = weight.detach().clone()
    _set_grads(model, 0)
    grad = weight.grad.clone()
    LARS(param_groups(model, 0.0), lr=1.0, eta=ETA).step()
    trust = ETA * before.norm() / grad.norm()
    torch.testing.assert_close(weight.detach(), before - trust * grad)


def test_excluded_params_get_no_weight_decay() -> None:
    model = _model()
    opt = LARS(param_groups(model, weight_decay=0.5), lr=1.0, eta=ETA)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, b in zip(model.parameters(), before, strict=True):
        if p.ndim <= 1:  # biases and BN: zero gradient, no decay -> they do not move
            assert torch.equal(p.detach(), b)
        else:  # weights decay: d = wd*w, trust = eta/wd, so w <- (1 - lr*eta) w
            torch.testing.assert_close(p.detach(), (1 - ETA) * b)


def test_zero_norms_do_not_produce_nan() -> None:
    zero_weight = nn.Parameter(torch.zeros(4, 3))
    still_weight = nn.Parameter(torch.ones(4, 3))
    zero_weight.grad = torch.ones(4, 3)
    still_weight.grad = torch.zeros(4, 3)
    opt = LARS([zero_weight, still_weight], lr=0.1, weight_decay=0.0)
    opt.step()
    # Zero weight norm -> trust 1: a plain SGD step; zero update norm -> no change.
    torch.testing.assert_close(zero_weight.detach(), torch.full((4, 3), -0.1))
    for _ in range(3):
        opt.step()
    assert torch.isfinite(zero_weight).all()
    assert torch.equal(still_weight.detach(), torch.ones(4, 3))


def test_step_leaves_gradients_untouched() -> None:
    model = _model()
    opt = LARS(param_groups(model, 0.0), lr=LR)
    _set_grads(model, 0)
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))


def test_state_dict_round_trip_resumes_exactly() -> None:
    def run(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
        for step in steps:
            _set_grads(model, step)
            opt.step()

    model = _model()
    opt = LARS(param_groups(model, WD), lr=LR, eta=ETA)
    run(model, opt, range(6))

    first = _model()
    first_opt = LARS(param_groups(first, WD), lr=LR, eta=ETA)
    run(first, first_opt, range(3))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert len(saved["opt"]["state"]) == len(list(first.parameters()))

    resumed = _model()
    resumed_opt = LARS(param_groups(resumed, WD), lr=LR, eta=ETA)
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    run(resumed, resumed_opt, range(3, 6))
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_param_groups_split_and_skip_frozen() -> None:
    model = _model()
    model[3].bias.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["name"] == "decay" and no_decay["name"] == "no_decay"
    assert decay["weight_decay"] == 0.1 and "lars_exclude" not in decay
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] is True
    assert [p.ndim for p in decay["params"]] == [2, 2]
    assert len(no_decay["params"]) == 3  # first bias, BN weight and bias; frozen bias skipped
    (single,) = param_groups(model, 0.1, exclude_1d=False)
    assert single["name"] == "decay" and len(single["params"]) == 5


@pytest.mark.parametrize(
    ("name", "cls"),
    [("lars", LARS), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)],
)
def test_build_optimizer_group_weight_decay_wins(name: str, cls: type) -> None:
    model = _model()
    opt = build_optimizer(name, param_groups(model, 0.1), lr=0.5, weight_decay=0.3)
    assert isinstance(opt, cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert all(g["lr"] == 0.5 for g in opt.param_groups)
    if name != "lars":
        assert opt.defaults["foreach"] is True
    bias = model[0].bias
    before = bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(bias.detach(), before)  # zero grad, no decay: the bias stays


def test_build_optimizer_defaults() -> None:
    opt = build_optimizer("lars", _model().parameters(), lr=1.0, weight_decay=1e-6)
    group = opt.param_groups[0]
    assert (group["momentum"], group["eta"], group["weight_decay"]) == (0.9, 0.001, 1e-6)
    assert group["lars_exclude"] is False
    adamw = build_optimizer(
        "adamw", _model().parameters(), lr=1.0, weight_decay=0.0, betas=(0.8, 0.9)
    )
    assert adamw.param_groups[0]["betas"] == (0.8, 0.9)


def test_build_optimizer_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adam'; choose one of \['lars'"):
        build_optimizer("adam", _model().parameters(), lr=0.1, weight_decay=0.0)
    with pytest.raises(ConfigError, match="eta"):
        LARS(_model().parameters(), lr=0.1, eta=0.0)


def test_warmup_cosine_values() -> None:
    kw = {"total_steps": 110, "warmup_steps": 10, "base": 1.0, "final": 0.001, "start": 0.3}
    assert warmup_cosine(0, **kw) == pytest.approx(0.3)
    assert warmup_cosine(5, **kw) == pytest.approx(0.65)
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)  # warmup end: base
    assert warmup_cosine(60, **kw) == pytest.approx(0.5005)  # cosine midpoint
    assert warmup_cosine(110, **kw) == pytest.approx(0.001)
    assert warmup_cosine(500, **kw) == pytest.approx(0.001)
    assert warmup_cosine(0, 100, 0, base=2.0) == pytest.approx(2.0)  # no warmup, final 0
    assert warmup_cosine(100, 100, 0, base=2.0) == pytest.approx(0.0)
    values = schedule_array(warmup_cosine, **kw)
    assert values.shape == (110,) and values.dtype == np.float64
    assert np.all(np.diff(values[:10]) > 0) and np.all(np.diff(values[10:]) < 0)
    assert values[60] == warmup_cosine(60, **kw)


def test_warmup_cosine_edge_cases() -> None:
    # A warmup longer than the run is cut short, not an error.
    assert warmup_cosine(3, total_steps=5, warmup_steps=10, base=1.0) == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="warmup_steps"):
        warmup_cosine(0, total_steps=5, warmup_steps=-1, base=1.0)


def test_cosine_ramp_endpoints() -> None:
    assert cosine_ramp(0, 100, base=0.996) == pytest.approx(0.996)
    assert cosine_ramp(50, 100, base=0.996) == pytest.approx(0.998)
    assert cosine_ramp(100, 100, base=0.996) == pytest.approx(1.0)
    assert cosine_ramp(150, 100, base=0.996) == pytest.approx(1.0)
    assert cosine_ramp(100, 100, base=0.04, final=0.07) == pytest.approx(0.07)
    taus = schedule_array(cosine_ramp, 100, base=0.99)
    assert taus[0] == pytest.approx(0.99) and np.all(np.diff(taus) > 0)


def test_lars_trains_a_model() -> None:
    torch.manual_seed(0)
    model = _model()
    x = torch.randn(64, 6, dtype=torch.float64)
    y = x[:, :3].argmax(1)  # a learnable labelling
    opt = build_optimizer("lars", param_groups(model, 1e-4), lr=2.0, weight_decay=1e-4)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_larc_ratio_and_update_follow_apex_larc():
    from selfsup.trainer.optim import LARS

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    w0 = w.detach().clone()
    w.grad = torch.randn(4, 3)
    g = w.grad.clone()
    opt = LARS([w], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.001, larc=True)
    opt.step()
    trust = 0.001 * w0.norm() / (g.norm() + 0.1 * w0.norm())  # apex LARC, clip=False
    assert torch.allclose(w.detach(), w0 - 0.5 * trust * (g + 0.1 * w0), atol=1e-7)


def test_biases_and_norms_take_their_own_learning_rate_and_weight_decay_can_follow_a_cosine():
    from selfsup.trainer.build import build_model_and_optimizer, train_step
    from tests.test_ddp_equality import _views
    from tests.test_methods import _build

    cfg, _ = _build("barlow_twins", "optim.lr=0.2", "optim.lr_1d=0.0048",
                    "optim.weight_decay=0.04", "optim.weight_decay_end=0.4")  # fmt: skip
    model = build_model_and_optimizer(cfg, torch.device("cpu"), total_steps=10)
    train_step(model, _views(cfg, 0, torch.float32), 1.0, torch.device("cpu"), step=5)
    groups = {g["name"]: g for g in model.optimizer.param_groups}
    assert groups["decay"]["lr"] == 1.0
    assert abs(groups["no_decay"]["lr"] - 0.0048 / 0.2) < 1e-12
    assert abs(groups["decay"]["weight_decay"] - (0.4 + (0.04 - 0.4) * 0.5)) < 1e-12
    assert groups["no_decay"]["weight_decay"] == 0.0
