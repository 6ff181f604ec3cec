"""Generic tests over the method registry: a newly registered method is covered by each of them
once it is listed (with small heads) in ``tests.test_ddp_equality.METHODS``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from selfsup.trainer.methods import METHODS as REGISTRY
from tests.conftest import TINY_OVERRIDES
from tests.test_ddp_equality import BASE, METHODS, TINY_CONFIG, _views

NAMES = sorted(REGISTRY)


def _build(name, *extra):
    from selfsup.config import load_config
    from selfsup.trainer.build import build_model_and_optimizer

    cfg = load_config(TINY_CONFIG, [*BASE, f"method.name={name}", *METHODS[name], *extra])
    return cfg, build_model_and_optimizer(cfg, torch.device("cpu"))


def test_every_registered_method_is_covered():
    assert set(METHODS) == set(REGISTRY), "list the new method in tests.test_ddp_equality.METHODS"


@pytest.mark.parametrize("name", NAMES)
def test_the_method_declares_what_the_trainer_reads(name):
    from selfsup.pipeline.recipes import RECIPES

    cls = REGISTRY[name]
    assert cls.recipe in RECIPES and cls.min_views >= 1 and isinstance(cls.sync_bn, bool)
    assert sys.modules[cls.__module__].__doc__.strip().splitlines()[0].endswith(".")


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_trainable_parameter(name):
    cfg, model = _build(name)
    loss = model.forward(_views(cfg, 0, torch.float32))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in model.method.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing}"
    silent = [
        n for n, p in model.method.named_parameters() if p.requires_grad and p.grad.abs().sum() == 0
    ]
    assert not silent, f"zero gradient for {silent}"
    # targets that follow by EMA, frozen prototypes or layers: no gradient at all
    leaked = [
        n for n, p in model.method.named_parameters() if not p.requires_grad and p.grad is not None
    ]
    assert not leaked, f"gradient reached frozen parameters {leaked}"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_the_same_loss(name):
    cfg, a = _build(name)
    views = _views(cfg, 0, torch.float32)
    from selfsup.trainer.build import train_step

    train_step(a, views, 0.5, torch.device("cpu"))  # move away from the initial weights
    _, b = _build(name, "train.seed=1")
    b.method.load_state_dict(a.method.state_dict())
    a.method.eval(), b.method.eval()
    with torch.no_grad():
        assert torch.equal(a.method(views), b.method(views))


@pytest.mark.parametrize("name", NAMES)
def test_one_and_two_steps_through_the_command_line(name, synthetic_root, tmp_path):
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("method.")]  # SimCLR's head keys
    common = [*tiny, *METHODS[name], f"method.name={name}", f"data.path={synthetic_root}",
              "data.synthetic_train_per_class=12", "data.synthetic_val_per_class=4",
              f"run_dir={tmp_path}", "eval.knn=false", "train.log_every=1"]  # fmt: skip
    for steps in (1, 2):
        out = subprocess.run(
            [sys.executable, "-m", "selfsup", "pretrain", "--no-progress", "--config",
             str(TINY_CONFIG), *common,
             f"train.max_steps={steps}", f"name=s{steps}"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        lines = (tmp_path / f"s{steps}" / "metrics.jsonl").read_text().splitlines()
        losses = [r["loss"] for r in map(json.loads, lines) if "loss" in r]
        assert len(losses) == steps and all(map(lambda x: x == x, losses))


def test_simclrv2_head_blocks_are_the_trained_first_layers():
    _, model = _build("simclrv2")
    method = model.method
    first = method.head_blocks(1)
    assert [type(m) for m in first] == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU]
    assert first[0] is method.projector[0]  # the same module: its trained weights
    assert len(method.head_blocks(2)) == 6
    with pytest.raises(ValueError, match="hidden layers"):
        method.head_blocks(3)


def test_rotnet_rotates_every_image_four_ways_on_the_device():
    from selfsup.trainer.methods.rotnet import rotations

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    rotated, labels = rotations(x.contiguous(memory_format=torch.channels_last))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):
        for i in range(2):
            assert torch.equal(rotated[k * 2 + i], torch.rot90(x[i], k, dims=(1, 2)))
    assert rotated.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", NAMES)
def test_the_method_ships_an_imagenet_and_a_demo_recipe(name):
    """configs/<method>_imagenet.yaml (the published recipe) and <method>_demo.yaml (the
    built-in data) exist and train this method."""
    from selfsup.config import CONFIG_DIR, load_config

    for kind in ("imagenet", "demo"):
        assert (CONFIG_DIR / f"{name}_{kind}.yaml").is_file(), f"{name}_{kind}.yaml missing"
        assert load_config(f"{name}_{kind}").method.name == name
