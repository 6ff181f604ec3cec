"""benchmarks/demo_sweep.py, which chose the demo recipes: config checks, and a short sweep whose
every job leaves one result line (a failed job included)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "demo_sweep.py"


def _sweep(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_check_names_every_job_whose_config_does_not_load(tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# a comment\nok simclr_demo train.epochs=2\n"
                    "bad byol_demo method.no_such_key=1\n")  # fmt: skip
    run = _sweep(jobs, "--check")
    assert run.returncode == 1
    assert "bad:" in run.stdout and "ok:" not in run.stdout
    assert "1 of 2 job configs load" in run.stdout


def test_a_short_sweep_writes_one_result_per_job(tmp_path, synthetic_root):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(
        "a simclr_demo\nb vicreg_demo optim.lr=0.001\nfails simclr_demo train.epochs=0\n"
    )
    common = [*TINY_OVERRIDES, f"data.path={synthetic_root}",
              "data.synthetic_train_per_class=12", "data.synthetic_val_per_class=4",
              "train.max_steps=1", "eval.random_init_baseline=false",
              "train.threads=1", "data.threads=1"]  # fmt: skip
    out = tmp_path / "out"
    run = _sweep(jobs, "--out", out, "--parallel", 2, "--common", *common)
    assert run.returncode == 0, run.stderr
    rows = {r["tag"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert set(rows) == {"a", "b", "fails"}
    assert rows["a"]["rc"] == 0 and 0 <= rows["a"]["knn_top1"] <= 100
    assert rows["b"]["rc"] == 0 and rows["b"]["overrides"] == ["optim.lr=0.001"]
    assert rows["fails"]["rc"] != 0 and rows["fails"]["knn_top1"] is None
    assert "train.epochs" in (out / "fails.log").read_text()
