"""``selfsup profile``: what limits a run's images/sec, measured in one run, and what to change.

On the config's real data, method, model, precision and device, built as ``selfsup pretrain``
builds them:

1. **the loader's stages**: one engine thread, no prefetch, the cpu engine timing each
   sample's read, decode, crop and resize, augmentation (colour, blur, masking and the
   normalisation, fused on a CPU) and each batch's collation (``Loader(stage_timing=True)``);
   every stage is timed on its own, so their sum checks against the loader's wall time. On
   a GPU, the host-to-device copy and the batched augmentation on the device are timed too,
   as GPU time from CUDA events (``DeviceClock``);
2. **the loader's thread scaling**: images/sec with 1, 2, 4, ... engine threads up to the
   cores this process may use;
3. **the step** (``bench step``): the model alone on synthetic batches (forward, backward,
   optimizer), the loader alone, and end to end with each step's wait for data;
4. **candidate changes**, each measured in the same run against the config measured the
   same way (``--changes``; the ones the config already uses are left out): the model with
   ``channels_last``, bf16, a doubled batch or ``torch.compile``; the loader with DCT-reduced
   decoding, the dali engine, or its images packed into a .beton with a smaller maximum
   side; a multi-crop recipe with half its small views (the loader and the model both).

The **verdict** compares what the loader delivers with what the model consumes: input-bound
when the loader alone gives less than 90% of the model's rate, compute-bound when it gives
more than 110%, balanced in between; the end-to-end data wait is reported beside it. Advice
follows from the same numbers and never names an option the config already uses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from selfsup import distributed
from selfsup.bench.step import _endless, _sync, bench_step
from selfsup.config import Config
from selfsup.errors import ConfigError, SelfsupError
from selfsup.pipeline.engines.cpu import STAGES
from selfsup.pipeline.loader import Loader
from selfsup.trainer.build import build_loader, describe_launch

INPUT_BOUND, COMPUTE_BOUND = 0.9, 1.1  # loader rate / model rate thresholds
STAGE_LABELS = {
    "read": "read (bytes from storage)",
    "decode": "decode (header, parameters, JPEG)",
    "crop_resize": "crop and resize",
    "augment": "colour, blur, masking, normalise",
    "collate": "batching (buffers, thread hand-off, hand-over)",
    "device_augment": "batched augmentation on the device",
    "h2d": "host-to-device copy",
}


def _loader(cfg: Config, device, batch: int, threads: int, source=None, **kw) -> Loader:
    """The training loader (``build_loader``) with ``threads`` engine threads and ``kw``."""
    launch = describe_launch(cfg, torch.device(device))
    return build_loader(cfg, torch.device(device), launch, False, source,
                        batch_size=batch, threads=threads, **kw)  # fmt: skip


def _time_loader(loader: Loader, batches: int, warmup: int) -> float:
    """Images/sec of ``loader`` over ``batches`` batches after ``warmup`` (epochs wrap)."""
    it = _endless(loader)
    try:
        for _ in range(warmup):
            next(it)
        if loader.stage_clock is not None:
            loader.stage_clock.reset()
        if loader.device_clock is not None:
            loader.device_clock.reset()
        _sync(loader.device)
        start = time.perf_counter()
        n = 0
        for _ in range(batches):
            n += len(next(it).labels)
        _sync(loader.device)
        return n / (time.perf_counter() - start)
    finally:
        it.close()
        loader.close()


def loader_stages(
    cfg: Config, device, batch: int, batches: int, warmup: int, source=None, **kw
) -> dict:
    """Per-image time of each stage with one engine thread and no prefetch, and the loader's
    own wall time per image in the same batches. The device-side stages (``DeviceClock``):
    on a CPU device the batched augmentation, when there is one, is host time and one more
    stage in the sum; on CUDA the copy and the augmentation are GPU time, reported apart."""
    loader = _loader(cfg, device, batch, 1, source, prefetch=0, stage_timing=True, **kw)
    host_clock = loader.stage_clock is not None
    rate = _time_loader(loader, batches, warmup)
    device_s = loader.device_clock.per_image()
    gpu = loader.device_clock.cuda
    out = {
        "engine": loader.engine_name,
        "threads": 1,
        "images_per_sec": round(rate, 1),
        "device_stages_ms": {
            k: None if v is None else round(v * 1000, 4) for k, v in device_s.items()
        },  # fmt: skip
        "device_stages_on": "gpu" if gpu else "host",
        "stages_ms": None,
    }
    if not host_clock:
        return out
    per_image = loader.stage_clock.per_image()
    if not gpu and device_s["device_augment"] is not None:
        per_image["device_augment"] = device_s["device_augment"]
    # What the timing costs: fresh loaders untimed and timed in turns after the one above
    # (A B B A B A A B, so that a drift in the machine's speed cancels), the medians of each
    # (single runs here vary by several percent either way).
    plain, timed = [], []
    for timing in (False, True, True, False, True, False, False, True):
        again = _loader(cfg, device, batch, 1, source, prefetch=0, stage_timing=timing, **kw)
        (timed if timing else plain).append(_time_loader(again, batches, warmup))
    wall_ms = 1000 / rate
    stages_ms = {k: round(v * 1000, 4) for k, v in per_image.items()}
    total = sum(stages_ms.values())
    return {
        **out,
        "wall_ms_per_image": round(wall_ms, 4),
        "stages_ms": stages_ms,
        "stages_sum_ms": round(total, 4),
        "share": {k: round(v / total, 4) for k, v in stages_ms.items()},
        "stages_over_wall": round(total / wall_ms, 4),
        "untimed_images_per_sec": round(statistics.median(plain), 1),
        # images/sec untimed over timed, less one: the timed loader's extra time per image
        "timing_overhead": round(statistics.median(plain) / statistics.median(timed) - 1, 4),
        "overhead_runs": {
            "timed": [round(r, 1) for r in timed],
            "untimed": [round(r, 1) for r in plain],
        },  # fmt: skip
    }


def thread_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to ``cores``, and ``cores`` itself."""
    out, t = [], 1
    while t < cores:
        out.append(t)
        t *= 2
    return [*out, cores]


