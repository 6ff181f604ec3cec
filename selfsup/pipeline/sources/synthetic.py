"""The built-in synthetic dataset: ten shape classes on textured backgrounds, made on first use.

It lets the demo run and the tests work offline. The task is built so that only *shape* tells
the classes apart: every colour, texture and distractor is drawn independently of the class,
and the shape and its background come from the same colour distribution. A network therefore
scores well on k-NN only if pretraining taught it silhouettes, which is what the demo checks.

Each image comes from its own generator keyed by (seed, split, class, index), so the bytes do
not depend on the thread count, and a smaller dataset is a prefix of a larger one.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from tqdm import tqdm

from selfsup.errors import DataError
from selfsup.pipeline.sources.generated import default_cache_dir, ensure_generated

SYNTHETIC_VERSION = 2
JPEG_QUALITY = 90
SIDE_RANGE = (64, 96)  # inclusive bounds of each image side, in pixels
_SPLITS = {"train": 0, "val": 1}  # the id keeps the two splits' random streams disjoint
_LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luminance weights
_RAMP = np.linspace(-1, 1, 256)[:, None]  # texture level of each colour-table entry


def _ngon(n: int, radius: float = 1.0) -> np.ndarray:
    a = 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _star() -> np.ndarray:
    pts = _ngon(10)
    pts[1::2] *= 0.42
    return pts


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


# Each class is a list of (polygon, filled); unfilled polygons cut holes. Hexagons and the like
# are left out on purpose: at 20 px they are hard to tell from circles.
_SHAPES: dict[str, list[tuple[np.ndarray, bool]]] = {
    "circle": [(_ngon(48), True)],
    "square": [(_ngon(4), True)],
    "triangle": [(_ngon(3), True)],
    "star": [(_star(), True)],
    "plus": [(_rect(-1, -0.33, 1, 0.33), True), (_rect(-0.33, -1, 0.33, 1), True)],
    "ring": [(_ngon(48), True), (_ngon(48, 0.55), False)],
    "crescent": [(_ngon(48), True), (_ngon(48, 0.8) + (0.45, 0.0), False)],
    "arrow": [
        (_rect(-1, -0.22, 0.2, 0.22), True),
        (np.array([(0.15, -0.6), (1, 0), (0.15, 0.6)]), True),
    ],
    "heart": [(_heart(), True)],
    "lshape": [(_rect(-0.75, -1, -0.2, 1), True), (_rect(-0.75, 0.45, 0.75, 1), True)],
}


def _unit(parts: list[tuple[np.ndarray, bool]]) -> list[tuple[np.ndarray, bool]]:
    # Scale to a bounding radius of 1, so a drawn size means the same for every class.
    r = max(float(np.linalg.norm(p, axis=1).max()) for p, filled in parts if filled)
    return [(p / r, filled) for p, filled in parts]


CLASSES: tuple[str, ...] = tuple(f"{i:02d}_{name}" for i, name in enumerate(_SHAPES))
_PARTS = [_unit(parts) for parts in _SHAPES.values()]


def image_rng(seed: int, split: str, label: int, index: int) -> np.random.Generator:
    """The generator of one image; nothing else feeds its random choices."""
    return np.random.default_rng([seed, _SPLITS[split], label, index])


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A float32 pattern in [-1, 1]: flat, value noise, stripes, checkerboard or gradient."""
    # Python floats keep the arithmetic in float32 (numpy scalars would promote to float64).
    theta = float(rng.uniform(0, np.pi))
    c, s = math.cos(theta), math.sin(theta)
    x, y = np.arange(w, dtype=np.float32)[None], np.arange(h, dtype=np.float32)[:, None]
    u = x * c + y * s  # coordinate along a random direction
    kind = rng.integers(5)
    if kind == 1:
        g = int(rng.integers(2, 9))
        grid = rng.uniform(-1, 1, (g, g)).astype(np.float32)
        return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), -1, 1)
    if kind == 2:
        t = np.sin(u * float(2 * np.pi / rng.uniform(5, 20)) + float(rng.uniform(0, 2 * np.pi)))
        return np.sign(t) if rng.random() < 0.5 else t  # hard or soft stripes
    if kind == 3:
        fu, fv = (math.pi / rng.uniform(4, 14, 2)).tolist()  # cell sizes along u and v
        return np.sign(np.sin(u * fu + 0.5) * np.sin((y * c - x * s) * fv + 0.5))
    if kind == 4:
        return (u - u.min()) * (2 / max(float(np.ptp(u)), 1e-6)) - 1
    return np.zeros((h, w), np.float32)


