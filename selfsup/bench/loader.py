"""``selfsup bench loader``: images/sec of the selfsup Loader against the Pillow + DataLoader way.

Both pipelines run the same recipe (the same ``ViewSpec`` list, the same per-view draws) on
the same files with the same number of cores (engine threads / DataLoader worker processes).
Each run starts from a fresh loader, discards ``warmup`` batches (worker start-up, caches,
JIT), then times ``batches`` batches of wall time while touching every output tensor;
images/sec counts samples, not views. The image list is repeated virtually (index ``i``
reads file ``i mod n``, with its own random draws) so that warm-up plus timed batches fit in
one epoch for both pipelines: no epoch-boundary stall lands in the timed window. Runs
alternate A B B A ... over ``repeats`` rounds and the reported rate is each pipeline's median.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from selfsup.errors import ConfigError, DataError
from selfsup.pipeline.recipes import recipe as make_recipe
from selfsup.pipeline.sources.folder import ImageFolderSource
from selfsup.pipeline.views import ViewSpec, group_by_size

SYNTHETIC_PHOTOS = "synthetic-photos"
# Crop + flip only: every colour / blur / solarize / mask op off, on both sides.
CROP_FLIP_ONLY = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0,
                  "mask_p": 0.0}  # fmt: skip


@dataclass
class BenchConfig:
    data: str
    recipe: str = "simclr"
    engine: str = "auto"
    batch_size: int = 256
    workers: int = 0  # 0: one per core
    batches: int = 8
    warmup: int = 2
    repeats: int = 2
    size: int | None = None
    seed: int = 0
    photos: int = 512
    reference: bool = True
    crop_flip_only: bool = False
    antialias: bool = False  # selfsup views area-average large shrinks (Pillow always does)
    progress: bool = True
    max_bad_fraction: float = 0.01  # the selfsup Loader stops above it, as in training


@dataclass
class RunResult:
    pipeline: str  # "selfsup" or "reference"
    round: int
    images_per_sec: float
    seconds: float  # timed wall time
    batches: int  # timed batches
    batch_size: int
    parallelism: str  # "2 threads" / "2 workers"
    engine: str | None = None
    bad_samples: int = 0  # undecodable samples passed over (warm-up and timed batches)


class RepeatedSource:
    """``source`` seen ``length`` samples long: index ``i`` reads sample ``i mod n``."""

    def __init__(self, source, length: int) -> None:
        self.source, self.length = source, length
        self.num_classes = source.num_classes

    def __len__(self) -> int:
        return self.length

    def read(self, index: int):
        return self.source.read(index % len(self.source))

    def describe(self, index: int) -> str:
        return self.source.describe(index % len(self.source))


# ---------------------------------------------------------------------------------------
# Data and views
# ---------------------------------------------------------------------------------------


DATA_KINDS = (
    "an image folder in ImageNet layout (root/<class>/*.jpg), a .beton file, a .tar shard or "
    f"a directory of .tar shards, or {SYNTHETIC_PHOTOS} for the built-in photo set"
)


def resolve_data(data: str, photos: int, seed: int = 0, progress: bool = True) -> Path:
    """The path to read: ``data`` itself, or the built-in photo set for the keyword."""
    if data == SYNTHETIC_PHOTOS:
        from selfsup.bench.photos import ensure_photos

        return ensure_photos(count=photos, seed=seed, progress=progress)
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"--data {data!r} does not exist; give {DATA_KINDS}")
    return root


def open_source(path: Path):
    """The source for ``--data``: a .beton file, tar shards (one file, or every .tar in a
    directory) or an image folder."""
    from selfsup.pipeline.sources import BetonSource, TarShardSource

    if path.is_file():
        if path.suffix == ".beton":
            return BetonSource(path)
        if path.suffix == ".tar":
            return TarShardSource([path])
        raise DataError(f"--data {str(path)!r} is a file but not .beton or .tar; give {DATA_KINDS}")
    shards = sorted(path.glob("*.tar"))
    if shards:
        return TarShardSource(shards)
    return ImageFolderSource(path)


def mean_sample_bytes(source, at_most: int = 256) -> float:
    """The mean size of up to ``at_most`` samples' stored payloads, spread over the source."""
    n = len(source)
    sizes = []
    for k in np.linspace(0, n - 1, min(n, at_most)).astype(int):
        try:
            payload = source.read(int(k))[0]
        except OSError:
            continue
        sizes.append(payload.nbytes if isinstance(payload, np.ndarray) else len(payload))
    return float(np.mean(sizes)) if sizes else 0.0


