"""Interoperability with the real ffcv 1.0.x, both ways (marker ``ffcv``).

ffcv lives in its own venv (built by ``.ci/ffcv-setup.sh``); its code runs in a subprocess
with the python named by ``SELFSUP_FFCV_PYTHON``. Without it these tests skip, unless
``SELFSUP_REQUIRE_FFCV=1``, when they fail instead:

    SELFSUP_FFCV_PYTHON=$PWD/.venv-ffcv/bin/python SELFSUP_REQUIRE_FFCV=1 \\
        .venv/bin/python -m pytest -q -m ffcv tests/test_ffcv_interop.py
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from selfsup.pipeline.decode import decode_image
from selfsup.pipeline.sources.beton import BetonSource
from selfsup.pipeline.sources.beton_write import resize_longest_side, write_beton

pytestmark = pytest.mark.ffcv

# Runs inside the ffcv venv. argv: command, .beton path, .npz path.
FFCV_SCRIPT = r"""
import sys
import numpy as np

cmd, beton, npz = sys.argv[1:4]
if cmd.startswith("write"):
    from ffcv.fields import BytesField, IntField, NDArrayField, RGBImageField
    from ffcv.writer import DatasetWriter

    _, mode, workers, max_res = cmd.split(":")
    data = np.load(npz)
    n = int(data["n"])
    images = [data[f"img{i}"] for i in range(n)]
    labels = data["labels"]
    masks = data["masks"] if "masks" in data else None

    class DS:
        def __len__(self):
            return n

        def __getitem__(self, i):
            if masks is None:
                return images[i], int(labels[i])
            return images[i], int(labels[i]), masks[i], masks[i].reshape(-1)

    fields = {
        "image": RGBImageField(
            write_mode=mode, max_resolution=None if max_res == "none" else int(max_res)
        ),
        "label": IntField(),
    }
    if masks is not None:
        fields["saliency"] = NDArrayField(np.dtype("uint8"), masks.shape[1:])
        fields["mask_bytes"] = BytesField()
    DatasetWriter(beton, fields, num_workers=int(workers)).from_indexed_dataset(DS())
elif cmd == "read":
    from ffcv.reader import Reader

    r = Reader(beton)
    out = {
        "num_samples": np.array(r.num_samples),
        "names": np.array(r.field_names),
        "labels": np.asarray(r.metadata["f1"]),
        "modes": np.asarray(r.metadata["f0"]["mode"]),
        "alloc_size": np.asarray(r.alloc_table["size"]),
    }
    try:  # the loader and its decoders: numba-compiled, no torchvision needed
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.decoders import SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption

        loader = Loader(
            beton,
            batch_size=r.num_samples,
            num_workers=1,
            order=OrderOption.SEQUENTIAL,
            pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]},
        )
        for images, labels in loader:
            out["loader_images"] = np.asarray(images)
            out["loader_labels"] = np.asarray(labels).reshape(-1)
    except Exception as e:  # reported, and the test decides
        out["loader_error"] = np.array(repr(e))
    np.savez(npz, **out)
