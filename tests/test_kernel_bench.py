"""The kernel benchmark script runs and prints ratios against its plain-torch baseline."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_benchmark_prints_a_table_with_ratios():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--only", "contrastive",
         "--n", "64", "--d", "16", "--device", "cpu"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line.startswith("nt-xent")]
    impls = [r[6] for r in rows]  # kernel (2 words), shape (3), dtype, impl
    assert impls == ["reference", "tiled"]
    assert rows[0][-2:] == ["1.00", "1.000"]  # the baseline compares with itself
    assert "peak RSS (VmHWM)" in out
