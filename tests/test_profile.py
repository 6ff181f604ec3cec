"""selfsup profile on two known cases: a tiny model fed the full SimCLR recipe at 224 px from
JPEG photos (input-bound) and a ResNet-50 fed crop-only 64 px views from in-memory arrays
(compute-bound). The verdict must name the right side, and the loader's stage times must add
up to its measured time within 15%."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import simplejpeg

from selfsup.bench.photos import ensure_photos
from selfsup.bench.profile import format_report, profile, thread_counts, write_report
from selfsup.config import load_config
from selfsup.pipeline import ImageFolderSource
from selfsup.pipeline.decode import decode_image
from selfsup.pipeline.loader import dali_installed
from selfsup.pipeline.sources import ArraySource

COMMON = ["train.threads=0", "data.threads=0", "eval.knn=false", "train.channels_last=true"]


def _check_stages(r):
    st = r["loader_stages"]
    assert set(st["stages_ms"]) == {"read", "decode", "crop_resize", "augment", "collate"}
    assert 0.85 <= st["stages_over_wall"] <= 1.15, st
    assert abs(sum(st["share"].values()) - 1) < 1e-3


def big_photos(root, count=32, side=(2400, 1800)):
    """The generated photos upscaled to 4.3 megapixels (a phone camera's JPEGs): decoding
    them in full costs far more than a tiny model's step on a 224 px view."""
    photos = ImageFolderSource(ensure_photos(root / "small", count=count, classes=2,
                                             progress=False))  # fmt: skip
    for i in range(len(photos)):
        img = cv2.resize(decode_image(photos.read(i)[0]), side, interpolation=cv2.INTER_CUBIC)
        out = root / "big" / f"c{photos.labels[i]}" / f"{i:03d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(simplejpeg.encode_jpeg(img, 90))
    return ImageFolderSource(root / "big")


def test_a_tiny_model_on_224px_jpegs_is_input_bound(tmp_path):
    cfg = load_config("tests/tiny.yaml", [
        *COMMON, "method.name=simclr", "method.proj_hidden_dim=16", "method.proj_dim=8",
        "data.size=224", "data.view_overrides={}", "data.reduced_decode=false",
        "model.width=1", "model.small_input=false", "train.batch_size=16",
    ])  # fmt: skip
    assert cfg.data.recipe == "simclr"
    changes = ("bf16", "reduced_decode", "beton", "dali")
    r = profile(cfg, steps=3, warmup=1, progress=False, source=big_photos(tmp_path),
                changes=changes)  # fmt: skip
    assert r["verdict"] == "input-bound", r["how_much"]
    ips = r["step"]["images_per_sec"]
    assert ips["loader_only"] < 0.9 * ips["model_only"]
    _check_stages(r)
    # the decode of 2400x1800 JPEGs and the 224 px augmentation dominate, not reading
    st = r["loader_stages"]["stages_ms"]
    assert st["decode"] + st["augment"] > st["read"]
    # on a CPU device nothing is copied and the augmentation is fused into the engine
    assert r["loader_stages"]["device_stages_ms"] == {"h2d": None, "device_augment": None}
    assert "no host-to-device copy (the device is the host)" in format_report(r)
    assert any(a.startswith(("more cores", "data.threads")) for a in r["advice"]), r["advice"]
    # DCT-reduced decoding was off: measured, and advised when it helps
    (tried,) = [c for c in r["candidates"] if c["option"] == "data.reduced_decode=true"]
    if tried["gain"] > 1.05:
        assert any(a.startswith("data.reduced_decode=true") for a in r["advice"])
    assert not any(a.startswith("train.") for a in r["advice"])  # model changes: not advised
    # the same 32 photos packed at twice the view size decode several times faster: advised
    (packed,) = [c for c in r["candidates"] if c["option"] == "selfsup pack --max-res 448"]
    assert packed["side"] == "loader" and packed["gain"] > 2, packed
    assert "median of 2400 px" in packed["detail"]
    assert any(a.startswith("selfsup pack --max-res 448") for a in r["advice"]), r["advice"]
    options = {c["option"] for c in r["candidates"]}
    assert "train.compile=true" not in options  # not among `changes`
    if dali_installed():  # measured in DALI's CPU-only mode here, advised only if faster
        (dali,) = [c for c in r["candidates"] if c["option"] == "data.engine=dali"]
        assert "CPU-only" in dali["detail"]
        assert any(a.startswith("data.engine=dali") for a in r["advice"]) == (dali["gain"] > 1.05)
    assert [t["threads"] for t in r["thread_scaling"]] == thread_counts(
        r["thread_scaling"][-1]["threads"]
    )
    paths = write_report(r, tmp_path / "out")
    assert json.loads(paths[0].read_text())["verdict"] == "input-bound"
    md = paths[1].read_text()
    assert md.startswith(format_report(r)) and "**input-bound**" in md
    pngs = [p.name for p in paths[2:]]
    assert pngs == ["stages.png", "threads.png", "timeline.png"]
    for p in paths[2:]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({p.name})" in md
    steps = r["step"]["end_to_end_steps_ms"]
    assert len(steps["data_wait"]) == 3 and len(steps["forward"]) == 3


def test_resnet50_on_64px_arrays_is_compute_bound():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 72, 72, 3), dtype=np.uint8)
    source = ArraySource(images, rng.integers(0, 4, 64))
    cfg = load_config("tests/tiny.yaml", [
        *COMMON, "method.name=simclr", "data.size=64", "model.arch=resnet50",
        "model.width=64", "model.small_input=false", "train.batch_size=8",
        "data.view_overrides={jitter_p: 0, grayscale_p: 0, blur_p: 0, solarize_p: 0}",
    ])  # fmt: skip
    r = profile(cfg, steps=3, warmup=1, progress=False, source=source, changes=())
    assert r["verdict"] == "compute-bound", r["how_much"]
    ips = r["step"]["images_per_sec"]
    assert ips["loader_only"] > 1.1 * ips["model_only"]
    _check_stages(r)
    # advice for the compute side never names a loader change
    assert not any(a.startswith(("data.", "more cores")) for a in r["advice"]), r["advice"]


