"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends with the same weights."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from tests.conftest import TINY_OVERRIDES

EPOCHS = 6
STEPS_PER_EPOCH = 120 // 16


def command(synthetic_root, run_dir, name):
    return [
        sys.executable, "-m", "selfsup", "pretrain", "--no-progress", *TINY_OVERRIDES,
        f"data.path={synthetic_root}", "data.synthetic_train_per_class=12",
        "data.synthetic_val_per_class=4", f"run_dir={run_dir}", f"name={name}",
        f"train.epochs={EPOCHS}", "train.checkpoint_every=3", "train.log_every=1",
        "eval.knn=false", "optim.warmup_epochs=1",
    ]  # fmt: skip


def last_logged_step(metrics):
    if not metrics.exists():
        return 0
    steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines() if x]
    return max(steps, default=0)


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(synthetic_root, tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full = subprocess.run(command(synthetic_root, tmp_path, "full"), env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert full.returncode == 0, full.stderr

    proc = subprocess.Popen(command(synthetic_root, tmp_path, "killed"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    metrics = tmp_path / "killed" / "metrics.jsonl"
    kill_after = 2 * STEPS_PER_EPOCH + 2  # mid-way through the third epoch
    deadline = time.time() + 240
    while last_logged_step(metrics) < kill_after and proc.poll() is None:
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    ckpt = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < ckpt["step"] < EPOCHS * STEPS_PER_EPOCH
    assert ckpt["loader"]["batch"] == ckpt["step"] % STEPS_PER_EPOCH

    resumed = subprocess.run(
        [sys.executable, "-m", "selfsup", "pretrain", "--no-progress", "--resume",
         str(tmp_path / "killed")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr

    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == EPOCHS * STEPS_PER_EPOCH
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    states = zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True)
    for sa, sb in states:
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
