"""selfsup eval knn|linear and selfsup export: results against independent references, clean
names, torchvision's exact layout, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.downstream.linear import fast_probe_on_features, train_protocol_classifier
from selfsup.downstream.settings import Supervised
from selfsup.downstream.weights import clean_names, load_safetensors, save_safetensors
from selfsup.pipeline.sources import ArraySource
from selfsup.trainer.build import build_backbone
from selfsup.trainer.evaluate import knn_accuracy, knn_top1
from selfsup.trainer.probe import accuracy
from tests.test_cli import assert_one_line_error
from tests.test_models import RESNET18_KEYS


@pytest.fixture
def run_dir(untrained_run_dir):
    return untrained_run_dir


def ridge_predictions(x_train, y_train, x_test, num_classes, lam=1e-3):
    """The closed-form reference: least squares onto one-hot targets (with a bias column)."""
    xt = torch.cat([x_train, torch.ones(len(x_train), 1)], 1).double()
    xe = torch.cat([x_test, torch.ones(len(x_test), 1)], 1).double()
    y = nn.functional.one_hot(y_train, num_classes).double()
    w = torch.linalg.solve(xt.T @ xt + lam * torch.eye(xt.shape[1], dtype=xt.dtype), xt.T @ y)
    return (xe @ w).argmax(1)


def separable(n_per_class, num_classes=4, dim=16, seed=0):
    """Gaussian clusters around well-separated centres (a margin of several std)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 6
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    return x, y


def test_fast_probe_agrees_with_closed_form_on_separable_features():
    train, test = separable(60, seed=0), separable(25, seed=1)
    test = (test[0], test[1])
    # the same centres: re-draw the test set from the train generator's centres
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 6
    yt = torch.arange(4).repeat_interleave(25)
    xt = centres[yt] + torch.randn(len(yt), 16, generator=torch.Generator().manual_seed(5))
    ref = ridge_predictions(*train, xt, 4)
    assert (ref == yt).all()  # separable: the reference gets everything right
    out = fast_probe_on_features(train, (xt, yt), 4, epochs=10)
    pred = out["fit"].scores(xt)[0].argmax(1)
    assert torch.equal(pred, ref)
    assert out["top1"] == 100.0 and out["top5"] == 100.0
    assert len(out["sweep"]) == 24 and out["holdout_images"] == 4 * 6
    # and it is not blind: shuffled training labels cannot give the same classifier
    bad = fast_probe_on_features((train[0], train[1][torch.randperm(240)]), (xt, yt), 4,
                                 epochs=10)  # fmt: skip
    assert bad["top1"] < 70


class MeanColour(nn.Module):
    """A stand-in backbone: the mean colour of the image (3 features)."""

    num_features = 3

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3), requires_grad=False)  # frozen, like a trunk

    def forward(self, x):
        return x.mean((2, 3)) * self.scale


