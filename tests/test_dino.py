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
