"""ImageNet-like JPEGs for loader benchmarks, made on first use.

A loader's speed depends on what it decodes: ImageNet's training JPEGs average about
400 x 350 pixels after the usual resize and about 110 KB each, and their cost to decode
is set by their entropy, which natural images spread over frequencies as roughly 1/f.
Flat synthetic shapes compress to a few KB and decode several times faster, so they flatter
every loader. The photos made here aim at the real thing: per image a sky-like gradient,
a 1/f-noise colour texture (octaves of bicubically upscaled noise), a few textured,
anti-aliased objects, a mild lens blur and sensor noise, saved at quality 90 with 4:2:0
chroma (as most ImageNet files are). Sizes vary over about 400-500 x 330-420 pixels;
the bytes per image land around 80-130 KB (``python -m selfsup.bench.photos`` prints them).

Each image comes from its own generator keyed by (seed, class, index), so the bytes do not
depend on the thread count, and the set is built in a private directory that is renamed
into place when complete (the conventions of ``pipeline/sources/synthetic.py``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from tqdm import tqdm

from selfsup.errors import DataError
from selfsup.pipeline.sources.generated import default_cache_dir, ensure_generated

PHOTOS_VERSION = 1
JPEG_QUALITY = 90
WIDTH_RANGE = (400, 500)  # inclusive, pixels
HEIGHT_RANGE = (330, 420)
DEFAULT_COUNT = 512
DEFAULT_CLASSES = 8


def class_names(classes: int) -> list[str]:
    """ImageNet-style synset-like folder names, in sorted order."""
    return [f"n{9000000 + c:08d}" for c in range(classes)]


def photo_rng(seed: int, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0x9407, label, index])


def _pink(rng: np.random.Generator, h: int, w: int, channels: int, beta: float) -> np.ndarray:
    """Approximate 1/f^beta noise: octaves of white noise upscaled bicubically, float32.

    Octave k is a grid of ~h/2^k x w/2^k cells with amplitude 2^(k * beta / 2); summed, the
    power falls off about as 1/f^beta. Each OpenCV resize releases the GIL.
    """
    out = np.zeros((h, w, channels), np.float32)
    k = 0
    while True:
        gh, gw = max(1, h >> k), max(1, w >> k)
        grid = rng.standard_normal((gh, gw, channels)).astype(np.float32)
        amp = float(2.0 ** (k * beta / 2))
        if (gh, gw) == (h, w):
            out += amp * grid
        else:
            up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
            out += amp * up.reshape(h, w, channels)
        if gh == 1 and gw == 1:
            break
        k += 1
    out -= out.mean(axis=(0, 1))
    return out / (out.std() + 1e-6)


def _colour_mix(rng: np.random.Generator) -> np.ndarray:
    """A 3x3 mix with a strong shared (luminance) component: natural colours correlate."""
    m = np.eye(3) * rng.uniform(0.2, 0.5) + rng.uniform(0.5, 1.0)
    return (m / np.linalg.norm(m, axis=0)).astype(np.float32)  # unit variance out


def render(rng: np.random.Generator) -> np.ndarray:
    """One ImageNet-like RGB uint8 photo, H x W x 3."""
    w = int(rng.integers(WIDTH_RANGE[0], WIDTH_RANGE[1] + 1))
    h = int(rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
    detail = float(rng.uniform(1.0, 1.3))  # spreads the file sizes, as real photos vary
    # Background: a vertical gradient between two colours plus a coloured 1/f texture.
    top, bottom = rng.uniform(30, 225, (2, 3)).astype(np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(top + (bottom - top) * t, (h, w, 3)).copy()
    tex = _pink(rng, h, w, 3, float(rng.uniform(0.0, 0.5))) @ _colour_mix(rng)
    img += tex * (detail * float(rng.uniform(40, 55)))
    # Objects: anti-aliased ellipses and polygons, each with its own colour and a grain cut
    # from one shared finer texture (one texture per image keeps generation fast).
    grain = _pink(rng, h, w, 3, float(rng.uniform(0.0, 0.4)))
    for _ in range(int(rng.integers(6, 12))):
        mask = np.zeros((h, w), np.uint8)
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            axes = (int(rng.integers(w // 16, w // 3)), int(rng.integers(h // 16, h // 3)))
            cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1,
                        cv2.LINE_AA)  # fmt: skip
        else:
            n = int(rng.integers(3, 9))
            r = rng.uniform(w / 16, w / 4, n)
            a = np.sort(rng.uniform(0, 2 * np.pi, n))
            pts = np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)
            cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        x0, y0, bw, bh = cv2.boundingRect(mask)
        if bw == 0 or bh == 0:
            continue
        box = (slice(y0, y0 + bh), slice(x0, x0 + bw))
        alpha = (mask[box].astype(np.float32) * (1 / 255))[..., None]
        gy, gx = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        texture = grain[gy : gy + bh, gx : gx + bw] @ _colour_mix(rng)
        obj = rng.uniform(10, 245, 3).astype(np.float32) + texture * (
            detail * float(rng.uniform(40, 60))
        )
        img[box] = img[box] * (1 - alpha) + obj * alpha
    # Sensor noise, then 8 bits.
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * float(rng.uniform(2.0, 4.0))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def encode(image: np.ndarray) -> bytes:
    return simplejpeg.encode_jpeg(image, JPEG_QUALITY, "RGB", "420")


def _meta(seed: int, count: int, classes: int) -> dict:
    return {
        "generator": "selfsup.bench.photos",
        "version": PHOTOS_VERSION,
        "seed": seed,
        "count": count,
        "classes": classes,
        "jpeg_quality": JPEG_QUALITY,
    }


def _generate(out: Path, seed: int, count: int, classes: int, progress: bool) -> list[int]:
    names = class_names(classes)
    for name in names:
        (out / name).mkdir(parents=True)
    jobs = [(i % classes, i // classes) for i in range(count)]  # classes as even as possible

    def write(job: tuple[int, int]) -> int:
        label, i = job
        data = encode(render(photo_rng(seed, label, i)))
        (out / names[label] / f"{i:06d}.jpg").write_bytes(data)
        return len(data)

    # OpenCV and libjpeg-turbo release the GIL, so threads give real parallelism here.
    sizes = []
    with (
        ThreadPoolExecutor(os.cpu_count() or 1) as pool,
        tqdm(total=count, desc="ImageNet-like photos", unit="img", disable=not progress) as bar,
    ):
        for n in pool.map(write, jobs):
            sizes.append(n)
            bar.update()
    return sizes


def ensure_photos(
    root: str | Path | None = None,
    *,
    count: int = DEFAULT_COUNT,
    classes: int = DEFAULT_CLASSES,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Return a folder of ``count`` photos in ImageNet layout (root/<class>/*.jpg).

    Without ``root`` the set lives in ``$SELFSUP_CACHE`` (default ``~/.cache/selfsup``) and is
    generated on first use.
    """
    if count < 1 or classes < 1:
        raise DataError(f"the photo set needs count >= 1 and classes >= 1, got {count}, {classes}")
    if root is None:
        root = default_cache_dir() / f"photos-v{PHOTOS_VERSION}-s{seed}-{count}x{classes}"
    root = Path(root).expanduser().absolute()
    want = _meta(seed, count, classes)

    def generate(tmp: Path) -> dict:
        sizes = _generate(tmp, seed, count, classes, progress)
        return {"mean_bytes": round(float(np.mean(sizes)))}

    return ensure_generated(root, want, "photo set", generate)


if __name__ == "__main__":  # a quick look at what the generator makes
    import time

    t0 = time.perf_counter()
    sizes = [len(encode(render(photo_rng(0, i % 8, i)))) for i in range(32)]
    dt = (time.perf_counter() - t0) / len(sizes)
    print(
        f"{len(sizes)} photos: mean {np.mean(sizes) / 1e3:.1f} KB, min {min(sizes) / 1e3:.1f} KB, "
        f"max {max(sizes) / 1e3:.1f} KB, {1e3 * dt:.1f} ms each on one thread"
    )
