"""Kernel benchmarks: time and peak memory of each implementation against plain torch.

    .venv/bin/python benchmarks/kernels.py                 # every registered case
    .venv/bin/python benchmarks/kernels.py --only contrastive --n 8192

Each row is one (kernel, shape, dtype, impl); the ratio columns compare it with the plain-torch
baseline of the same kernel and shape measured in the same run. NT-Xent's baseline is what SimCLR
code in the wild runs (``F.cross_entropy`` over the masked [2N, 2N] similarity matrix); the
readable float64-style reference, which holds about five full matrices, is a row of its own.
``--json FILE`` writes every row.

Peak memory, and how it is measured:
- CUDA: ``torch.cuda.max_memory_allocated`` during forward + backward, minus the memory held
  before it (inputs), after ``reset_peak_memory_stats``. Times from CUDA events.
- CPU: every measurement runs in fresh subprocesses. One times the kernel; another reads its
  peak resident set size (``VmHWM`` in /proc/self/status) after forward + backward, with glibc's
  mmap threshold fixed so that freed blocks leave the resident set at once. A baseline
  subprocess does the same setup (imports, inputs) without calling the kernel; the reported
  peak is the difference. (Python's
  tracemalloc does not see torch's allocations; peak RSS does, at page granularity.)

Other kernels add rows by appending a function to ``CASES``: it receives the parsed arguments
and a ``measure(kernel, impl, spec)`` helper and returns a list of ``Row``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Row:
    kernel: str
    shape: str
    dtype: str
    impl: str
    seconds: float
    peak_bytes: int
    baseline: bool = False  # the plain-torch row the others of this (kernel, shape) compare to


# --------------------------------------------------------------------------------------------
# Work functions: (impl, spec, device) -> (setup() -> state, run(state) -> None). They run in
# the measuring process (a fresh subprocess on CPU).


def info_nce_cross_entropy(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent the way SimCLR code in the wild computes it (two views): the [2N, 2N]
    similarity matrix with its diagonal masked, then ``F.cross_entropy`` against the index of
    each row's positive. Holds about three full matrices (logits, softmax, gradient)."""
    v, n, d = z.shape
    if v != 2:
        raise ValueError("the cross-entropy baseline takes two views")
    f = torch.nn.functional.normalize(z.reshape(2 * n, d), dim=1)
    logits = (f @ f.T / temperature).fill_diagonal_(float("-inf"))
    positive = torch.arange(2 * n, device=z.device).roll(n)  # row i's other view
    return torch.nn.functional.cross_entropy(logits, positive)


def _contrastive_work(impl: str, spec: dict, device: str):
    from selfsup.kernels.contrastive import info_nce

    dtype = getattr(torch, spec["dtype"])

    def setup():
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(spec["v"], spec["n"], spec["d"], generator=gen).to(device, dtype)
        return z.requires_grad_()

    def run(z):
        if impl == "cross_entropy":
            loss = info_nce_cross_entropy(z, 0.1)
        else:
            loss = info_nce(z, 0.1, impl=impl)
        loss.backward()
        z.grad = None
        return loss.item()

    return setup, run


def _sinkhorn_work(impl: str, spec: dict, device: str):
    from selfsup.kernels.sinkhorn import sinkhorn

    dtype = getattr(torch, spec["dtype"])

    def setup():  # cosine scores between embeddings and prototypes, as SwAV has them
        gen = torch.Generator().manual_seed(0)
        z = torch.nn.functional.normalize(torch.randn(spec["b"], 128, generator=gen), dim=1)
        c = torch.nn.functional.normalize(torch.randn(spec["k"], 128, generator=gen), dim=1)
        return (z @ c.T).to(device, dtype)

    def run(scores):
        sinkhorn(scores, 0.05, spec["iterations"], impl=impl)

    return setup, run