def _layer(rng: np.random.Generator, colour: np.ndarray, h: int, w: int) -> np.ndarray:
    """``colour`` modulated by a texture, as uint8 HxWx3."""
    # Texture amplitude stays below the shape/background contrast, so the outline dominates.
    offset = rng.uniform(-1, 1, 3) * rng.uniform(10, 35)
    # Quantise the texture to 256 levels and look the colours up, in OpenCV calls that release
    # the GIL: broadcasting an HxWx3 float product in numpy was most of the generation time.
    lut = np.clip(colour + _RAMP * offset + 0.5, 0, 255).astype(np.uint8)
    index = cv2.convertScaleAbs(_texture(rng, h, w), alpha=127.5, beta=127.5)
    return cv2.LUT(cv2.cvtColor(index, cv2.COLOR_GRAY2RGB), lut[:, None])


def render(rng: np.random.Generator, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image of class ``label``: (RGB uint8 HxWx3, shape coverage float32 HxW)."""
    side = rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1)
    h, w = (int(v) for v in np.clip(side + rng.integers(-8, 9, 2), *SIDE_RANGE))

    # Shape and background colours come from one distribution, resampled as a pair until their
    # luminance differs enough to see the outline; so neither colour hints at the class.
    while True:
        fg, bg = rng.uniform(0, 255, (2, 3))
        if abs((fg - bg) @ _LUMA) >= 90:
            break
    back, front = _layer(rng, bg, h, w), _layer(rng, fg, h, w)

    # A few small blobs behind the shape, so "the only object in view" is not a cue either.
    for _ in range(rng.integers(0, 4)):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = tuple(int(a) for a in rng.uniform(0.03, 0.08, 2) * min(h, w))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.ellipse(back, centre, axes, rng.uniform(0, 360), 0, 360, colour, -1, cv2.LINE_AA)

    # Pose: the diameter spans 56-92% of the shorter side, so the shape survives crops and
    # outweighs the (class-independent) background texture in most views.
    radius = rng.uniform(0.28, 0.46) * min(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    affine = np.diag([1.0, rng.uniform(0.8, 1.0)]) @ rot * radius  # mild squash, then rotate
    centre = rng.uniform([radius, radius], [w - radius, h - radius])
    mask = np.zeros((h, w), np.uint8)
    for pts, filled in _PARTS[label]:
        fixed = np.round((pts @ affine + centre) * 16).astype(np.int32)  # 4 fractional bits
        cv2.fillPoly(mask, [fixed], 255 if filled else 0, cv2.LINE_AA, shift=4)

    alpha = mask.astype(np.float32) * (1 / 255)
    return cv2.blendLinear(back, front, 1 - alpha, alpha), alpha


def _meta(seed: int, train_per_class: int, val_per_class: int) -> dict:
    return {
        "generator": "selfsup.pipeline.sources.synthetic",
        "version": SYNTHETIC_VERSION,
        "seed": seed,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "counts": {"train": train_per_class * len(CLASSES), "val": val_per_class * len(CLASSES)},
        "classes": list(CLASSES),
        "jpeg_quality": JPEG_QUALITY,
    }


def _generate(out: Path, seed: int, counts: dict[str, int], progress: bool) -> None:
    jobs = [(s, label, i) for s, n in counts.items() for label in range(len(CLASSES))
            for i in range(n)]  # fmt: skip
    for split, label in {(s, label) for s, label, _ in jobs}:
        (out / split / CLASSES[label]).mkdir(parents=True)

    def write(job: tuple[str, int, int]) -> None:
        split, label, i = job
        image, _ = render(image_rng(seed, split, label, i), label)
        data = simplejpeg.encode_jpeg(image, JPEG_QUALITY, "RGB", "420")
        (out / split / CLASSES[label] / f"{i:05d}.jpg").write_bytes(data)

    # OpenCV and libjpeg-turbo release the GIL, so threads give real parallelism here.
    with (
        ThreadPoolExecutor(os.cpu_count() or 1) as pool,
        tqdm(total=len(jobs), desc="synthetic dataset", unit="img", disable=not progress) as bar,
    ):
        for _ in pool.map(write, jobs):
            bar.update()


def ensure_synthetic(
    root: str | Path | None = None,
    *,
    seed: int = 0,
    train_per_class: int = 500,
    val_per_class: int = 100,
    progress: bool = True,
) -> Path:
    """Return the dataset directory, generating it first if absent."""
    if train_per_class < 1 or val_per_class < 1:
        raise DataError(
            f"synthetic dataset needs at least 1 image per class in each split, got "
            f"train_per_class={train_per_class}, val_per_class={val_per_class}"
        )
    if root is None:
        name = f"synthetic-v{SYNTHETIC_VERSION}-s{seed}-{train_per_class}x{val_per_class}"
        root = default_cache_dir() / name
    root = Path(root).expanduser().absolute()
    want = _meta(seed, train_per_class, val_per_class)
    counts = {"train": train_per_class, "val": val_per_class}
    return ensure_generated(
        root, want, "synthetic dataset", lambda tmp: _generate(tmp, seed, counts, progress) or {}
    )