def bench_views(
    name: str, size: int | None, crop_flip_only: bool, antialias: bool = False
) -> list[ViewSpec]:
    from selfsup.pipeline.recipes import RECIPES

    if name not in RECIPES:  # read at run time: recipes are added by name to this dict
        raise ConfigError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    views = make_recipe(name, size)
    if crop_flip_only:
        views = [replace(v, **CROP_FLIP_ONLY) for v in views]
    if antialias:
        views = [replace(v, antialias=True) for v in views]
    return views


def describe_views(views: list[ViewSpec]) -> str:
    return " + ".join(f"{g.count}x{g.size}px" for g in group_by_size(views))


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def touch(tensors: Iterable[torch.Tensor]) -> float:
    """Read every output tensor (a strided sum), so nothing lazy escapes the timing."""
    return sum(float(t.reshape(-1)[::997].sum()) for t in tensors)


def time_batches(batches: Iterable, tensors: Callable, warmup: int, timed: int, bar: tqdm) -> float:
    """Seconds taken by ``timed`` batches after ``warmup`` batches of ``batches``."""
    it = iter(batches)
    start = time.perf_counter() if warmup == 0 else None
    for k in range(warmup + timed):
        try:
            batch = next(it)
        except StopIteration:
            raise RuntimeError("the benchmark ran out of batches (dataset too short)") from None
        touch(tensors(batch))
        bar.update()
        if k == warmup - 1:
            start = time.perf_counter()
    elapsed = time.perf_counter() - start
    close = getattr(it, "close", None)  # a generator: stop its prefetch thread now
    if close:
        close()
    return elapsed


def run_selfsup(cfg: BenchConfig, source, views, length: int, rnd: int, desc: str) -> RunResult:
    from selfsup.pipeline.loader import Loader

    loader = Loader(
        RepeatedSource(source, length), list(views), cfg.batch_size, device="cpu",
        seed=cfg.seed, threads=cfg.workers, engine=cfg.engine,
        max_bad_fraction=cfg.max_bad_fraction,
    )  # fmt: skip
    engine = loader.engine_name
    try:
        with tqdm(total=cfg.warmup + cfg.batches, desc=desc, unit="batch",
                  disable=not cfg.progress, leave=False) as bar:  # fmt: skip
            seconds = time_batches(loader, lambda b: b.views, cfg.warmup, cfg.batches, bar)
    finally:
        loader.close()
    bad = sorted({str(b) for b in loader.bad_samples})  # path: reason
    return RunResult("selfsup", rnd, cfg.batches * cfg.batch_size / seconds, seconds,
                     cfg.batches, cfg.batch_size, f"{cfg.workers} threads", engine,
                     len(loader.bad_samples)), bad  # fmt: skip


def run_reference(cfg: BenchConfig, source, views, length: int, rnd: int, desc: str) -> RunResult:
    from selfsup.bench.reference import ReferenceDataset, reference_loader

    dataset = ReferenceDataset(source, views, seed=cfg.seed, length=length)
    dl = reference_loader(dataset, cfg.batch_size, cfg.workers, seed=cfg.seed + rnd)
    it = iter(dl)
    skipped = []  # per batch: bad samples passed over (the tensor is touched with the views)

    def tensors(b):
        skipped.append(b[2])
        return b[0]

    try:
        with tqdm(total=cfg.warmup + cfg.batches, desc=desc, unit="batch",
                  disable=not cfg.progress, leave=False) as bar:  # fmt: skip
            seconds = time_batches(it, tensors, cfg.warmup, cfg.batches, bar)
    finally:
        del it, dl  # shuts the worker processes down: the next run starts fresh
    bad = int(sum(int(t.sum()) for t in skipped))
    rate = cfg.batches * cfg.batch_size / seconds
    workers = f"{cfg.workers} workers"
    return RunResult("reference", rnd, rate, seconds, cfg.batches, cfg.batch_size, workers,
                     None, bad), []  # fmt: skip


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------


