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


_NARROW = """
import sys, torch
from selfsup.config import load_config
from selfsup.trainer import build
if sys.argv[1] == "unguarded":  # what the guard prevents, to show the test can fail
    build.narrow_shortcut = lambda cfg, device: None
cfg = load_config("tests/tiny.yaml", ["model.width=1", "model.small_input=false",
                  "data.size=224", "train.batch_size=16", f"train.compile={sys.argv[1] != 'eager'}",
                  "train.channels_last=false", "method.name=simclr"])
torch.manual_seed(0)
model = build.build_model_and_optimizer(cfg, torch.device("cpu"))
torch.manual_seed(0)
views = [torch.randn(2, 16, 3, 224, 224)]
for step in range(2):
    loss = build.train_step(model, views, 0.1, torch.device("cpu"), step=step)
print("loss", float(loss))
"""


@pytest.mark.slow
def test_a_compiled_narrow_resnet_trains_on_cpu(tmp_path):
    """inductor converts convolutions to channels_last by itself; torch's CPU backward of a
    narrow strided shortcut in that layout corrupts the heap, so a width-1 ResNet compiled
    on a CPU crashed. build compiles such a model without that layout change: it trains.
    Run in a child process, so that a crash fails this test instead of ending pytest."""
    import subprocess
    import sys

    env = {**__import__("os").environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    losses = {}
    for mode in ("guarded", "eager"):
        done = subprocess.run([sys.executable, "-c", _NARROW, mode], capture_output=True,
                              text=True, env=env, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        losses[mode] = float(done.stdout.split()[-1])
    # the second step's loss, after a step with the compiled backward, as the eager one's
    assert abs(losses["guarded"] - losses["eager"]) <= 1e-4 * abs(losses["eager"]), losses