def thread_scaling(
    cfg: Config, device, batch: int, batches: int, warmup: int, source=None
) -> list[dict]:
    """The loader's images/sec for each engine thread count up to this process's cores."""
    out = []
    for t in thread_counts(distributed.cores_per_process()):
        rate = _time_loader(_loader(cfg, device, batch, t, source), batches, warmup)
        out.append({"threads": t, "images_per_sec": round(rate, 1)})
    return out


def model_rate(cfg: Config, steps: int, warmup: int, batch_factor: int = 1, source=None) -> float:
    """Images/sec of the training step alone on synthetic views of the loader's shapes."""
    from selfsup.trainer.build import build_model_and_optimizer, join, lr_schedule, train_step

    device = join(cfg)
    per_rank = cfg.train.batch_size // distributed.world_size() * batch_factor
    loader = _loader(cfg, device, per_rank // batch_factor, 1, source, prefetch=0)
    try:
        views = next(iter(loader)).views
    finally:
        loader.close()
    if batch_factor > 1:
        views = [torch.cat([v] * batch_factor, dim=1) for v in views]
    views = [torch.empty_like(v).normal_() for v in views]
    model = build_model_and_optimizer(cfg, device, 1000, 100)
    lr_at = lr_schedule(cfg, model.base_lr, 100)
    model.forward.train()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        train_step(model, views, lr_at(i), device, step=i)
    _sync(device)
    return per_rank * steps / (time.perf_counter() - start)


def trace(
    cfg: Config, device, batch: int, steps: int, warmup: int, path: Path, source=None
) -> Path:
    """A Chrome/Perfetto trace of ``steps`` end-to-end steps: torch.profiler's events (the
    step's operators, ``selfsup.data_wait`` and ``selfsup.step`` ranges) with the loader's
    stages added as named ranges on the engine threads (``loader.decode``, ...)."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    from selfsup.trainer.build import build_model_and_optimizer, lr_schedule, train_step

    threads = cfg.data.threads or distributed.cores_per_process()
    loader = _loader(cfg, device, batch, threads, source, stage_timing=True)
    model = build_model_and_optimizer(cfg, device, 1000, 100)
    lr_at = lr_schedule(cfg, model.base_lr, 100)
    it = _endless(loader)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    try:
        for i in range(warmup):
            train_step(model, next(it).views, lr_at(i), device, step=i)
        loader.stage_clock.record()
        epoch_minus_perf = time.time_ns() - time.perf_counter_ns()
        with torch_profile(activities=activities) as prof:
            for i in range(warmup, warmup + steps):
                with record_function("selfsup.data_wait"):
                    b = next(it)
                with record_function("selfsup.step"):
                    train_step(model, b.views, lr_at(i), device, step=i)
            _sync(device)
        events = loader.stage_clock.events or []
    finally:
        it.close()
        loader.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    data = json.loads(path.read_text())
    base = int(data.get("baseTimeNanoseconds", 0))  # the trace's times: epoch us minus this
    pid = os.getpid()
    for k, tid, start, end in events:
        ts = (start * 1e9 + epoch_minus_perf - base) / 1000
        data["traceEvents"].append({
            "ph": "X", "cat": "selfsup.loader", "name": f"loader.{STAGES[k]}", "pid": pid,
            "tid": tid, "ts": round(ts, 3), "dur": round((end - start) * 1e6, 3),
        })  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def _with(cfg: Config, section: str, **changes) -> Config:
    return dataclasses.replace(
        cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)}
    )


# The changes `candidates` may measure, by name (``selfsup profile --changes``).
CHANGES = ("channels_last", "bf16", "batch", "compile", "reduced_decode", "dali", "beton",
           "small_crops")  # fmt: skip


def check_changes(names) -> tuple[str, ...]:
    """``names`` as a tuple when each is one of :data:`CHANGES`; else a one-line error."""
    names = tuple(names)
    unknown = [n for n in names if n not in CHANGES]
    if unknown:
        raise ConfigError(
            f"unknown change {unknown[0]!r}; give 'all', 'none' or a comma-separated list of "
            f"{', '.join(CHANGES)}"
        )
    return names


def _result(option: str, side: str, rate: float, baseline: float, detail: str = "") -> dict:
    out = {"option": option, "side": side, "images_per_sec": round(rate, 1),
           "baseline": round(baseline, 1), "gain": round(rate / baseline, 3)}  # fmt: skip
    return {**out, "detail": detail} if detail else out


def _pack_sample(cfg: Config, source, batch: int, batches: int, warmup: int):
    """(the sample of the source the loader reads for ``warmup + batches`` one-thread
    batches, its median longest side, the maximum side a .beton would keep: twice the
    largest view's); None when the source holds arrays or images already that small."""
    from selfsup.pipeline.decode import image_size
    from selfsup.pipeline.sources import SubsetSource, open_split

    if source is None:
        source = open_split(cfg.data, cfg.data.train_split, progress=False)
    n = min(len(source), batch * (warmup + batches))
    sample = SubsetSource(source, range(n))
    sides = []
    for i in range(min(n, 32)):
        payload = sample.read(i)[0]
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            return None  # in-memory arrays: nothing to decode
        hw = image_size(bytes(payload))
        if hw is not None:
            sides.append(max(hw))
    max_side = 2 * cfg.data.size
    median = sorted(sides)[len(sides) // 2] if sides else 0
    if median <= 1.25 * max_side:
        return None
    return sample, median, max_side


def _beton_candidate(cfg, device, batch, batches, warmup, source) -> dict | None:
    """The same images read from a .beton packed with a smaller maximum side, against
    reading them as they are: one engine thread each, the same sample."""
    import tempfile

    from selfsup.pipeline.decode import DecodeError, decode_image
    from selfsup.pipeline.sources import BetonSource
    from selfsup.pipeline.sources.beton_write import write_beton

    found = _pack_sample(cfg, source, batch, batches, warmup)
    if found is None:
        return None
    sample, median, max_side = found

    def decoded(i):
        return lambda: decode_image(sample.read(i)[0])

    with tempfile.TemporaryDirectory(prefix="selfsup-profile-") as tmp:
        path = Path(tmp) / "sample.beton"
        samples = [(decoded(i), int(sample.labels[i])) for i in range(len(sample))]
        written = write_beton(path, samples, max_resolution=max_side, progress=False,
                              skip_errors=(DecodeError,)).written  # fmt: skip
        if written < batch:
            return None
        packed = BetonSource(path)
        as_is = _time_loader(_loader(cfg, device, batch, 1, sample, prefetch=0), batches, warmup)
        rate = _time_loader(_loader(cfg, device, batch, 1, packed, prefetch=0), batches, warmup)
    return _result(
        f"selfsup pack --max-res {max_side}", "loader", rate, as_is,
        f"a .beton whose images' longest side is at most {max_side} px (now a median of "
        f"{median} px): {len(sample)} images packed and read on one engine thread",
    )  # fmt: skip


def candidates(
    cfg: Config,
    device,
    steps: int,
    warmup: int,
    base_stages: dict,
    scaling: list[dict],
    batch: int,
    source=None,
    changes=CHANGES,
) -> list[dict]:
    """The ``changes`` the config does not already use, each measured against the config
    measured the same way in this run:

    - model side, on synthetic batches: ``channels_last``, ``bf16``, a doubled ``batch``,
      ``compile`` (torch.compile; its warm-up steps include compiling);
    - loader side: ``reduced_decode`` (DCT-reduced decoding; one engine thread), ``dali``
      (the dali engine with the config's engine threads: nvJPEG on a GPU, DALI's CPU-only
      mode elsewhere), ``beton`` (the images the loader reads, packed into a .beton with a
      smaller maximum side, against reading them as they are; one engine thread);
    - both: ``small_crops`` (half the multi-crop recipe's small views; the slower of the
      loader and the model, before and after).
    """
    from selfsup.pipeline.loader import dali_installed
    from selfsup.pipeline.recipes import recipe, small_view_count

    want, out = set(check_changes(changes)), []
    t, d = cfg.train, cfg.data
    base_model = None
    model_side = []
    if "channels_last" in want and not t.channels_last:
        model_side.append(("train.channels_last=true", _with(cfg, "train", channels_last=True), 1))
    amp = t.precision in ("bf16", "fp16") or (t.precision == "auto" and device.type == "cuda")
    if "bf16" in want and not amp and t.precision != "fp64":
        model_side.append(("train.precision=bf16", _with(cfg, "train", precision="bf16"), 1))
    if "batch" in want:
        model_side.append((f"train.batch_size={2 * t.batch_size}", cfg, 2))
    if "compile" in want and not t.compile:
        model_side.append(("train.compile=true", _with(cfg, "train", compile=True), 1))
    views = recipe(d.recipe, d.size, small_crops=d.small_crops)
    small = small_view_count(views)
    if model_side or ("small_crops" in want and small > 1):
        base_model = model_rate(cfg, steps, warmup, 1, source)
    for option, variant, factor in model_side:
        try:
            rate = model_rate(variant, steps, warmup, factor, source)
        except torch.OutOfMemoryError:
            continue
        out.append(_result(option, "model", rate, base_model))
    if "reduced_decode" in want and not d.reduced_decode and base_stages.get("stages_ms"):
        st = loader_stages(cfg, device, batch, steps, warmup, source, reduced_decode=True)
        out.append(_result(
            "data.reduced_decode=true", "loader", st["images_per_sec"],
            base_stages["images_per_sec"],
            f"decode {base_stages['stages_ms']['decode']:.2f} -> "
            f"{st['stages_ms']['decode']:.2f} ms/image (one thread)",
        ))  # fmt: skip
    threads = d.threads or distributed.cores_per_process()
    at_threads = next((r["images_per_sec"] for r in scaling if r["threads"] == threads), None)

    def loader_rate(variant: Config = cfg, **kw) -> float:
        return _time_loader(_loader(variant, device, batch, threads, source, **kw), steps, warmup)

    if "dali" in want and base_stages["engine"] != "dali" and dali_installed():
        base = at_threads or loader_rate()
        try:
            rate = loader_rate(engine="dali")
        except SelfsupError:  # e.g. a source DALI cannot read: nothing measured, no advice
            rate = None
        if rate is not None:
            where = ("nvJPEG decoding and crops on the GPU" if device.type == "cuda" else
                     "DALI's CPU-only mode, as there is no GPU here")  # fmt: skip
            out.append(_result("data.engine=dali", "loader", rate, base,
                               f"{threads} threads; {where}"))  # fmt: skip
    if "beton" in want:
        tried = _beton_candidate(cfg, device, batch, steps, warmup, source)
        if tried is not None:
            out.append(tried)
    if "small_crops" in want and small > 1:
        variant = _with(cfg, "data", small_crops=small // 2)
        loader_b, loader_v = at_threads or loader_rate(), loader_rate(variant)
        model_v = model_rate(variant, steps, warmup, 1, source)
        out.append(_result(
            f"data.small_crops={small // 2}", "both", min(loader_v, model_v),
            min(loader_b, base_model),
            f"{small // 2} small views per image instead of {small}: loader {loader_b:,.0f} -> "
            f"{loader_v:,.0f}, model {base_model:,.0f} -> {model_v:,.0f} images/sec; this "
            "changes the method's views, whose published accuracy is for the recipe's count",
        ))  # fmt: skip
    return out


def verdict(cfg: Config, step: dict, scaling: list[dict], stages: dict, tried: list[dict]):
    """(kind, how much, advice lines) from the measured numbers."""
    ips = step["images_per_sec"]
    loader, model = ips["loader_only"], ips["model_only"]
    ratio = loader / model
    e2e = step["end_to_end"]
    wait = e2e.get("data_wait", {}).get("median_ms", 0.0)
    step_ms = e2e["step"]["median_ms"]
    wait_share = wait / step_ms if step_ms else 0.0
    if ratio < INPUT_BOUND:
        kind = "input-bound"
        how = (
            f"the loader delivers {loader:,.0f} images/sec, the model alone takes "
            f"{model:,.0f}: it would run {model / loader:.2f}x faster with data ready"
        )
    elif ratio > COMPUTE_BOUND:
        kind = "compute-bound"
        how = (
            f"the model takes {model:,.0f} images/sec, the loader alone delivers "
            f"{loader:,.0f} ({ratio:.2f}x what the model uses)"
        )
    else:
        kind = "balanced"
        how = f"the loader ({loader:,.0f} images/sec) and the model ({model:,.0f}) are within 10%"
    how += (
        f"; end to end {ips['end_to_end']:,.0f}, waiting for data {100 * wait_share:.0f}% of a step"
    )
    advice = []
    side = {"input-bound": "loader", "compute-bound": "model"}.get(kind)
    if kind != "compute-bound":
        current = cfg.data.threads or distributed.cores_per_process()
        best = max(scaling, key=lambda r: r["images_per_sec"])
        now = next((r for r in scaling if r["threads"] == current), None)
        if (
            now
            and best["threads"] != current
            and best["images_per_sec"] > 1.05 * now["images_per_sec"]
        ):
            advice.append(
                f"data.threads={best['threads']}: {best['images_per_sec']:,.0f} images/sec "
                f"in the scaling curve against {now['images_per_sec']:,.0f} with {current}"
            )
        elif len(scaling) > 1:
            first, last = scaling[0], scaling[-1]
            eff = last["images_per_sec"] / (first["images_per_sec"] * last["threads"])
            advice.append(
                f"more cores: {first['images_per_sec']:,.0f} images/sec on 1 thread, "
                f"{last['images_per_sec']:,.0f} on {last['threads']} "
                f"({100 * eff:.0f}% scaling efficiency); each core adds about "
                f"{first['images_per_sec'] * eff:,.0f}"
            )
        if stages.get("stages_ms"):
            top = max(stages["share"], key=stages["share"].get)
            advice.append(
                f"the costliest stage is {STAGE_LABELS[top]}: "
                f"{stages['stages_ms'][top]:.2f} ms of {stages['stages_sum_ms']:.2f} ms "
                f"per image on one thread ({100 * stages['share'][top]:.0f}%)"
            )
    for c in sorted(tried, key=lambda c: -c["gain"]):
        if c["gain"] > 1.05 and (side is None or c["side"] in (side, "both")):
            extra = f"; {c['detail']}" if c.get("detail") else ""
            who = "end to end (the slower side)" if c["side"] == "both" else f"for the {c['side']}"
            advice.append(
                f"{c['option']}: {c['images_per_sec']:,.0f} images/sec {who} against "
                f"{c['baseline']:,.0f} ({c['gain']:.2f}x){extra}"
            )
    return kind, how, advice


def _say(text: str) -> None:
    print(f"selfsup profile: measuring {text} ...", file=sys.stderr, flush=True)


def profile(
    cfg: Config,
    steps: int = 10,
    warmup: int = 2,
    progress: bool = True,
    *,
    source=None,
    changes=CHANGES,
    trace_path: Path | None = None,
) -> dict:
    """Every measurement of the module doc, the verdict and the advice, as one dict.
    ``source``: a Source given in code instead of the config's data; ``changes``: which of
    :data:`CHANGES` to measure (empty: none; the verdict does not need them)."""
    start = time.time()
    step = bench_step(cfg, steps=steps, warmup=warmup, progress=progress, source=source)
    device = torch.device(step["launch"]["device"])
    batch = step["launch"]["per_process_batch"]
    say = _say if progress and distributed.is_main() else lambda text: None
    say("the loader's stages, one engine thread (and the timing's cost: 8 more runs)")
    stages = loader_stages(cfg, device, batch, steps, warmup, source)
    say("the loader's thread scaling")
    scaling = thread_scaling(cfg, device, batch, steps, warmup, source)
    if changes:
        say(f"candidate changes that apply, of: {', '.join(changes)}")
    tried = candidates(cfg, device, steps, warmup, stages, scaling, batch, source, changes)
    kind, how, advice = verdict(cfg, step, scaling, stages, tried)
    traced = None
    if trace_path is not None:
        say("a torch.profiler trace")
        traced = str(trace(cfg, device, batch, steps, warmup, trace_path, source))
    return {
        "trace": traced,
        "verdict": kind,
        "how_much": how,
        "advice": advice,
        "loader_stages": stages,
        "thread_scaling": scaling,
        "step": step,
        "candidates": tried,
        "cores": os.cpu_count(),
        "seconds": round(time.time() - start, 1),
    }


def format_report(r: dict) -> str:
    """The verdict, the advice and the tables, as Markdown."""
    s, st = r["step"], r["loader_stages"]
    c = s["config"]
    lines = [
        f"# selfsup profile: {c['method']} {c['arch']} (width {c['width']}), recipe {c['recipe']}",
        "",
        f"**{r['verdict']}**: {r['how_much']}.",
        "",
    ]
    if r["advice"]:
        lines += ["What would help, measured in this run:", ""]
        lines += [f"- {a}" for a in r["advice"]] + [""]
    ips = s["images_per_sec"]
    lines += ["| measured | images/sec |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v:,.1f} |" for k, v in ips.items()]
    if st.get("stages_ms"):
        lines += [
            "",
            f"Loader stages, one {st['engine']} engine thread, ms per image "
            f"(their sum is {100 * st['stages_over_wall']:.0f}% of the loader's "
            f"{st['wall_ms_per_image']:.2f} ms; timing them cost "
            f"{100 * st['timing_overhead']:+.1f}% against the same loader untimed, medians of 4 "
            "runs each):",
            "",
            "| stage | ms | share |",
            "|---|---|---|",
        ]
        lines += [
            f"| {STAGE_LABELS[k]} | {v:.3f} | {100 * st['share'][k]:.0f}% |"
            for k, v in st["stages_ms"].items()
        ]
    lines += ["", *_device_lines(st)]
    if r["candidates"]:
        lines += [
            "",
            "Changes measured in this run (each against the config measured the same "
            "way just before; advice above lists those over 1.05x on the limiting side):",
            "",
            "| change | side | images/sec | config's | gain |",
            "|---|---|---|---|---|",
        ]
        for c in r["candidates"]:
            lines.append(
                f"| `{c['option']}` | {c['side']} | {c['images_per_sec']:,.1f} | "
                f"{c['baseline']:,.1f} | {c['gain']:.2f}x |"
            )
    lines += ["", "| engine threads | images/sec |", "|---|---|"]
    lines += [f"| {t['threads']} | {t['images_per_sec']:,.1f} |" for t in r["thread_scaling"]]
    if len(s.get("per_rank", [])) > 1:
        lines += ["", "Per rank (images/sec of this rank's share; the global figures above count "
                  "every rank's batches over the slowest rank's time):", "",
                  "| rank | host | model only | loader only | end to end | data wait, ms |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for pr in s["per_rank"]:
            i = pr["images_per_sec"]
            lines.append(f"| {pr['rank']} | {pr['host']} | {i['model_only']:,.1f} | "
                         f"{i['loader_only']:,.1f} | {i['end_to_end']:,.1f} | "
                         f"{pr['data_wait_median_ms']:.1f} |")  # fmt: skip
    e = s["end_to_end"]
    lines += [
        "",
        "Per step, end to end (ms, median / p90): "
        + ", ".join(
            f"{k.replace('_', ' ')} {v['median_ms']:.1f} / {v['p90_ms']:.1f}" for k, v in e.items()
        ),
    ]
    lines += [
        "",
        f"Profiled in {r['seconds']:.0f} s on {r['cores']} cores, device "
        f"{s['launch']['device']}, {s['timing']}.",
    ]
    return "\n".join(lines) + "\n"


def _device_lines(st: dict) -> list[str]:
    """The device-side stages: a table of GPU time on CUDA, else why there are none."""
    dev = st.get("device_stages_ms") or {}
    ran = {k: v for k, v in dev.items() if v is not None}
    if st.get("device_stages_on") == "gpu" and ran:
        return [
            "On the GPU, ms per image of GPU time (CUDA events; it overlaps the host's stages "
            "and the step):",
            "",
            "| stage | ms |",
            "|---|---|",
            *(f"| {STAGE_LABELS[k]} | {v:.3f} |" for k, v in ran.items()),
        ]
    why = []
    if dev.get("h2d") is None:
        why.append("no host-to-device copy (the device is the host)")
    if dev.get("device_augment") is None:
        why.append("no batched device augmentation (colour and blur run fused in the engine "
                   "threads: the colour stage above)")  # fmt: skip
    return ["Device side: " + "; ".join(why) + "."] if why else []


def write_report(r: dict, out: Path) -> list[Path]:
    """report.json, the figures (stages.png, threads.png, timeline.png; with matplotlib) and
    report.md showing them."""
    from selfsup.bench.plots import MISSING, profile_figures

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(r, indent=2) + "\n")
    figures = profile_figures(r, out)
    md = format_report(r)
    if figures:
        md += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n"
    else:
        md += f"\n({MISSING})\n"
    (out / "report.md").write_text(md)
    return [out / "report.json", out / "report.md", *figures]


__all__ = ["STAGES", "profile", "format_report", "write_report", "verdict"]