"""


@pytest.fixture(scope="module")
def ffcv_python() -> str:
    python = os.environ.get("SELFSUP_FFCV_PYTHON")
    required = os.environ.get("SELFSUP_REQUIRE_FFCV") == "1"
    if not python:
        msg = "SELFSUP_FFCV_PYTHON is not set (build the venv with .ci/ffcv-setup.sh)"
        if required:
            pytest.fail(msg + " but SELFSUP_REQUIRE_FFCV=1")
        pytest.skip(msg)
    probe = subprocess.run(
        [python, "-c", "import ffcv.reader, ffcv.writer"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.fail(f"SELFSUP_FFCV_PYTHON={python} cannot import ffcv:\n{probe.stderr[-2000:]}")
    return python


def run_ffcv(python: str, cmd: str, beton, npz) -> None:
    proc = subprocess.run(
        [python, "-c", FFCV_SCRIPT, cmd, str(beton), str(npz)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"ffcv subprocess {cmd!r} failed:\n{proc.stderr[-4000:]}")


def make_images(n: int, same_size: bool, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (32, 40) if same_size else (30 + (i * 7) % 23, 35 + (i * 11) % 29)
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.integers(20, 200, 3)
        img = np.stack([base[c] + 30 * np.sin(xx / (2 + c) + yy / 4) for c in range(3)], -1)
        out.append(np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8))
    return out


def save_inputs(path, images, labels, masks=None) -> None:
    arrays = {f"img{i}": im for i, im in enumerate(images)}
    arrays.update(n=np.array(len(images)), labels=np.asarray(labels, np.int64))
    if masks is not None:
        arrays["masks"] = masks
    np.savez(path, **arrays)


@pytest.mark.parametrize("mode", ["raw", "jpg"])
@pytest.mark.parametrize("workers", [1, 2])
def test_selfsup_reads_files_written_by_ffcv(tmp_path, ffcv_python, mode, workers):
    images = make_images(40, same_size=False)
    labels = [(i * 3) % 7 for i in range(40)]
    npz, beton = tmp_path / "in.npz", tmp_path / "ffcv.beton"
    save_inputs(npz, images, labels)
    run_ffcv(ffcv_python, f"write:{mode}:{workers}:48", beton, npz)

    src = BetonSource(beton)
    assert len(src) == 40 and src.num_classes == 7
    for i, img in enumerate(images):
        payload, label = src.read(i)
        expected = resize_longest_side(img, 48)
        assert label == labels[i]
        if mode == "raw":
            np.testing.assert_array_equal(payload, expected)
        else:
            decoded = decode_image(payload)
            assert decoded.shape == expected.shape
            assert np.abs(decoded.astype(int) - expected).mean() < 6

    if workers == 1:  # one ffcv worker lays pages out exactly as selfsup's writer does
        ours = tmp_path / "ours.beton"
        write_beton(
            ours,
            list(zip(images, labels, strict=True)),
            mode=mode,
            max_resolution=48,
            progress=False,
        )
        a, b = ours.read_bytes(), beton.read_bytes()
        if mode == "raw":
            assert a == b
        else:
            # Same header fields, descriptors and metadata up to the data pointers; the JPEG
            # bytes (and so the pointers) match too when both OpenCV builds bundle the same
            # libjpeg-turbo, which is not guaranteed.
            assert a[:16] == b[:16] and a[24 : 24 + 2 * 1041] == b[24 : 24 + 2 * 1041]
            ma, mb = BetonSource(ours)._image_meta, src._image_meta
            for key in ("mode", "width", "height"):
                np.testing.assert_array_equal(ma[key], mb[key])


@pytest.mark.parametrize("mode", ["raw", "jpg"])
def test_ffcv_reads_files_written_by_selfsup(tmp_path, ffcv_python, mode):
    images = make_images(24, same_size=True, seed=1)
    labels = [i % 5 for i in range(24)]
    beton, npz = tmp_path / "ours.beton", tmp_path / "out.npz"
    write_beton(beton, list(zip(images, labels, strict=True)), mode=mode, progress=False, workers=2)
    run_ffcv(ffcv_python, "read", beton, npz)

    got = np.load(npz)
    assert int(got["num_samples"]) == 24
    assert list(got["names"]) == ["image", "label"]
    np.testing.assert_array_equal(got["labels"], labels)
    assert (got["modes"] == (1 if mode == "raw" else 0)).all()
    assert "loader_error" not in got, f"ffcv Loader failed: {got['loader_error']}"
    np.testing.assert_array_equal(got["loader_labels"], labels)
    loaded = got["loader_images"]
    assert loaded.shape == (24, 32, 40, 3)
    src = BetonSource(beton)
    for i, img in enumerate(images):
        if mode == "raw":
            np.testing.assert_array_equal(loaded[i], img)
        else:  # ffcv's libjpeg-turbo decode against selfsup's decode of the same bytes
            # (ffcv may upsample chroma differently: small differences only)
            ours = decode_image(src.read(i)[0]).astype(int)
            diff = np.abs(ours - loaded[i])
            assert diff.mean() < 2.0 and diff.max() <= 8
            assert np.abs(loaded[i].astype(int) - img).mean() < 6


def test_masks_from_ffcv_ndarray_and_bytes_fields(tmp_path, ffcv_python):
    images = make_images(12, same_size=True, seed=2)
    rng = np.random.default_rng(3)
    masks = rng.integers(0, 256, (12, 32, 40), dtype=np.uint8)
    npz, beton = tmp_path / "in.npz", tmp_path / "masks.beton"
    save_inputs(npz, images, list(range(12)), masks=masks)
    run_ffcv(ffcv_python, "write:raw:1:none", beton, npz)

    for field in ("saliency", "mask_bytes"):
        src = BetonSource(beton, mask_field=field)
        for i in range(12):
            np.testing.assert_array_equal(src.read_mask(i), masks[i])
            np.testing.assert_array_equal(src.read(i)[0], images[i])


def test_require_flag_turns_a_missing_ffcv_into_a_failure(tmp_path):
    """With SELFSUP_REQUIRE_FFCV=1 and no SELFSUP_FFCV_PYTHON, the fixture fails, not skips."""
    test = tmp_path / "test_probe.py"
    test.write_text(
        "from tests.test_ffcv_interop import ffcv_python  # noqa: F401\n"
        "def test_x(ffcv_python):\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SELFSUP_FFCV_PYTHON"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for require, outcome in (("1", "1 error"), ("0", "1 skipped")):
        env.update(SELFSUP_REQUIRE_FFCV=require, PYTHONPATH=root)
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "", str(test)],
            capture_output=True,
            text=True,
            cwd=root,
            env=env,
        )
        assert outcome in proc.stdout, proc.stdout[-2000:]
