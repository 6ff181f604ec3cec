"""EMA targets: the momentum schedule, the foreach update, and BYOL's target after a step."""

import math

import torch
from torch import nn

from selfsup.trainer.ema import cosine_momentum, ema_update_, frozen_copy


def test_cosine_momentum_ramps_from_base_to_one():
    assert cosine_momentum(0.99, 0, 100) == 0.99
    assert math.isclose(cosine_momentum(0.99, 50, 100), 0.995)
    assert cosine_momentum(0.99, 100, 100) == 1.0
    assert cosine_momentum(0.99, 200, 100) == 1.0


def test_ema_update_is_the_formula_and_copies_buffers():
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(5, 4))  # moves the running statistics
    ema_update_(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-7)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        assert torch.equal(tb, ob)


def test_byol_target_follows_the_online_network_after_a_step():
    from tests.test_methods import _build

    cfg, model = _build("byol")
    from selfsup.trainer.build import train_step
    from tests.test_ddp_equality import _views

    method = model.method
    target_before = [p.clone() for p in method.target_projector.parameters()]
    method.total_steps = 10
    train_step(model, _views(cfg, 0, torch.float32), 0.5, torch.device("cpu"), step=3)
    m = cosine_momentum(cfg.method.base_momentum, 3, 10)
    for t, b, o in zip(method.target_projector.parameters(), target_before,
                       method.projector.parameters(), strict=True):  # fmt: skip
        assert torch.allclose(t, m * b + (1 - m) * o, atol=1e-6)


def test_moco_v2_enqueues_the_normalised_keys_and_wraps():
    import torch.nn.functional as F

    from selfsup.trainer.build import train_step
    from tests.test_ddp_equality import _views
    from tests.test_methods import _build

    cfg, model = _build("moco_v2", "method.queue_size=12")  # global batch 8: wraps at step 2
    method = model.method
    old = method.queue.clone()
    keys = []
    original = method.after_step

    def recording_after_step():
        keys.append(F.normalize(method._keys.float(), dim=1).clone())  # what forward computed
        original()

    method.after_step = recording_after_step
    for step in range(2):
        train_step(model, _views(cfg, step, torch.float32), 0.5, torch.device("cpu"), step=step)
    assert int(method.queue_ptr) == 16 % 12
    # step 0 wrote rows 0-7; step 1 wrote rows 8-11 and then 0-3
    assert torch.equal(method.queue[4:8], keys[0][4:8])
    assert torch.equal(method.queue[8:12], keys[1][:4])
    assert torch.equal(method.queue[0:4], keys[1][4:8])
    assert not torch.equal(method.queue, old)
