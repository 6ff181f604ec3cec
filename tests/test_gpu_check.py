"""benchmarks/gpu_check.sh, the one-pass GPU check: a shrunken run of its CPU-safe parts, so
that the script a lent GPU's few minutes depend on is known to work before it gets there."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_its_parts(tmp_path):
    out = tmp_path / "out"
    env = dict(
        os.environ,
        OUT=str(out),
        PYTHON=sys.executable,
        PHOTOS="24",
        BATCH="8",
        PARTS="loader-threads no-such-part",
        SELFSUP_CACHE=str(tmp_path / "cache"),
    )
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = (out / "summary.txt").read_text()
    parts = [line.split()[0] for line in summary.splitlines() if " rc=" in line]
    assert parts and all(p.startswith("loader-threads-") for p in parts), summary  # PARTS holds
    assert all("rc=0 " in line for line in summary.splitlines() if " rc=" in line), summary
    runs = json.loads((out / "loader-threads.json").read_text())
    threads = [r["config"]["workers"] for r in runs]
    assert threads == [2**i for i in range(len(threads))] and len(threads) == len(parts)
    assert all(r["summary"]["selfsup"]["images_per_sec"] > 0 for r in runs)
