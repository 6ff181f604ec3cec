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
