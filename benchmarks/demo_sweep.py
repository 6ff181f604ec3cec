"""Run many short `selfsup pretrain` jobs side by side and collect their k-NN results.

Used to choose the demo recipes (``selfsup/configs/<method>_demo.yaml``): each line of the
jobs file is ``TAG CONFIG [key=value ...]``; the jobs run ``--parallel`` at a time, in file
order, each as its own process, and every finished job appends one JSON line (tag, config,
overrides, exit status, k-NN top-1, seconds) to ``OUT/results.jsonl`` at once, so a sweep
stopped by ``--deadline`` keeps what it finished. ``--common`` overrides go on every job,
before its own (e.g. ``train.device=cuda`` on a GPU machine, where several small jobs share
the device).

    python benchmarks/demo_sweep.py jobs.txt --out sweep --parallel 8 --deadline 480
    python benchmarks/demo_sweep.py jobs.txt --check     # only load every job's config
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def read_jobs(path: Path) -> list[tuple[str, str, list[str]]]:
    jobs = []
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words:
            if len(words) < 2:
                sys.exit(f"{path}: a job needs a tag and a config: {line!r}")
            jobs.append((words[0], words[1], words[2:]))
    tags = [t for t, _, _ in jobs]
    if len(set(tags)) != len(tags):
        sys.exit(f"{path}: repeated tags")
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jobs", type=Path)
    ap.add_argument("--out", type=Path, default=Path("sweep"))
    ap.add_argument("--run-dir", type=Path, help="where the run directories go (OUT/runs)")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=0, help="seconds; 0 = none")
    ap.add_argument("--common", nargs="*", default=[], help="overrides for every job")
    ap.add_argument("--check", action="store_true", help="load each config, run nothing")
    args = ap.parse_args()
    jobs = read_jobs(args.jobs)
    if args.check:
        from selfsup.config import load_config

        bad = 0
        for tag, cfg, over in jobs:
            try:
                load_config(cfg, [*args.common, *over])
            except Exception as e:  # report every bad job, not only the first
                bad += 1
                print(f"{tag}: {e}")
        print(f"{len(jobs) - bad} of {len(jobs)} job configs load")
        sys.exit(1 if bad else 0)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    run_dir = args.run_dir or args.out / "runs"
    start = time.monotonic()
    queue, running = list(jobs), {}
    while queue or running:
        late = args.deadline and time.monotonic() - start > args.deadline
        while queue and len(running) < args.parallel and not late:
            tag, cfg, over = queue.pop(0)
            cmd = [
                sys.executable,
                "-m",
                "selfsup",
                "pretrain",
                "--config",
                cfg,
                "--no-progress",
                f"run_dir={run_dir}",
                f"name={tag}",
                *args.common,
                *over,
            ]
            log = open(args.out / f"{tag}.log", "w")
            running[tag] = (
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT),
                time.monotonic(),
                cfg,
                over,
                log,
            )
        if late:
            queue.clear()
            for proc, *_ in running.values():
                proc.terminate()
        for tag in list(running):
            proc, t0, cfg, over, log = running[tag]
            if proc.poll() is None:
                continue
            log.close()
            del running[tag]
            summary = run_dir / tag / "summary.json"
            s = json.loads(summary.read_text()) if summary.exists() else {}
            row = {
                "tag": tag,
                "config": cfg,
                "overrides": over,
                "rc": proc.returncode,
                "knn_top1": s.get("knn_top1"),
                "knn_top1_random_init": s.get("knn_top1_random_init"),
                "seconds": round(time.monotonic() - t0, 1),
            }
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        time.sleep(0.5)
    done = sum(1 for _ in results.open())
    print(f"{done} results in {results}, {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
