"""Run a function in W processes joined by a gloo process group (CPU), and collect results.

    results = run_ranks(worker, 2, arg)   # worker(rank, world, arg) -> picklable, per rank

``worker`` must be a module-level function of an importable module (processes are spawned).
Each process uses one torch thread, so two ranks fit this project's 2-core machine. A rank
that raises fails the call with its traceback; a rank that hangs fails it after ``timeout``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import socket
import traceback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world, port, args, out) -> None:
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
            WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        )  # fmt: skip
        dist.init_process_group("gloo", rank=rank, world_size=world)
        try:
            # plain pickle bytes: torch's multiprocessing pickler would share tensors through
            # this process, which exits right after
            out.put((rank, "ok", pickle.dumps(fn(rank, world, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException:
        out.put((rank, "error", traceback.format_exc()))


def run_ranks(fn, world: int, *args, timeout: float = 300.0) -> list:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_entry, args=(fn, r, world, port, args, out), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    try:
        for _ in range(world):
            rank, status, value = out.get(timeout=timeout)
            if status == "error":
                raise AssertionError(f"rank {rank} failed:\n{value}")
            results[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]