def machine_facts() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"torch": torch.__version__, "numpy": np.__version__}
    for mod in ("cv2", "simplejpeg", "PIL", "numba"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = None
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def bench_loader(cfg: BenchConfig) -> dict:
    """Run the benchmark and return every number (the ``--json`` content)."""
    for name in ("batch_size", "batches", "repeats"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {cfg.warmup}")
    if cfg.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0: one per core), got {cfg.workers}")
    if not 0 <= cfg.max_bad_fraction <= 1:
        raise ConfigError(f"--max-bad-fraction must be in [0, 1], got {cfg.max_bad_fraction}")
    if cfg.engine not in ("cpu", "dali", "auto"):
        raise ConfigError(f"--engine must be cpu, dali or auto, got {cfg.engine!r}")
    cfg = replace(cfg, workers=cfg.workers or os.cpu_count() or 1)
    views = bench_views(cfg.recipe, cfg.size, cfg.crop_flip_only, cfg.antialias)
    root = resolve_data(cfg.data, cfg.photos, cfg.seed, cfg.progress)
    source = open_source(root)
    # Long enough for warm-up + timed batches + the DataLoader's prefetch (2 per worker).
    length = (cfg.warmup + cfg.batches + 2 * cfg.workers + 2) * cfg.batch_size

    pipelines = [("selfsup", run_selfsup)]
    if cfg.reference:
        pipelines.append(("reference", run_reference))
    runs: list[RunResult] = []
    bad: set[str] = set()
    for rnd in range(cfg.repeats):
        order = pipelines if rnd % 2 == 0 else pipelines[::-1]  # A B, B A, ...
        for name, fn in order:
            desc = f"{name} {rnd + 1}/{cfg.repeats}"
            run, where = fn(cfg, source, views, length, rnd, desc)
            runs.append(run)
            bad.update(where)

    summary: dict = {}
    for name, _ in pipelines:
        rates = [r.images_per_sec for r in runs if r.pipeline == name]
        summary[name] = {"images_per_sec": statistics.median(rates), "runs": rates}
    if cfg.reference:
        summary["ratio"] = (
            summary["selfsup"]["images_per_sec"] / summary["reference"]["images_per_sec"]
        )
    return {
        "benchmark": "loader",
        "config": asdict(cfg),
        "data": {
            "root": str(root),
            "source": type(source).__name__,
            "images": len(source),
            "classes": source.num_classes,
            "mean_file_bytes": mean_sample_bytes(source),
            "bad_samples": sorted(bad),  # what the selfsup Loader skipped, with reasons
        },
        "views": [asdict(v) for v in views],
        "engine": next((r.engine for r in runs if r.pipeline == "selfsup"), None),
        "runs": [asdict(r) for r in runs],
        "summary": summary,
        "machine": machine_facts(),
    }


def format_report(result: dict) -> str:
    cfg, data, s = result["config"], result["data"], result["summary"]
    views = [ViewSpec(**d) for d in result["views"]]  # lists become tuples in ViewSpec
    what = "crop + flip only" if cfg["crop_flip_only"] else "full recipe"
    if cfg.get("antialias"):
        what += ", selfsup antialiased"
    lines = [
        f"recipe {cfg['recipe']} ({what}; {describe_views(views)}), batch {cfg['batch_size']}, "
        f"{data['images']} images (mean {data['mean_file_bytes'] / 1e3:.0f} KB) in {data['root']}",
        f"{cfg['warmup']} warm-up + {cfg['batches']} timed batches per run, "
        f"median of {cfg['repeats']} run(s) each; {result['machine']['cpu_count']} cores",
        "",
        f"{'pipeline':<34}{'images/sec':>12}{'batches timed':>16}  threads/workers",
    ]
    rows = [("selfsup", f"selfsup Loader ({result['engine']} engine)")]
    if "reference" in s:
        rows.append(("reference", "reference (Pillow + DataLoader)"))
    for key, label in rows:
        runs = [r for r in result["runs"] if r["pipeline"] == key]
        timed = f"{len(runs)} x {cfg['batches']}"
        lines.append(
            f"{label:<34}{s[key]['images_per_sec']:>12.1f}{timed:>16}  {runs[0]['parallelism']}"
        )
    if "ratio" in s:
        lines += ["", f"ratio selfsup / reference: {s['ratio']:.2f}x"]
    skipped = {r["pipeline"]: 0 for r in result["runs"]}
    for r in result["runs"]:
        skipped[r["pipeline"]] += r.get("bad_samples", 0)
    if any(skipped.values()) or data.get("bad_samples"):
        counts = ", ".join(f"{k} {v}" for k, v in skipped.items())
        lines += ["", f"undecodable samples passed over (all runs): {counts}"]
        lines += [f"  {where}" for where in data.get("bad_samples", [])]
    return "\n".join(lines)
