"""selfsup finetune and selfsup distill: the distillation loss against its formula, pseudo-label
selection, short runs through the CLI, what they write, and one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from selfsup import losses
from selfsup.cli import main
from selfsup.downstream.distill import select_pseudo_labels
from selfsup.downstream.target import load_network
from tests.test_cli import assert_one_line_error
from tests.test_models import RESNET18_KEYS

FT = ["finetune.epochs=1", "finetune.batch_size=32", "--no-progress"]
DS = ["distill.epochs=1", "distill.batch_size=32", "--no-progress"]


def test_distillation_loss_is_its_formula():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g, requires_grad=True)
    t = torch.randn(6, 5, generator=g, requires_grad=True)
    for tau in (0.1, 1.0, 2.0):
        want = 0.0
        for i in range(6):  # -sum_y p_t(y) log p_s(y), one row at a time, then the mean
            zt = [math.exp(v / tau) for v in t[i].tolist()]
            zs = [math.exp(v / tau) for v in s[i].tolist()]
            want -= sum(a / sum(zt) * math.log(b / sum(zs)) for a, b in zip(zt, zs, strict=True))
        want = want / 6 * tau**2
        assert losses.distillation(s, t, tau).item() == pytest.approx(want, rel=1e-5)
    # the tau^2 factor: the same softened cross-entropy, scaled
    ce = -(torch.softmax(t / 2, 1) * torch.log_softmax(s / 2, 1)).sum(1).mean()
    assert losses.distillation(s, t, 2.0).item() == pytest.approx(4 * ce.item(), rel=1e-6)
    losses.distillation(s, t, 1.0).backward()
    assert t.grad is None and s.grad is not None  # the teacher gets no gradient
    # at the minimum (student = teacher) the gradient vanishes
    t2 = t.detach().clone()
    s2 = t2.clone().requires_grad_(True)
    losses.distillation(s2, t2, 0.5).backward()
    assert s2.grad.abs().max() < 1e-6


def test_pseudo_labels_thresholded_and_balanced():
    # teacher logits: class 0 confident x4, class 1 confident x1, one unconfident image
    logits = torch.tensor(
        [[9.0, 0, 0], [8.0, 0, 0], [7.0, 0, 0], [6.0, 0, 0], [0, 5.0, 0], [0.1, 0.0, 0.0]]
    )
    idx, lab, info = select_pseudo_labels(logits, 0.5, balance=False)
    assert sorted(idx.tolist()) == [0, 1, 2, 3, 4] and info["confident"] == 5
    idx, lab, info = select_pseudo_labels(logits, 0.5, balance=True)
    # mean count round(5 / 2) = 2: class 0's two most confident, class 1's one image twice
    assert sorted(idx.tolist()) == [0, 1, 4, 4] and sorted(lab.tolist()) == [0, 0, 1, 1]
    assert info["per_class"] == 2 and info["used"] == 4
    assert len(select_pseudo_labels(logits, 0.99999, balance=True)[0]) == 0


@pytest.fixture
def finetuned(untrained_run_dir, capsys):
    """A finetune run directory (one epoch on 4 images per class)."""
    assert main(["finetune", str(untrained_run_dir), "--labels", "4/class", "--name", "ft",
                 *FT]) == 0  # fmt: skip
    capsys.readouterr()
    return untrained_run_dir.parent / "ft"


def test_finetune_writes_a_run_and_exports_with_fc(finetuned, tmp_path, capsys):
    s = json.loads((finetuned / "summary.json").read_text())
    assert s["labelled_images"] == 40 and s["per_class"] == {"min": 4, "max": 4}
    assert s["eval_images"] == 40 and 0 <= s["top1"] <= s["top5"] <= 100
    # 40 of 120 images is closer to 10% than to 1%; simclr (v1) fine-tunes from the trunk
    assert s["preset"] == "simclrv2 10%" and s["head_layers"] == 0
    assert s["settings"]["epochs"] == 1 and s["settings"]["batch_size"] == 32
    names = (finetuned / "labels.txt").read_text().split()
    assert len(names) == 40 == len(set(names))
    # the names are a label file that selects the same subset
    assert main(["finetune", str(finetuned.parent / "tiny"), "--labels",
                 str(finetuned / "labels.txt"), "--name", "again", *FT]) == 0  # fmt: skip
    again = (finetuned.parent / "again" / "labels.txt").read_text().split()
    assert again == names
    cfg, net = load_network(finetuned)
    assert net.fc.out_features == 10 and net.head_layers == 0
    out = tmp_path / "ft.pth"
    assert main(["export", str(finetuned), str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert list(state) == RESNET18_KEYS  # torchvision's resnet18, fc included
    assert torch.equal(state["fc.weight"], net.fc.weight)


def _weights(run):
    """The classifier's backbone parameters (BatchNorm statistics move even at lr 0)."""
    state = torch.load(run / "network.pt", weights_only=True)
    return {k: v for k, v in state.items() if k.startswith("backbone.") and "running" not in k
            and "num_batches" not in k}  # fmt: skip


