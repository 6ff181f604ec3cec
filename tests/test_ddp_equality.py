"""One process at global batch 2B against two processes at B each: the same training step.

The harness builds each method exactly as ``selfsup pretrain`` does (``build_model_and_optimizer``:
global BN, DDP, LARS) and feeds it the same global batch of views, rank-distinct (each rank
takes its own contiguous slice). It compares the loss (averaged over ranks, as logged), every
parameter's gradient after DDP's averaging, and every weight after 3 optimizer steps. Float64,
so that any difference left is a bug and not reduction order. A new method is covered by adding
its name (and the overrides sizing its heads) to ``METHODS``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.ranks import run_ranks

TINY_CONFIG = Path(__file__).with_name("tiny.yaml")  # no method section: any method.name
GLOBAL_BATCH = 8
STEPS = 3
TOL = 1e-5  # relative, per parameter (norm of the difference / norm of the reference)
# every registered method, with overrides that make its heads small (tests/test_methods.py
# checks that no registered method is missing here)
METHODS = {
    "simclr": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
    "simclrv2": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
    "barlow_twins": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
    "vicreg": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
    "byol": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=32",
             "method.base_momentum=0.9"],
    # shuffle-BN: 2 contiguous query groups and 2 interleaved key groups of the batch of 8
    "moco_v2": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.queue_size=24",
                "method.bn_groups=2", "train.sync_bn=false",
                "method.momentum=0.9"],
    "moco_v3": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=32",
                "method.base_momentum=0.9"],
    # the queue (one global batch) fills at step 0 and is used from step 1
    "swav": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.num_prototypes=10",
             "method.freeze_prototypes_iters=1", "method.queue_length=11",
             "method.epoch_queue_starts=0"],
    "relicv2": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=32",
                "method.base_momentum=0.9"],
    "rotnet": [],
    "jigsaw": ["method.num_permutations=10", "method.tile_dim=16"],
    "dino": ["method.out_dim=20", "method.hidden_dim=32", "method.bottleneck_dim=16",
             "method.base_momentum=0.9", "method.freeze_last_layer_epochs=0",
             "method.warmup_teacher_temp_epochs=1", "method.teacher_temp=0.07"],
}  # fmt: skip
BASE = [
    "model.arch=resnet18", "model.width=8", "model.small_input=true", "data.size=16",
    "train.device=cpu", "train.channels_last=false", "train.precision=fp32",
    f"train.batch_size={GLOBAL_BATCH}", "optim.warmup_epochs=0", "train.threads=1",
    # global BN for every method, so that the equality is exact (with per-process BN, as
    # RotNet's recipe has by default, each process normalises its own half of the batch)
    "train.sync_bn=true",
]  # fmt: skip


def _views(cfg, step: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """The global batch of step ``step``: one [V, G, 3, S, S] tensor per view size."""
    from selfsup.pipeline.recipes import recipe
    from selfsup.pipeline.views import group_by_size

    groups = group_by_size(recipe(cfg.data.recipe, cfg.data.size))
    gen = torch.Generator().manual_seed(1000 + step)
    shape = [(g.count, GLOBAL_BATCH, 3, g.size, g.size) for g in groups]
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shape]


def train_steps(
    rank: int, world: int, method: str, dtype: str = "float64", extra: tuple[str, ...] = ()
) -> dict:
    """Run STEPS steps on this rank's slice; the loss, gradients after step 1, final weights.
    ``extra``: overrides after the method's own."""
    from selfsup import distributed
    from selfsup.config import load_config
    from selfsup.trainer.build import build_model_and_optimizer, train_step

    old = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        cfg = load_config(TINY_CONFIG, [*BASE, f"method.name={method}", *METHODS[method], *extra])
        device = torch.device("cpu")
        model = build_model_and_optimizer(cfg, device)
        b = GLOBAL_BATCH // world
        losses, grads = [], None
        for step in range(STEPS):
            batch = _views(cfg, step, getattr(torch, dtype))
            views = [v[:, rank * b : (rank + 1) * b] for v in batch]
            loss = train_step(model, views, 0.5, device, step=step)
            losses.append(distributed.all_reduce_(loss.clone(), "mean").item())
            if step == 0:
                params = model.method.named_parameters()
                grads = {n: p.grad.clone() for n, p in params if p.grad is not None}
        # every parameter, EMA targets included
        weights = {n: p.detach().clone() for n, p in model.method.named_parameters()}
        return {"losses": losses, "grads": grads, "weights": weights}
    finally:
        torch.set_default_dtype(old)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative difference, with a floor for parameters whose exact gradient is zero (a bias
    followed by BatchNorm, e.g. BYOL's projector output before the predictor) and which hold
    only rounding noise (~1e-17 in float64)."""
    return ((a - b).norm() / b.norm().clamp(min=1e-9)).item()


def assert_same_training(one: dict, two: list[dict]) -> None:
    """Each rank of a 2-process run has the 1-process run's losses, gradients and weights."""
    for r, res in enumerate(two):
        for step, (a, b) in enumerate(zip(res["losses"], one["losses"], strict=True)):
            assert abs(a - b) <= TOL * abs(b), f"rank {r} step {step + 1}: loss {a} vs {b}"
        assert res["grads"].keys() == one["grads"].keys()
        bad = {n: _rel(g, one["grads"][n]) for n, g in res["grads"].items()}
        bad = {n: e for n, e in bad.items() if e > TOL}
        assert not bad, f"rank {r}: gradients differ after step 1: {bad}"
        bad = {n: _rel(w, one["weights"][n]) for n, w in res["weights"].items()}
        bad = {n: e for n, e in bad.items() if e > TOL}
        assert not bad, f"rank {r}: weights differ after {STEPS} steps: {bad}"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_processes_train_exactly_like_one(method):
    assert_same_training(train_steps(0, 1, method), run_ranks(train_steps, 2, method))
