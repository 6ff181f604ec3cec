"""`selfsup bench step`: three rates and the step breakdown from one run, in one and in two
processes; the step it times is the training step itself."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import TINY_OVERRIDES
from tests.test_torchrun import _env, pretrain_cmd

FIELDS = ["model only (synthetic)", "loader only", "end to end", "end to end / model only",
          "data wait", "forward", "backward", "optimizer"]  # fmt: skip


def _overrides(synthetic_root):
    return [*TINY_OVERRIDES, f"data.path={synthetic_root}", "data.synthetic_train_per_class=12",
            "data.synthetic_val_per_class=4"]  # fmt: skip


def _check(result: dict, world: int) -> None:
    ips = result["images_per_sec"]
    assert all(ips[k] > 0 for k in ("model_only", "loader_only", "end_to_end"))
    # the ratio comes from the unrounded rates; the printed rates are rounded to 0.1
    assert abs(result["end_to_end_over_model_only"] - ips["end_to_end"] / ips["model_only"]) < 2e-3
    assert result["launch"]["world_size"] == world
    assert result["launch"]["global_batch"] == 16
    assert result["timing"] == "wall clock"
    assert set(result["end_to_end"]) == {"data_wait", "forward", "backward", "optimizer", "step"}
    assert set(result["model_only"]) == {"forward", "backward", "optimizer", "step"}
    for part in ("model_only", "end_to_end"):
        b = result[part]
        phases = sum(b[p]["median_ms"] for p in b if p != "step")
        assert b["step"]["median_ms"] <= phases * 1.5 + 1  # medians of sums vs sums of medians
        assert all(b[p]["p90_ms"] >= b[p]["median_ms"] for p in b)
    # views: this rank's share of the global batch, the recipe's sizes
    assert result["config"]["views_per_rank"] == [[2, 16 // world, 3, 16, 16]]


def test_bench_step_prints_every_field(synthetic_root, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "selfsup", "bench", "step", "--no-progress", "--steps", "3",
         "--warmup", "1", "--json", str(tmp_path / "step.json"), *_overrides(synthetic_root)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for field in FIELDS:
        assert field in out.stdout, field
    _check(json.loads((tmp_path / "step.json").read_text()), 1)


@pytest.mark.slow
def test_bench_step_under_torchrun_reports_global_figures(synthetic_root, tmp_path):
    cmd = pretrain_cmd(2)[:-2]  # torchrun ... -m selfsup
    out = subprocess.run(
        [*cmd, "bench", "step", "--no-progress", "--steps", "3", "--warmup", "1", "--json",
         str(tmp_path / "step.json"), *_overrides(synthetic_root)],
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("end to end / model only") == 1  # rank 0 alone prints
    _check(json.loads((tmp_path / "step.json").read_text()), 2)


def test_train_step_marks_its_phases_in_order():
    from selfsup.config import load_config
    from selfsup.trainer.build import build_model_and_optimizer, train_step
    from tests.test_ddp_equality import BASE, METHODS, _views

    cfg = load_config("default", [*BASE, *METHODS["simclr"]])
    seen = []
    results = []
    for mark in (None, seen.append):
        torch.manual_seed(0)
        model = build_model_and_optimizer(cfg, torch.device("cpu"))
        cpu = torch.device("cpu")
        results.append(train_step(model, _views(cfg, 0, torch.float32), 0.5, cpu, mark))
    assert seen == ["forward", "backward", "optimizer"]
    assert torch.equal(results[0], results[1])  # timing does not change the step