def _colour_work(impl: str, spec: dict, device: str):
    import numpy as np

    from selfsup.pipeline import augment_device
    from selfsup.pipeline.params import draw_params
    from selfsup.pipeline.rng import sample_rng
    from selfsup.pipeline.views import ViewSpec

    view = ViewSpec(size=spec["s"], blur_p=0.0, solarize_p=0.2)  # SimCLR-like, no blur
    dtype = getattr(torch, spec["dtype"])

    def setup():
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (spec["b"], 3, spec["s"], spec["s"]), generator=gen)
        x = x.to(torch.uint8).contiguous(memory_format=torch.channels_last).to(device)
        rows = [draw_params(view, sample_rng(0, 0, i, 0), 256, 256) for i in range(spec["b"])]
        return x, torch.from_numpy(np.stack(rows)).to(device)

    def run(state):
        x, params = state
        # "torch": the sequence of torch ops (the kernel's plain-torch reference)
        augment_device.augment_batch(x, params, view, dtype, True, fused=impl == "fused")

    return setup, run


WORK = {"contrastive": _contrastive_work, "sinkhorn": _sinkhorn_work, "colour": _colour_work}


def _measure_here(kernel: str, impl: str, spec: dict, device: str, repeat: int) -> dict:
    """Time and peak memory of one (kernel, impl) in this process; impl "none" = setup only."""
    setup, run = WORK[kernel]("reference" if impl == "none" else impl, spec, device)
    state = setup()
    if device == "cuda":
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        value = run(state)  # warm-up (compilation), also the memory measurement
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - held
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            run(state)
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000 / repeat
        return {"seconds": seconds, "peak_bytes": peak, "value": value}
    seconds, value = 0.0, None
    if impl != "none":
        t0 = time.perf_counter()
        for _ in range(repeat):
            value = run(state)
        seconds = (time.perf_counter() - t0) / repeat
    return {"seconds": seconds, "vmhwm_bytes": _vmhwm(), "value": value}


