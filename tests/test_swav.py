"""SwAV's prototypes: unit rows before every step, and no change while frozen."""

import torch

from selfsup.trainer.build import train_step
from tests.test_ddp_equality import _views
from tests.test_methods import _build


def test_prototypes_are_normalised_and_frozen_for_the_first_iterations():
    cfg, model = _build("swav", "method.freeze_prototypes_iters=2")
    w = model.method.prototypes.weight
    cpu = torch.device("cpu")
    train_step(model, _views(cfg, 0, torch.float32), 0.5, cpu, step=0)
    after_first = w.detach().clone()
    assert torch.allclose(after_first.norm(dim=1), torch.ones(len(w)), atol=1e-6)
    train_step(model, _views(cfg, 1, torch.float32), 0.5, cpu, step=1)
    # frozen: only renormalising unit rows (a no-op up to rounding)
    assert torch.allclose(w.detach(), after_first, atol=1e-6)
    train_step(model, _views(cfg, 2, torch.float32), 0.5, cpu, step=2)
    assert not torch.allclose(w.detach(), after_first, atol=1e-4)  # step 2 trains them


def test_codes_of_the_large_crops_sum_to_one_per_sample():
    from selfsup.kernels.sinkhorn import sinkhorn

    scores = torch.randn(16, 10)
    codes = sinkhorn(scores, 0.05, 3)
    assert torch.allclose(codes.sum(1), torch.ones(16), atol=1e-5)


def test_queue_is_rounded_to_the_global_batch_filled_then_used(monkeypatch):
    """queue_length 20 at global batch 8 -> 16 rows; pushing from epoch 1 (step 2 at two steps
    an epoch), used once full (step 4): the codes are then Sinkhorn's over [queue; batch]
    rows, the queue scored by the current prototypes, newest embeddings first."""
    import selfsup.trainer.methods.swav as swav_module
    from selfsup.kernels.sinkhorn import sinkhorn_reference

    cfg, model = _build("swav", "method.queue_length=20", "method.epoch_queue_starts=1")
    method = model.method
    method.steps_per_epoch = 2
    assert tuple(method.queue.shape) == (2, 16, cfg.method.proj_dim)
    seen = []
    real = swav_module.sinkhorn

    def spy(scores, epsilon, iterations, queue=None):
        w = method.prototypes.weight.detach().clone()  # as this step's forward sees them
        seen.append((method.step, None if queue is None else queue.clone(), scores.clone(), w))
        return real(scores, epsilon, iterations, queue)

    monkeypatch.setattr(swav_module, "sinkhorn", spy)
    cpu = torch.device("cpu")
    pushed = {}
    for step in range(5):
        before = method.queue.clone()
        train_step(model, _views(cfg, step, torch.float32), 0.1, cpu, step=step)
        changed = not torch.equal(before, method.queue)
        assert changed == (step >= 2), step  # pushing starts at epoch 1
        if changed:
            pushed[step] = method.queue[:, :8].clone()  # the newest global batch first
            assert torch.equal(method.queue[:, 8:], before[:, :8])
    queued = [(step, q, w) for step, q, _, w in seen if q is not None]
    assert [step for step, _, _ in queued] == [4, 4]  # both large crops, from step 4 on
    # at step 4 the queue held [step 3's rows; step 2's rows]
    rows = torch.cat([pushed[3], pushed[2]], dim=1)
    for crop, (_, q, w) in enumerate(queued):
        assert q.shape == (16, cfg.method.num_prototypes)
        torch.testing.assert_close(q, rows[crop] @ w.T)
    step4 = [s for step, _, s, _ in seen if step == 4]
    codes = real(step4[0], 0.05, 3, queued[0][1])
    expected = sinkhorn_reference(step4[0].double(), 0.05, 3, queued[0][1].double())
    torch.testing.assert_close(codes.double(), expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(codes, real(step4[0], 0.05, 3), atol=1e-3)  # the queue mattered


def test_queue_is_in_the_checkpoint():
    cfg, model = _build("swav", "method.queue_length=16", "method.epoch_queue_starts=0")
    train_step(model, _views(cfg, 0, torch.float32), 0.1, torch.device("cpu"), step=0)
    state = model.method.state_dict()
    assert "queue" in state and state["queue"].abs().sum() > 0
    _, other = _build("swav", "method.queue_length=16", "method.epoch_queue_starts=0")
    other.method.load_state_dict(state)
    assert torch.equal(other.method.queue, model.method.queue)
