"""The kernel benchmark measures what it says: every NT-Xent row computes the same loss as
the cross-entropy baseline, the ratios are the printed quantities' ratios, and the tiled path
holds a small fraction of the baseline's memory at a size where the matrices dominate."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_cross_entropy_baseline_is_the_same_loss():
    import torch
    from kernels import info_nce_cross_entropy  # benchmarks/kernels.py

    from selfsup.kernels.contrastive import info_nce_reference

    z = torch.randn(2, 33, 16, dtype=torch.float64, requires_grad=True)
    a = info_nce_cross_entropy(z, 0.2)
    (ga,) = torch.autograd.grad(a, z)
    b = info_nce_reference(z, 0.2)
    (gb,) = torch.autograd.grad(b, z)
    assert torch.allclose(a, b, rtol=1e-12) and torch.allclose(ga, gb, rtol=1e-10)


def test_kernel_benchmark_rows_and_ratios(tmp_path):
    out_json = tmp_path / "rows.json"
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--only", "contrastive",
         "--n", "4096", "--d", "32", "--device", "cpu", "--json", str(out_json)],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["impl"] for r in rows] == ["cross_entropy", "reference", "tiled"]
    base, ref, tiled = rows
    assert base["baseline"] and not ref["baseline"] and not tiled["baseline"]
    # [8192, 8192] fp32 similarities are 256 MiB: the baseline holds about three of them, the
    # readable reference about five, the tiled path none
    assert base["peak_bytes"] > 2 * 256 * 2**20
    assert ref["peak_bytes"] > base["peak_bytes"]
    assert tiled["peak_bytes"] < base["peak_bytes"] / 4
    printed = {line.split()[6]: line.split() for line in out.splitlines() if "nt-xent" in line}
    for r in rows:
        t_ratio, m_ratio = printed[r["impl"]][-2:]
        assert float(t_ratio) == round(r["seconds"] / base["seconds"], 2)
        assert float(m_ratio) == round(r["peak_bytes"] / base["peak_bytes"], 3)
    assert "peak RSS (VmHWM)" in out
