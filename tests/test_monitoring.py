"""Monitoring during pretraining: the k-NN every ``eval.knn_every`` epochs and the online linear
classifier (``eval.online_linear``). Both are logged, and neither changes what is trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.trainer.loop import pretrain
from selfsup.trainer.methods import METHODS
from tests.conftest import recompute_knn
from tests.ranks import run_ranks
from tests.test_cli import assert_one_line_error
from tests.test_ddp_equality import BASE, TINY_CONFIG, _views
from tests.test_ddp_equality import METHODS as SMALL_HEADS

STEPS_PER_EPOCH = 120 // 16  # the session's synthetic dataset: 10 classes x 12 train images
MONITOR = ["eval.knn_every=1", "eval.online_linear=true"]


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def assert_same_training(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    states = zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True)
    for sa, sb in states:
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a["torch_rng"], b["torch_rng"])  # the global RNG stream is untouched


def test_monitoring_is_logged_and_changes_no_weight(tiny_overrides, tmp_path):
    epochs = 3
    base = [*tiny_overrides, f"train.epochs={epochs}", "train.log_every=2"]
    off = load_config("default", [*base, "name=plain", "eval.knn=false"])
    pretrain(off, progress=False)
    extra = ["name=monitored", *MONITOR, "eval.random_init_baseline=false"]
    on = load_config("default", [*base, *extra])
    summary = pretrain(on, progress=False)
    runs = tmp_path / "runs"

    a, b = checkpoint(runs / "plain"), checkpoint(runs / "monitored")
    assert_same_training(a, b)
    assert "online_linear" not in a and "online_linear" in b
    lines_off, lines_on = records(runs / "plain"), records(runs / "monitored")
    losses_off = {r["step"]: r["loss"] for r in lines_off if "loss" in r}
    losses_on = {r["step"]: r["loss"] for r in lines_on if "loss" in r}
    assert losses_off == losses_on and len(losses_on) >= epochs * STEPS_PER_EPOCH // 2

    # one k-NN record per epoch but the last, whose k-NN is the final evaluation's
    knn = [r for r in lines_on if "knn_top1" in r and "event" not in r]
    assert [(r["step"], r["epoch"]) for r in knn] == [
        (e * STEPS_PER_EPOCH, e) for e in range(1, epochs)
    ]
    assert all(0 <= r["knn_top1"] <= 100 for r in knn)
    assert not any("knn_top1" in r or "online_linear_top1" in r for r in lines_off)
    # every log line has the online classifier's top-1 on the batches since the previous one
    assert all(0 <= r["online_linear_top1"] <= 100 for r in lines_on if "loss" in r)
    saved = json.loads((runs / "monitored" / "summary.json").read_text())
    assert 0 <= saved["online_linear_top1"] <= 100
    assert saved["online_linear_top1"] == summary["online_linear_top1"]
    # the final k-NN reused the held-out features extracted for the classifier: same number
    assert summary["knn_top1"] == recompute_knn(on, runs / "monitored")
    probe = b["online_linear"]["classifier"]
    assert probe["weight"].shape == (10, 8 * 8)  # resnet18 width 8: 64 features, 10 classes


def test_online_linear_resumes_exactly(tiny_overrides, tmp_path, monkeypatch):
    """Killed mid-epoch (an error in a step), then resumed: the classifier, its optimizer and
    its logged accuracies are those of an uninterrupted run."""
    from selfsup.trainer.methods.simclr import SimCLR

    over = [*tiny_overrides, "train.epochs=2", "train.log_every=2", "train.checkpoint_every=3",
            "eval.knn=false", "eval.online_linear=true"]  # fmt: skip
    pretrain(load_config("default", [*over, "name=full"]), progress=False)

    forward, calls = SimCLR.forward, {"n": 0}

    class Killed(Exception):
        pass

    def dies_once(self, views):
        calls["n"] += 1
        if calls["n"] == 11:  # step 11: the last checkpoint is step 9's, mid-way between logs
            raise Killed
        return forward(self, views)

    monkeypatch.setattr(SimCLR, "forward", dies_once)
    with pytest.raises(Killed):
        pretrain(load_config("default", [*over, "name=killed"]), progress=False)
    runs = tmp_path / "runs"
    assert checkpoint(runs / "killed")["step"] == 9
    pretrain(resume=runs / "killed", progress=False)

    a, b = checkpoint(runs / "full"), checkpoint(runs / "killed")
    assert_same_training(a, b)
    pa, pb = a["online_linear"], b["online_linear"]
    for key in pa["classifier"]:
        assert torch.equal(pa["classifier"][key], pb["classifier"][key]), key
    for sa, sb in zip(pa["optimizer"]["state"].values(), pb["optimizer"]["state"].values(),
                      strict=True):  # fmt: skip
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    top1 = {r["step"]: r["online_linear_top1"] for r in records(runs / "full") if "loss" in r}
    after = {r["step"]: r["online_linear_top1"] for r in records(runs / "killed") if "loss" in r}
    assert {s: top1[s] for s in after} == after  # step 10's line counts steps 9 and 10


def test_a_method_without_whole_image_features_is_refused(capsys, tmp_path):
    code = main(["pretrain", "--config", str(TINY_CONFIG), "method.name=jigsaw",
                 "eval.online_linear=true", f"run_dir={tmp_path}"])  # fmt: skip
    assert_one_line_error(code, capsys.readouterr().err, r"eval\.online_linear.*'jigsaw'")
    assert not any(tmp_path.iterdir())  # refused before anything ran


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_backbones_first_rows_are_view_0(name):
    """What the online classifier relies on: the first B rows through a method's backbone in a
    step are view 0 of its B images, in order, unless the method says otherwise (then the
    config refuses eval.online_linear)."""
    from selfsup.trainer.build import build_model_and_optimizer, train_step

    cfg = load_config(TINY_CONFIG, [*BASE, f"method.name={name}", *SMALL_HEADS[name]])
    model = build_model_and_optimizer(cfg, torch.device("cpu"))
    views = _views(cfg, 0, torch.float32)
    b = views[0].shape[1]
    seen = []

    def keep(module, args):
        if sum(len(x) for x in seen) < b:
            seen.append(args[0].detach().clone())

    handle = model.method.backbone.register_forward_pre_hook(keep)
    train_step(model, views, 0.1, torch.device("cpu"))
    handle.remove()
    first = torch.cat(seen)[:b]
    whole_images = first.shape == views[0][0].shape and torch.equal(first, views[0][0])
    assert whole_images == getattr(METHODS[name], "online_features", True)


def _two_ranks(rank: int, world: int, overrides: list[str]) -> dict:
    """A pretraining run on this rank; its online classifier at the end."""
    from selfsup.trainer import online

    made = []
    init = online.OnlineLinear.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    online.OnlineLinear.__init__ = spy
    pretrain(load_config("default", overrides), progress=False)
    return {k: v.clone() for k, v in made[0].classifier.state_dict().items()}


def test_two_processes_keep_one_classifier_and_train_like_one(tiny_overrides, tmp_path):
    """Global batch 16 on one process and on two (8 each), float64: every rank holds the same
    classifier, equal to the single process's, and the weights agree as without monitoring."""
    over = [*[o for o in tiny_overrides if not o.startswith("name=")], "train.epochs=2",
            "train.precision=fp64", "train.log_every=3", "eval.knn=false", *MONITOR]  # fmt: skip
    r0, r1 = run_ranks(_two_ranks, 2, [*over, "name=two"])
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    pretrain(load_config("default", [*over, "name=one"]), progress=False)
    one, two = checkpoint(tmp_path / "runs" / "one"), checkpoint(tmp_path / "runs" / "two")
    # float64, different reduction order: the bound of tests/test_torchrun.py
    for key, x in one["model"].items():
        y = two["model"][key]
        if x.is_floating_point():
            assert (x - y).norm() <= 1e-6 * x.norm() + 1e-12, key
        else:
            assert torch.equal(x, y), key
    for key, x in one["online_linear"]["classifier"].items():
        assert (x - r0[key]).norm() <= 1e-6 * x.norm(), key
    knn = [[r["knn_top1"] for r in records(tmp_path / "runs" / n) if "knn_top1" in r]
           for n in ("one", "two")]  # fmt: skip
    assert knn[0] == knn[1] and len(knn[0]) == 2  # knn_every=1, and no final k-NN