def test_finetune_starts_from_the_pretrained_weights_or_random_ones(untrained_run_dir):
    runs = untrained_run_dir.parent
    lr0 = [*FT, "finetune.lr=0"]
    assert main(["finetune", str(untrained_run_dir), "--labels", "2/class", "--name", "pre",
                 *lr0]) == 0  # fmt: skip
    assert main(["finetune", str(untrained_run_dir), "--labels", "2/class", "--random-init",
                 "--name", "scratch", "finetune.seed=1", *lr0]) == 0  # fmt: skip
    saved = torch.load(untrained_run_dir / "backbone.pt", weights_only=True)
    pre, scratch = _weights(runs / "pre"), _weights(runs / "scratch")
    assert all(torch.equal(v, saved[k.removeprefix("backbone.")]) for k, v in pre.items())
    assert not torch.equal(scratch["backbone.conv1.weight"], pre["backbone.conv1.weight"])
    s = json.loads((runs / "scratch" / "summary.json").read_text())
    assert s["from"] == "random init"


def test_schedules_scale_with_epochs_and_bad_ones_are_refused():
    from selfsup.downstream.settings import (
        DISTILL_DEFAULT,
        LINEAR_PRESETS,
        with_overrides,
    )
    from selfsup.errors import ConfigError

    moco = with_overrides(LINEAR_PRESETS["moco_v2"], {"epochs": 10}, "linear")
    assert moco.milestones == [6, 8] and moco.factor(5) == 1
    assert moco.factor(9) == pytest.approx(0.01)
    d = with_overrides(DISTILL_DEFAULT, {"epochs": 10}, "distill")
    assert d.warmup_epochs == 0.5 and d.factor(5) < 1  # warms up, then decays
    with pytest.raises(ConfigError, match="warmup_epochs=12 must be below epochs=10"):
        with_overrides(DISTILL_DEFAULT, {"epochs": 10, "warmup_epochs": 12}, "distill")
    with pytest.raises(ConfigError, match="milestones"):
        with_overrides(LINEAR_PRESETS["moco_v2"], {"epochs": 10, "milestones": [20]}, "linear")


def test_distill_soft_and_hard(finetuned, capsys):
    assert main(["distill", "--teacher", str(finetuned), "--name", "soft", *DS]) == 0
    out = capsys.readouterr().out
    s = json.loads((finetuned.parent / "soft" / "summary.json").read_text())
    assert s["mode"] == "soft" and s["temperature"] == 0.1  # self-distillation
    assert s["student_images"] == 120 and "teacher" in out and "student" in out
    assert main(["distill", "--teacher", str(finetuned), "--mode", "hard", "--labels",
                 "2/class", "--name", "hard", "distill.threshold=0", *DS]) == 0  # fmt: skip
    h = json.loads((finetuned.parent / "hard" / "summary.json").read_text())
    assert h["pseudo_labels"]["confident"] == 120  # threshold 0 keeps every image
    assert h["student_images"] == h["pseudo_labels"]["used"] + 20
    logits = torch.load(finetuned.parent / "hard" / "teacher_logits.pt", weights_only=True)
    assert logits.shape == (120, 10)
    # another architecture: temperature 1
    assert main(["distill", "--teacher", str(finetuned), "--name", "small", "model.width=4",
                 *DS]) == 0  # fmt: skip
    small = json.loads((finetuned.parent / "small" / "summary.json").read_text())
    assert small["temperature"] == 1.0


