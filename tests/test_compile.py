"""``train.compile``: the backbone compiled with torch.compile (in place, static shapes: one
graph per view size) trains like the eager one, and checkpoints keep their parameter names."""

import pytest
import torch

from tests.test_ddp_equality import BASE, METHODS, _views


@pytest.mark.slow
def test_compiled_and_eager_steps_agree_on_cpu():
    from selfsup.config import load_config
    from selfsup.trainer.build import build_model_and_optimizer, train_step

    results = {}
    for compiled in (False, True):
        # dino's recipe: two view sizes, so two graphs
        overrides = [*BASE, *METHODS["simclr"], "data.recipe=dino",
                     f"train.compile={str(compiled).lower()}"]  # fmt: skip
        cfg = load_config("default", overrides)
        model = build_model_and_optimizer(cfg, torch.device("cpu"))
        losses = [
            train_step(model, _views(cfg, step, torch.float32), 0.5, torch.device("cpu")).item()
            for step in range(2)
        ]
        results[compiled] = losses, model.method.state_dict()
    (eager, eager_state), (comp, comp_state) = results[False], results[True]
    assert comp_state.keys() == eager_state.keys()  # no "_orig_mod." prefixes
    # the second loss is computed after an optimizer step taken with the compiled backward
    for a, b in zip(comp, eager, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b), (comp, eager)
