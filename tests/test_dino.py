"""DINO's schedules and state: teacher temperature warm-up, frozen last layer, the centre."""

import pytest
import torch

from selfsup.trainer.build import train_step
from tests.test_ddp_equality import _views
from tests.test_methods import _build


def test_teacher_temperature_warms_up_linearly():
    _, model = _build("dino", "method.warmup_teacher_temp_epochs=2", "method.teacher_temp=0.07")
    m = model.method
    m.steps_per_epoch = 10
    temps = []
    for step in (0, 10, 20, 50):
        m.step = step
        temps.append(m.teacher_temp())
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07], abs=1e-12)


def test_last_layer_frozen_then_trained_and_centre_follows_the_teacher():
    cfg, model = _build("dino", "method.freeze_last_layer_epochs=1")
    m = model.method
    m.steps_per_epoch = 2
    cpu = torch.device("cpu")
    w0 = m.head.last_layer.weight.detach().clone()
    train_step(model, _views(cfg, 0, torch.float32), 0.5, cpu, step=0)
    assert torch.equal(m.head.last_layer.weight, w0)  # no gradient: untouched by the optimizer
    assert m.center.abs().sum() > 0  # moved towards the teacher's mean output
    train_step(model, _views(cfg, 1, torch.float32), 0.5, cpu, step=2)
    assert not torch.equal(m.head.last_layer.weight, w0)


def test_head_batchnorm_option_normalises_the_hidden_layers_of_both_heads():
    """``use_bn_in_head`` (DINO's option, which the demo uses): BatchNorm after each hidden
    layer of the student's head and the teacher's, whose running statistics follow the
    student's; off by default as in DINO's ResNet recipe."""
    bns = lambda head: [x for x in head.mlp if isinstance(x, torch.nn.BatchNorm1d)]  # noqa: E731
    _, model = _build("dino")
    assert not bns(model.method.head)
    cfg, model = _build("dino", "method.use_bn_in_head=true")
    m = model.method
    assert len(bns(m.head)) == 2 and len(bns(m.teacher_head)) == 2
    m.steps_per_epoch = 1
    train_step(model, _views(cfg, 0, torch.float32), 0.5, torch.device("cpu"), step=0)
    assert bns(m.head)[0].weight.grad.abs().sum() > 0
    for s, t in zip(bns(m.head), bns(m.teacher_head), strict=True):
        assert torch.equal(s.running_mean, t.running_mean) and s.running_mean.abs().sum() > 0


def test_two_processes_train_like_one_with_batchnorm_in_the_head():
    from tests.ranks import run_ranks
    from tests.test_ddp_equality import assert_same_training, train_steps

    extra = ("method.use_bn_in_head=true",)
    one = train_steps(0, 1, "dino", "float64", extra)
    assert_same_training(one, run_ranks(train_steps, 2, "dino", "float64", extra))