def colour_images(n_per_class, seed):
    """Flat images whose colour says the class (plus noise): separable by mean colour."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]])
    y = np.repeat(np.arange(3), n_per_class)
    base = colours[y][:, None, None, :] + rng.integers(-20, 20, (len(y), 1, 1, 3))
    img = base + rng.integers(-10, 10, (len(y), 24, 24, 3))
    return np.clip(img, 0, 255).astype(np.uint8), y


def test_protocol_probe_agrees_with_closed_form_on_separable_features():
    xtr, ytr = colour_images(20, 0)
    xte, yte = colour_images(10, 1)
    net = MeanColour()
    s = Supervised(nesterov=True, lr=0.5, lr_scaling="none", batch_size=20, epochs=15)
    fc = train_protocol_classifier(net, ArraySource(xtr, ytr), 3, s, size=16, device="cpu",
                                   threads=1, engine="cpu")  # fmt: skip
    # evaluation features: the centre crop normalised like the loader's views
    from selfsup.trainer.evaluate import extract_features

    f_tr, y_tr = extract_features(net, ArraySource(xtr, ytr), size=16, threads=1,
                                  engine="cpu", normalize=False)  # fmt: skip
    f_te, y_te = extract_features(net, ArraySource(xte, yte), size=16, threads=1,
                                  engine="cpu", normalize=False)  # fmt: skip
    ref = ridge_predictions(f_tr, y_tr, f_te, 3)
    assert (ref == y_te).all()
    with torch.no_grad():
        pred = fc(f_te).argmax(1)
    assert torch.equal(pred, ref)
    assert accuracy(fc(f_te).detach(), y_te)[0] == 100.0


def test_knn_several_k_equal_one_k_at_a_time():
    g = torch.Generator().manual_seed(0)
    bank = nn.functional.normalize(torch.randn(300, 8, generator=g), dim=1)
    yb = torch.randint(0, 7, (300,), generator=g)
    q = nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    yq = torch.randint(0, 7, (50,), generator=g)
    both = knn_accuracy(bank, yb, q, yq, ks=(1, 5, 20, 200), bank_chunk=64, chunk=17)
    for k, (top1, top5) in both.items():
        assert top1 == knn_top1(bank, yb, q, yq, k=k)
        assert top5 >= top1
    # k=1: the label of the nearest bank feature, computed directly
    nearest = yb[(q @ bank.T).argmax(1)]
    assert both[1][0] == pytest.approx(100.0 * (nearest == yq).float().mean().item())


def test_eval_knn_and_linear_commands_write_json(run_dir, capsys):
    assert main(["eval", "knn", str(run_dir), "--k", "1,5"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run_dir / "eval_knn.json").read_text())
    assert set(result["k"]) == {"1", "5"} and "top-1" in out
    assert result["eval_images"] == 40 and result["train_images"] == 120
    assert main(["eval", "linear", str(run_dir), "--out", str(run_dir / "lin.json")]) == 0
    lin = json.loads((run_dir / "lin.json").read_text())
    assert 0 <= lin["top1"] <= lin["top5"] <= 100 and lin["protocol"] == "linear-fast"
    code = main(["eval", "linear", str(run_dir), "--mode", "protocol", "--no-progress",
                 "linear.epochs=1", "linear.batch_size=32"])  # fmt: skip
    assert code == 0
    proto = json.loads((run_dir / "eval_linear_protocol.json").read_text())
    # the run's method is simclr: SimCLR's protocol, with the two settings replaced
    assert proto["preset"] == "simclr" and proto["settings"]["epochs"] == 1
    assert proto["settings"]["nesterov"] is True and proto["settings"]["batch_size"] == 32


def test_eval_errors_are_one_line(run_dir, tmp_path, capsys):
    code = main(["eval", "knn", str(tmp_path / "missing")])
    assert_one_line_error(code, capsys.readouterr().err, r"does not exist")
    code = main(["eval", "knn", str(tmp_path)])
    assert_one_line_error(code, capsys.readouterr().err, r"not a run directory")
    # a weights file of another architecture than the config's
    other = tmp_path / "r34.pt"
    torch.save(build_backbone(load_config("default", ["model.arch=resnet34"])).state_dict(),
               other)  # fmt: skip
    code = main(["eval", "knn", str(other), "--config", str(run_dir / "config.yaml")])
    err = capsys.readouterr().err
    assert_one_line_error(code, err, r"holds resnet34 \(width 16, 3x3 stem\), but the model is "
                          r"resnet18 \(width 8")  # fmt: skip
    code = main(["eval", "linear", str(run_dir), "linear.epochs=3"])
    assert_one_line_error(code, capsys.readouterr().err, r"belong to --mode protocol")
    code = main(["eval", "linear", str(run_dir), "--mode", "protocol", "linear.epoch=3"])
    assert_one_line_error(code, capsys.readouterr().err, r"unknown key 'linear\.epoch'")
    code = main(["eval", "linear", str(run_dir), "--mode", "protocol", "--preset", "nope"])
    assert_one_line_error(code, capsys.readouterr().err, r"no linear preset 'nope'")


def test_export_torchvision_layout_loads_in_a_fresh_process(run_dir, tmp_path, capsys):
    out = tmp_path / "exported.pth"
    assert main(["export", str(run_dir), str(out)]) == 0
    code = (
        "import sys, torch\n"
        f"s = torch.load({str(out)!r}, weights_only=True)\n"
        "print(type(s).__name__, len(s), ','.join(s))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    kind, n, keys = r.stdout.split()
    # torchvision's resnet18 keys, without fc (a pretraining run has no classifier)
    assert kind == "dict" and keys.split(",") == [k for k in RESNET18_KEYS if "fc." not in k]
    saved = torch.load(run_dir / "backbone.pt", weights_only=True)
    got = torch.load(out, weights_only=True)
    assert all(torch.equal(saved[k], got[k]) for k in got)


def test_export_safetensors_reads_with_the_safetensors_package(run_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / "exported.safetensors"
    assert main(["export", str(run_dir), str(out)]) == 0
    theirs = load_file(str(out))
    saved = torch.load(run_dir / "backbone.pt", weights_only=True)
    assert set(theirs) == set(saved)
    assert all(torch.equal(theirs[k], saved[k]) and theirs[k].dtype == saved[k].dtype
               for k in saved)  # fmt: skip
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "torchvision-resnet" and "resnet18" in meta["architecture"]
    assert load_config("default").__class__  # the config is there and parses as YAML
    import yaml

    assert yaml.safe_load(meta["config"])["model"]["width"] == 8
    # and our reader reads what the package writes
    from safetensors.torch import save_file

    save_file({"a": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "b": torch.randn(4, dtype=torch.bfloat16)}, str(tmp_path / "x.safetensors"),
              metadata={"k": "v"})  # fmt: skip
    ours, meta = load_safetensors(tmp_path / "x.safetensors")
    assert meta == {"k": "v"} and torch.equal(ours["a"], torch.arange(6).reshape(2, 3))
    assert ours["b"].dtype == torch.bfloat16


def test_wrapped_names_are_cleaned(tmp_path, run_dir, capsys):
    state = torch.load(run_dir / "backbone.pt", weights_only=True)
    compiled_ddp = {f"module._orig_mod.{k}": v for k, v in state.items()}
    assert clean_names(compiled_ddp) == state
    assert clean_names({f"backbone._orig_mod.{k}": v for k, v in state.items()},
                       "backbone.") == state  # fmt: skip
    wrapped = tmp_path / "ddp.pt"
    torch.save(compiled_ddp, wrapped)
    out = tmp_path / "clean.safetensors"
    assert main(["export", str(wrapped), str(out)]) == 0
    assert set(load_safetensors(out)[0]) == set(state)
    # eval reads the wrapped file directly, with the run's config
    assert main(["eval", "knn", str(wrapped), "--config", str(run_dir / "config.yaml"),
                 "--k", "3"]) == 0  # fmt: skip
    assert (tmp_path / "ddp.eval_knn.json").is_file()


def test_safetensors_round_trip_of_every_dtype(tmp_path):
    state = {
        "f32": torch.randn(3, 4), "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 2).bfloat16(), "i64": torch.arange(7),
        "u8": torch.arange(4, dtype=torch.uint8),
        "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5),
    }  # fmt: skip
    save_safetensors(state, tmp_path / "s.safetensors", {"a": "b"})
    back, meta = load_safetensors(tmp_path / "s.safetensors")
    assert meta == {"a": "b"}
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v)