@pytest.mark.slow
def test_multi_crop_candidates_fewer_small_views_and_compile():
    """A SwAV config (2 large + 6 small views): half the small views is measured on both
    sides, torch.compile on the model; arrays and views already small: no packing advice."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 40, 40, 3), dtype=np.uint8)
    source = ArraySource(images, rng.integers(0, 4, 64))
    cfg = load_config("tests/tiny.yaml", [*COMMON, "method.name=swav", "data.size=32",
                                          "model.width=16", "train.batch_size=16"])  # fmt: skip
    r = profile(cfg, steps=2, warmup=1, progress=False, source=source,
                changes=("small_crops", "compile", "beton"))  # fmt: skip
    by_option = {c["option"]: c for c in r["candidates"]}
    assert set(by_option) == {"data.small_crops=3", "train.compile=true"}
    fewer = by_option["data.small_crops=3"]
    assert fewer["side"] == "both" and "3 small views per image instead of 6" in fewer["detail"]
    # advised when the slower side got faster (on these tiny timings it may not have)
    advised = any(a.startswith("data.small_crops=3") for a in r["advice"])
    assert advised == (fewer["gain"] > 1.05), (fewer, r["advice"])
    assert by_option["train.compile=true"]["side"] == "model"


def test_profile_refuses_an_unknown_change(capsys):
    from selfsup.cli import main

    assert main(["profile", "--changes", "bf16,turbo", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown change 'turbo'" in err[0], err


@pytest.mark.parametrize("cores, expected", [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]),
                                             (8, [1, 2, 4, 8])])  # fmt: skip
def test_thread_counts(cores, expected):
    assert thread_counts(cores) == expected


def test_plot_draws_a_runs_curves_and_errors_in_one_line(tiny_overrides, tmp_path, capsys):
    from selfsup.cli import main
    from selfsup.trainer.loop import pretrain
    from tests.test_cli import assert_one_line_error

    cfg = load_config("default", [*tiny_overrides, "train.log_every=1", "eval.knn_every=1",
                                  "train.epochs=2", "eval.random_init_baseline=false"])  # fmt: skip
    run = pretrain(cfg, progress=False)["run_dir"]
    assert main(["plot", run]) == 0
    png = tmp_path / "runs" / "tiny" / "curves.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and str(png) in capsys.readouterr().out
    code = main(["plot", str(tmp_path)])
    assert_one_line_error(code, capsys.readouterr().err, r"holds no metrics\.jsonl")


def test_tensorboard_scalars_equal_the_metrics(tiny_overrides, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from selfsup.trainer.loop import pretrain

    cfg = load_config("default", [*tiny_overrides, "train.log_every=2", "train.tensorboard=true",
                                  "eval.random_init_baseline=false"])  # fmt: skip
    run = tmp_path / "runs" / "tiny"
    pretrain(cfg, progress=False)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [s for s, _ in got] == [s for s, _ in losses]
    assert np.allclose([v for _, v in got], [v for _, v in losses], rtol=1e-6)
    assert "lr" in events.Tags()["scalars"] and "knn_top1" in events.Tags()["scalars"]


@pytest.mark.slow
def test_profile_under_torchrun_reports_every_rank(synthetic_root, tmp_path):
    import subprocess

    from tests.test_bench_step import _overrides
    from tests.test_torchrun import _env, pretrain_cmd

    cmd = pretrain_cmd(2)[:-2]  # torchrun ... -m selfsup
    out = subprocess.run(
        [*cmd, "profile", "--no-progress", "--steps", "2", "--warmup", "1", "--out",
         str(tmp_path / "p"), *_overrides(synthetic_root)],
        capture_output=True, text=True, timeout=600, env=_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("# selfsup profile") == 1  # rank 0 alone reports
    r = json.loads((tmp_path / "p" / "report.json").read_text())
    ranks = r["step"]["per_rank"]
    assert [p["rank"] for p in ranks] == [0, 1] and r["step"]["launch"]["world_size"] == 2
    # the global rate counts both ranks' batches over the slower rank's time
    slowest = min(p["images_per_sec"]["end_to_end"] for p in ranks)
    assert r["step"]["images_per_sec"]["end_to_end"] == pytest.approx(2 * slowest, rel=0.02)
    assert "| rank | host |" in (tmp_path / "p" / "report.md").read_text()


def test_trace_holds_the_steps_and_the_loader_stages(synthetic_root, tmp_path, capsys):
    from selfsup.cli import main
    from tests.test_bench_step import _overrides

    out = tmp_path / "p"
    code = main(["profile", "--no-progress", "--steps", "2", "--warmup", "1", "--trace",
                 "--out", str(out), *_overrides(synthetic_root)])  # fmt: skip
    assert code == 0
    assert str(out / "trace.json") in capsys.readouterr().out
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"selfsup.data_wait", "selfsup.step"} <= names
    assert {f"loader.{s}" for s in ("read", "decode", "crop_resize", "augment", "collate")} <= names
    # the loader's ranges fall inside the traced window of the torch events
    steps = [e for e in events if e.get("name") == "selfsup.step"]
    ours = [e for e in events if e.get("cat") == "selfsup.loader"]
    first, last = min(e["ts"] for e in steps), max(e["ts"] + e["dur"] for e in steps)
    assert all(first - 5e6 < e["ts"] < last + 5e6 for e in ours)  # within seconds, not days
    assert all(e["dur"] >= 0 for e in ours)
