"""`selfsup bench loader`, the Pillow reference pipeline and the ImageNet-like photo generator.

No timing assertions: speed is reported by the benchmark, never asserted.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.bench import main as bench_main
from selfsup.bench.photos import encode, ensure_photos, photo_rng, render
from selfsup.bench.reference import ReferenceDataset, apply_view, to_loader_layout
from selfsup.pipeline import ImageFolderSource, Loader
from selfsup.pipeline.params import draw_params
from selfsup.pipeline.recipes import RECIPES, recipe
from selfsup.pipeline.rng import sample_rng
from selfsup.pipeline.views import ViewSpec, expand

TINY = ["--batch-size", "2", "--batches", "2", "--warmup", "1", "--workers", "1",
        "--size", "24", "--repeats", "1", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return ensure_photos(tmp_path_factory.mktemp("photos") / "set", count=8, classes=2,
                         progress=False)  # fmt: skip


def test_photo_generator_is_deterministic_and_realistic(photos, tmp_path):
    again = ensure_photos(tmp_path / "again", count=8, classes=2, progress=False)
    files = sorted(p.relative_to(photos) for p in photos.rglob("*.jpg"))
    assert len(files) == 8 and {f.parts[0] for f in files} == {"n09000000", "n09000001"}
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.jpg"))
    for f in files:
        assert (photos / f).read_bytes() == (again / f).read_bytes()
    sizes = [(photos / f).stat().st_size for f in files]
    assert 60e3 < np.mean(sizes) < 150e3, sizes  # ImageNet averages ~110 KB
    with Image.open(photos / files[0]) as im:
        assert 400 <= im.width <= 500 and 330 <= im.height <= 420
    assert json.loads((photos / "meta.json").read_text())["count"] == 8
    assert ensure_photos(photos, count=8, classes=2, progress=False) == photos  # cached
    img = render(photo_rng(0, 0, 0))
    assert np.array_equal(img, render(photo_rng(0, 0, 0)))
    assert not np.array_equal(img, render(photo_rng(1, 0, 0)))
    assert encode(img)[:3] == b"\xff\xd8\xff"


def test_bench_loader_end_to_end(photos, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    code = bench_main(["loader", "--data", str(photos), "--recipe", "simclr",
                       "--json", str(out_json), *TINY])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "selfsup Loader" in out and "reference (Pillow + DataLoader)" in out
    assert "ratio selfsup / reference:" in out
    result = json.loads(out_json.read_text())
    s = result["summary"]
    assert s["selfsup"]["images_per_sec"] > 0 and s["reference"]["images_per_sec"] > 0
    assert s["ratio"] == pytest.approx(
        s["selfsup"]["images_per_sec"] / s["reference"]["images_per_sec"]
    )
    assert {r["pipeline"] for r in result["runs"]} == {"selfsup", "reference"}
    assert all(r["batches"] == 2 and r["batch_size"] == 2 for r in result["runs"])
    m = result["machine"]
    assert m["cpu_count"] >= 1 and m["versions"]["torch"] == torch.__version__ and m["date"]
    assert result["data"]["images"] == 8 and result["views"][0]["size"] == 24
    assert result["config"]["crop_flip_only"] is False


def test_bench_loader_crop_flip_only_without_reference(photos, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    code = bench_main(["loader", "--data", str(photos), "--crop-flip-only", "--no-reference",
                       "--json", str(out_json), *TINY])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "reference" not in out and "ratio" not in out
    result = json.loads(out_json.read_text())
    assert "reference" not in result["summary"]
    v = result["views"][0]
    assert v["jitter_p"] == v["grayscale_p"] == v["blur_p"] == v["solarize_p"] == 0


def test_bench_loader_user_errors(tmp_path, capsys):
    assert bench_main(["loader", "--data", str(tmp_path / "nope"), *TINY]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("hello")
    assert bench_main(["loader", "--data", str(tmp_path / "x.txt"), *TINY]) == 2
    assert "not .beton or .tar" in capsys.readouterr().err
    assert bench_main(["loader", "--data", str(tmp_path), "--recipe", "nope", *TINY]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def _loader_batch(source, views, n):
    loader = Loader(source, views, n, seed=0, shuffle=False, threads=1, prefetch=0)
    try:
        return next(iter(loader))
    finally:
        loader.close()


def _reference_batch(source, views, n):
    ds = ReferenceDataset(source, views, seed=0)
    items = [ds[i] for i in range(n)]
    per_view = [torch.stack([it[0][v] for it in items]) for v in range(len(expand(views)))]
    return to_loader_layout(per_view, views), torch.tensor([it[1] for it in items])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_reference_matches_loader_layout(photos, name):
    source = ImageFolderSource(photos)
    views = recipe(name, size=32)
    mine = _loader_batch(source, views, 2)
    ref, labels = _reference_batch(source, views, 2)
    assert len(ref) == len(mine.views)
    for r, m in zip(ref, mine.views, strict=True):
        assert r.shape == m.shape and r.dtype == m.dtype == torch.float32
    assert torch.equal(labels, mine.labels)


def _unnormalise(x, spec):
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    return x * std + mean


def test_reference_applies_the_recipe(photos):
    path = sorted(photos.rglob("*.jpg"))[0]
    img = Image.open(path).convert("RGB")
    base = ViewSpec(size=48, jitter_p=0, grayscale_p=0, blur_p=0, solarize_p=0)
    row = draw_params(base, sample_rng(0, 0, 0, 0), img.height, img.width)
    plain = apply_view(img, row, base)
    for field in ("jitter_p", "grayscale_p", "blur_p", "solarize_p"):
        spec = replace(base, **{field: 1.0})
        # draws happen in a fixed order: same crop, only the switched-on op differs
        row2 = draw_params(spec, sample_rng(0, 0, 0, 0), img.height, img.width)
        assert np.array_equal(row[:4], row2[:4])
        out = apply_view(img, row2, spec)
        assert (out - plain).abs().mean() > 0.01, field
    spec = replace(base, grayscale_p=1.0)
    row = draw_params(spec, sample_rng(0, 0, 0, 0), img.height, img.width)
    gray = _unnormalise(apply_view(img, row, spec), base)
    assert torch.allclose(gray[0], gray[1], atol=1e-6) and torch.allclose(gray[1], gray[2])


def test_reference_pixels_match_selfsup_without_random_ops(photos):
    # A centre crop upscaled bilinearly, no random op: Pillow and OpenCV agree to rounding
    # (when shrinking they differ by design: Pillow antialiases, OpenCV does not).
    source = ImageFolderSource(photos)
    spec = ViewSpec(size=160, crop="center", center_fraction=0.3, interpolation="bilinear",
                    jitter_p=0, grayscale_p=0, blur_p=0)  # fmt: skip
    mine = _loader_batch(source, [spec], 4)
    ref, _ = _reference_batch(source, [spec], 4)
    a, b = _unnormalise(mine.views[0][0], spec), _unnormalise(ref[0][0], spec)
    diff = (a - b).abs()
    assert diff.mean() < 1.5 / 255 and diff.max() < 8 / 255, (diff.mean(), diff.max())


def test_bench_loader_skips_and_counts_a_truncated_jpeg(photos, tmp_path, capsys):
    """One truncated JPEG among good ones: both loaders pass over it and say so, no
    traceback (the reference once ended with Pillow's)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(photos, data)
    victim = sorted(data.rglob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    out_json = tmp_path / "bench.json"
    # batches of 4 over 8 images: selfsup's loader reads the truncated one in every run; the
    # reference's seeded shuffle draws 20 of 36 indices (5 of them the truncated image's),
    # and draws one of those with this seed
    args = ["--batch-size", "4", "--batches", "4", *TINY[4:]]
    # 1 of 8 is far above the default 1% (1 in 600 is not): one line naming the file
    code = bench_main(["loader", "--data", str(data), *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(victim) in err, err
    args += ["--max-bad-fraction", "0.5"]
    code = bench_main(["loader", "--data", str(data), "--json", str(out_json), *args])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    result = json.loads(out_json.read_text())
    assert any(str(victim) in b for b in result["data"]["bad_samples"])
    runs = {r["pipeline"]: r for r in result["runs"]}
    assert runs["selfsup"]["bad_samples"] >= 1 and runs["reference"]["bad_samples"] >= 1
    assert "undecodable samples passed over (all runs)" in out and str(victim) in out


def test_bench_loader_reads_beton_and_tar_sources(photos, tmp_path, capsys):
    import io
    import tarfile

    from selfsup.pipeline.decode import decode_image
    from selfsup.pipeline.sources.beton_write import write_beton

    source = ImageFolderSource(photos)
    beton = tmp_path / "photos.beton"
    samples = [(decode_image(source.read(i)[0]), source.read(i)[1]) for i in range(len(source))]
    write_beton(beton, samples, progress=False)
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "000.tar", "w") as tar:
        for i in range(len(source)):
            payload, label = source.read(i)
            for name, data in ((f"s{i:03d}.jpg", payload), (f"s{i:03d}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for data, kind in ((beton, "BetonSource"), (shards, "TarShardSource"),
                       (shards / "000.tar", "TarShardSource")):  # fmt: skip
        out_json = tmp_path / f"{kind}.json"
        code = bench_main(["loader", "--data", str(data), "--json", str(out_json), *TINY])
        out = capsys.readouterr().out
        assert code == 0, out
        result = json.loads(out_json.read_text())
        assert result["data"]["source"] == kind and result["data"]["images"] == 8
        assert result["summary"]["reference"]["images_per_sec"] > 0