def test_errors_are_one_line(untrained_run_dir, finetuned, tmp_path, capsys):
    run = str(untrained_run_dir)
    code = main(["finetune", str(tmp_path / "nope"), "--labels", "10%"])
    assert_one_line_error(code, capsys.readouterr().err, r"does not exist")
    names = tmp_path / "names.txt"
    names.write_text("not_an_image.JPEG\n")
    code = main(["finetune", run, "--labels", str(names), *FT])
    assert_one_line_error(code, capsys.readouterr().err, r"names 1 image.*not_an_image")
    code = main(["finetune", run, "--labels", "50/class", *FT])  # 12 images per class
    assert_one_line_error(code, capsys.readouterr().err, r"50")
    code = main(["finetune", run, "--labels", "150%", *FT])
    assert_one_line_error(code, capsys.readouterr().err, r"150%")
    code = main(["finetune", run, "--labels", "10%", "--head-layers", "1", *FT])
    assert_one_line_error(code, capsys.readouterr().err, r"checkpoints/last\.pt")
    code = main(["finetune", run, "--labels", "10%", "finetune.lr_backbon=1", *FT])
    assert_one_line_error(code, capsys.readouterr().err, r"unknown key 'finetune\.lr_backbon'")
    code = main(["distill", "--teacher", run, *DS])
    assert_one_line_error(code, capsys.readouterr().err, r"holds no classifier")
    code = main(["distill", "--teacher", str(finetuned), "distill.alpha=0.5", *DS])
    assert_one_line_error(code, capsys.readouterr().err, r"no --labels subset")
    code = main(["distill", "--teacher", str(finetuned), "--labels", "2/class", *DS])
    assert_one_line_error(code, capsys.readouterr().err, r"only with distill\.alpha")
    code = main(["finetune", run, "--labels", "10%", "finetune.seed=-1", *FT])
    assert_one_line_error(code, capsys.readouterr().err, r"finetune\.seed must be >= 0")
    before = set(finetuned.parent.iterdir())
    code = main(["distill", "--teacher", str(finetuned), "--mode", "hard",
                 "distill.threshold=1.0", *DS])  # fmt: skip
    assert_one_line_error(code, capsys.readouterr().err, r"threshold")
    assert set(finetuned.parent.iterdir()) == before  # a failed run leaves no directory


def test_simclrv2_fine_tunes_from_its_heads_first_layer(tiny_overrides, tmp_path, capsys):
    from selfsup.config import load_config
    from selfsup.trainer.loop import pretrain

    over = ["method.name=simclrv2", "name=v2", "train.max_steps=2", "eval.knn=false"]
    cfg = load_config("tests/tiny.yaml", [*tiny_overrides, *over])
    run = pretrain(cfg, progress=False)["run_dir"]
    assert main(["finetune", run, "--labels", "2/class", "--name", "v2ft", *FT]) == 0
    s = json.loads((tmp_path / "runs" / "v2ft" / "summary.json").read_text())
    assert s["preset"].startswith("simclrv2") and s["head_layers"] == 1
    # the head layer starts from the pretrained projector's first layer
    ckpt = torch.load(f"{run}/checkpoints/last.pt", weights_only=True)["model"]
    from selfsup.downstream.target import build_network

    net = build_network(cfg, 1, 10, method_state=ckpt)
    assert net.fc.in_features == net.head[0].out_features
    # what the command trained from: at lr 0 its head layer is the checkpoint's
    assert main(["finetune", run, "--labels", "2/class", "--name", "v2lr0", *FT,
                 "finetune.lr=0"]) == 0  # fmt: skip
    saved = torch.load(tmp_path / "runs" / "v2lr0" / "network.pt", weights_only=True)
    assert torch.equal(saved["head.0.weight"], ckpt["projector.0.weight"])
    code = main(["finetune", run, "--labels", "2/class", "--head-layers", "5", *FT])
    assert_one_line_error(code, capsys.readouterr().err, r"has 2 hidden layer\(s\)")
    _, ft = load_network(tmp_path / "runs" / "v2ft")
    assert ft.head_layers == 1
    # torchvision's ResNet has no place for the head layer: the backbone alone, said so
    capsys.readouterr()
    assert main(["export", str(tmp_path / "runs" / "v2ft"), str(tmp_path / "v2.pth")]) == 0
    assert "no place for" in capsys.readouterr().out
    assert "fc.weight" not in torch.load(tmp_path / "v2.pth", weights_only=True)