def _vmhwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _measure_in_subprocess(
    kernel: str, impl: str, spec: dict, repeat: int, exact_memory: bool = False
) -> dict:
    """One measurement in a fresh process. ``exact_memory``: with a fixed mmap threshold glibc's
    dynamic one is off, so every large block is mapped on allocation and unmapped on free, and
    peak RSS follows the live tensors instead of what the heap happened to keep (under the
    default allocator the same tiled run's peak varied from 100 to 245 MiB). The mapping costs
    page faults, so times come from a separate child under the default allocator."""
    job = json.dumps({"kernel": kernel, "impl": impl, "spec": spec, "repeat": repeat})
    env = dict(os.environ)
    if exact_memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    out = subprocess.run(
        [sys.executable, __file__, "--child", job],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_measure(args):
    """The helper given to cases: measure(kernel, impl, spec) -> (seconds, peak_bytes, value);
    value is what the work returned (the loss, for NT-Xent), or None."""
    cpu_baseline: dict[str, int] = {}

    def measure(kernel: str, impl: str, spec: dict) -> tuple[float, int, float | None]:
        if args.device == "cuda":
            r = _measure_here(kernel, impl, spec, "cuda", args.repeat)
            return r["seconds"], r["peak_bytes"], r["value"]
        key = json.dumps([kernel, spec], sort_keys=True)
        if key not in cpu_baseline:
            setup_only = _measure_in_subprocess(kernel, "none", spec, 1, exact_memory=True)
            cpu_baseline[key] = setup_only["vmhwm_bytes"]
        timed = _measure_in_subprocess(kernel, impl, spec, args.repeat)
        peak = _measure_in_subprocess(kernel, impl, spec, 1, exact_memory=True)["vmhwm_bytes"]
        return timed["seconds"], peak - cpu_baseline[key], timed["value"]

    return measure


# --------------------------------------------------------------------------------------------
# Cases: (args, measure) -> list[Row]. Append new kernels here.


def contrastive_cases(args, measure) -> list[Row]:
    """Baseline: F.cross_entropy over the masked similarity matrix (what SimCLR code in the
    wild runs); the float64-style reference is kept as a row for comparison. Every row's loss
    must equal the baseline's (same inputs), or the comparison would be meaningless."""
    dtypes = ["float32"] if args.device == "cpu" else ["float32", "bfloat16"]
    impls = ["cross_entropy", "reference", "tiled"] + (["triton"] if args.device == "cuda" else [])
    rows = []
    for dtype in dtypes:
        spec = {"v": args.views, "n": args.n, "d": args.d, "dtype": dtype}
        shape = f"V={args.views} N={args.n} D={args.d}"
        losses = {}
        for impl in impls:
            seconds, peak, losses[impl] = measure("contrastive", impl, spec)
            row = Row("nt-xent fwd+bwd", shape, dtype, impl, seconds, peak, impl == "cross_entropy")
            rows.append(row)
        tol = 1e-4 if dtype == "float32" else 2e-2
        for impl, loss in losses.items():
            base = losses["cross_entropy"]
            if abs(loss - base) > tol * abs(base):
                raise SystemExit(f"nt-xent {impl} loss {loss} differs from the baseline's {base}")
    return rows


def sinkhorn_cases(args, measure) -> list[Row]:
    impls = ["torch", "reference"] + (["triton"] if args.device == "cuda" else [])
    spec = {"b": 4096, "k": 3000, "iterations": 3, "dtype": "float32"}
    rows = []
    for impl in impls:
        seconds, peak, _ = measure("sinkhorn", impl, spec)
        rows.append(
            Row("sinkhorn", "B=4096 K=3000 it=3", "float32", impl, seconds, peak, impl == "torch")
        )
    return rows


def colour_cases(args, measure) -> list[Row]:
    """The fused colour kernel is Triton-only: on CPU only the torch chain is timed."""
    impls = ["torch"] + (["fused"] if args.device == "cuda" else [])
    b = 256 if args.device == "cuda" else 32
    spec = {"b": b, "s": 224, "dtype": "bfloat16" if args.device == "cuda" else "float32"}
    rows = []
    for impl in impls:
        seconds, peak, _ = measure("colour", impl, spec)
        shape = f"{b}x3x224x224 u8"
        rows.append(Row("colour", shape, spec["dtype"], impl, seconds, peak, impl == "torch"))
    return rows


CASES = [
    ("contrastive", contrastive_cases),
    ("sinkhorn", sinkhorn_cases),
    ("colour", colour_cases),
]


def print_table(rows: list[Row]) -> None:
    header = f"{'kernel':<16} {'shape':<22} {'dtype':<9} {'impl':<14} {'time':>9} "
    header += f"{'peak MiB':>9} {'time/base':>9} {'mem/base':>9}"
    print(header)
    print("-" * len(header))
    base = {}
    for r in rows:
        if r.baseline:
            base[(r.kernel, r.shape, r.dtype)] = r
    for r in rows:
        b = base.get((r.kernel, r.shape, r.dtype))
        t_ratio = f"{r.seconds / b.seconds:.2f}" if b and b.seconds else "-"
        m_ratio = f"{r.peak_bytes / b.peak_bytes:.3f}" if b and b.peak_bytes > 0 else "-"
        print(
            f"{r.kernel:<16} {r.shape:<22} {r.dtype:<9} {r.impl:<14} {r.seconds * 1e3:>7.1f}ms "
            f"{r.peak_bytes / 2**20:>9.1f} {t_ratio:>9} {m_ratio:>9}"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--n", type=int, default=8192, help="samples per view")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="also write every row to FILE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one CPU measurement in a fresh process
        job = json.loads(args.child)
        print(
            json.dumps(_measure_here(job["kernel"], job["impl"], job["spec"], "cpu", job["repeat"]))
        )
        return
    torch.manual_seed(0)
    measure = make_measure(args)
    rows = []
    for name, case in CASES:
        if args.only is None or args.only in name:
            rows += case(args, measure)
    how = (
        "torch.cuda.max_memory_allocated minus inputs; CUDA events"
        if args.device == "cuda"
        else "peak RSS (VmHWM) of a fresh subprocess (fixed mmap threshold) minus that of a "
        "setup-only subprocess; "
        "wall clock"
    )
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"peak memory: {how}; ratios vs the baseline row of each kernel in this run\n")
    print_table(rows)
    if args.json:
        meta = {"device": args.device, "torch": torch.__version__, "memory": how}
        rows_out = [dataclasses.asdict(r) for r in rows]
        Path(args.json).write_text(json.dumps({**meta, "rows": rows_out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
