"""The built-in synthetic dataset: layout, determinism, caching, and only shape reveals class."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg

from selfsup.errors import DataError
from selfsup.pipeline.sources.synthetic import (
    CLASSES,
    SYNTHETIC_VERSION,
    default_cache_dir,
    ensure_synthetic,
    image_rng,
    render,
)

TRAIN, VAL = 40, 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    return ensure_synthetic(root, seed=0, train_per_class=TRAIN, val_per_class=VAL, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def _features(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean and std of each RGB channel, with the labels."""
    feats, labels = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((root / split / name).glob("*.jpg")):
            img = simplejpeg.decode_jpeg(path.read_bytes()).reshape(-1, 3).astype(np.float64)
            feats.append(np.concatenate([img.mean(0), img.std(0)]))
            labels.append(label)
    return np.array(feats), np.array(labels)


def _nearest_centroid(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> float:
    """Accuracy of the best nearest-class-centroid classifier on all features or on one alone
    (one alone catches a leak that the other, noisy features would drown)."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    best = 0.0
    for cols in [slice(None), *range(xtr.shape[1])]:
        a, b = xtr[:, cols].reshape(len(xtr), -1), xte[:, cols].reshape(len(xte), -1)
        centroids = np.stack([a[ytr == c].mean(0) for c in range(len(CLASSES))])
        pred = np.argmin(((b[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
        best = max(best, float((pred == yte).mean()))
    return best


def test_layout_meta_and_images(dataset: Path) -> None:
    assert len(CLASSES) == 10 and list(CLASSES) == sorted(CLASSES)
    assert all(name.startswith(f"{i:02d}_") for i, name in enumerate(CLASSES))
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["version"] == SYNTHETIC_VERSION and meta["seed"] == 0
    assert meta["classes"] == list(CLASSES)
    assert meta["counts"] == {"train": 10 * TRAIN, "val": 10 * VAL}
    assert sorted(p.name for p in dataset.iterdir()) == ["meta.json", "train", "val"]
    for split, n in (("train", TRAIN), ("val", VAL)):
        assert sorted(p.name for p in (dataset / split).iterdir()) == list(CLASSES)
        for name in CLASSES:
            files = sorted(p.name for p in (dataset / split / name).iterdir())
            assert files == [f"{i:05d}.jpg" for i in range(n)]
    for path in list(dataset.glob("*/*/0000[0-2].jpg")):
        data = path.read_bytes()
        assert data[:2] == b"\xff\xd8"
        h, w, colourspace, _ = simplejpeg.decode_jpeg_header(data)
        assert colourspace == "YCbCr" and 64 <= h <= 96 and 64 <= w <= 96
        assert simplejpeg.decode_jpeg(data).shape == (h, w, 3)
    # No temporary directory is left beside the dataset.
    assert [p.name for p in dataset.parent.iterdir()] == ["data"]


def test_deterministic_prefix_and_seed_dependent(tmp_path: Path, dataset: Path) -> None:
    kw = dict(train_per_class=3, val_per_class=2, progress=False)
    a = _files(ensure_synthetic(tmp_path / "a", seed=0, **kw))
    b = _files(ensure_synthetic(tmp_path / "b", seed=0, **kw))
    c = _files(ensure_synthetic(tmp_path / "c", seed=1, **kw))
    assert len(a) == 50 and a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)
    # Images are keyed by (seed, split, class, index): a small dataset is a prefix of a large one,
    # and the two splits never share an image.
    big = _files(dataset)
    assert all(big[k] == v for k, v in a.items())
    assert not set(big[k] for k in big if k.startswith("val")) & {
        big[k] for k in big if k.startswith("train")
    }


def test_reuse_and_mismatch(dataset: Path) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    again = ensure_synthetic(
        dataset, seed=0, train_per_class=TRAIN, val_per_class=VAL, progress=False
    )
    assert again == dataset
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == stamps
    with pytest.raises(DataError, match=r"seed=0 \(asked 1\).*delete"):
        ensure_synthetic(dataset, seed=1, train_per_class=TRAIN, val_per_class=VAL)


def test_rejects_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no meta.json"):
        ensure_synthetic(tmp_path / "photos", train_per_class=1, val_per_class=1)


def test_default_root_and_racing_generators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    # Several generators racing for one directory: each returns it, one copy survives intact.
    results: list[Path] = []

    def run() -> None:
        results.append(ensure_synthetic(seed=3, train_per_class=2, val_per_class=1, progress=False))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = tmp_path / "cache" / f"synthetic-v{SYNTHETIC_VERSION}-s3-2x1"
    assert results == [expected] * 3
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [expected.name]
    assert len(list(expected.rglob("*.jpg"))) == 30


def test_colour_statistics_do_not_reveal_class(dataset: Path) -> None:
    acc = _nearest_centroid(*_features(dataset, "train"), *_features(dataset, "val"))
    assert acc < 0.3, f"colour/contrast statistics predict the class ({acc:.2f} accuracy)"


@pytest.fixture(scope="module")
def rendered() -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(label, RGB image, shape coverage) for 30 images per class, straight from the renderer."""
    return [
        (label, *render(image_rng(0, "train", label, i), label))
        for label in range(len(CLASSES))
        for i in range(30)
    ]


def _split_half(feats: list[np.ndarray], labels: list[int]) -> float:
    x, y = np.array(feats), np.array(labels)
    even = np.arange(len(y)) % 2 == 0
    return _nearest_centroid(x[even], y[even], x[~even], y[~even])


def test_shape_and_background_colours_do_not_reveal_class(rendered: list) -> None:
    feats = [
        np.concatenate([img[a > 0.99].mean(0), img[a < 0.01].mean(0)]) for _, img, a in rendered
    ]
    acc = _split_half(feats, [label for label, _, _ in rendered])
    assert acc < 0.3, f"shape or background colour predicts the class ({acc:.2f} accuracy)"


def test_shape_reveals_class(rendered: list) -> None:
    """Rotation- and scale-invariant silhouette moments separate the classes, and the shape stands
    out from its background, so the task is learnable from shape alone."""
    feats = []
    for _, image, alpha in rendered:
        assert 0.02 < alpha.mean() < 0.6
        luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
        assert abs(luma[alpha > 0.99].mean() - luma[alpha < 0.01].mean()) > 30
        hu = cv2.HuMoments(cv2.moments(alpha)).ravel()[:4]
        feats.append(-np.sign(hu) * np.log10(np.abs(hu) + 1e-30))
    acc = _split_half(feats, [label for label, _, _ in rendered])
    assert acc > 0.6, f"silhouettes barely separate the classes ({acc:.2f} accuracy)"
