"""Every bad or unusual input, one test each: decoded correctly, or refused with a reason.

Undecodable inputs are also run through the cpu engine on an image folder: the bad sample
is replaced deterministically, reported with its path and reason, never hangs, and past
``max_bad_fraction`` the engine raises :class:`DataError`.
"""

from __future__ import annotations

import io
import threading

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from selfsup.errors import DataError
from selfsup.pipeline.decode import DecodeError, decode_image, image_size
from selfsup.pipeline.sources.folder import ImageFolderSource
from tests import badfiles as bf


def close(a: np.ndarray, b: np.ndarray, tol: float = 3.0) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(np.int16) - b).mean()) <= tol


# -- undecodable ---------------------------------------------------------------------------


def test_truncated_jpeg():
    with pytest.raises(DecodeError, match="truncated JPEG"):
        decode_image(bf.truncated_jpeg_bytes())


def test_jpeg_truncated_in_its_header():
    with pytest.raises(DecodeError, match="truncated JPEG"):
        decode_image(bf.truncated_jpeg_bytes(header_only=True))


def test_random_bytes():
    with pytest.raises(DecodeError, match="not a decodable image"):
        decode_image(bf.random_bytes())


def test_zero_byte_file():
    with pytest.raises(DecodeError, match="empty file"):
        decode_image(bf.zero_bytes())
    assert image_size(b"") is None


def test_decompression_bomb_jpeg_refused_from_the_header():
    data = bf.jpeg_claiming_size(60000, 60000)  # 3.6 gigapixels claimed, a few hundred bytes
    assert image_size(data) == (60000, 60000)
    with pytest.raises(DecodeError, match="image too large"):
        decode_image(data)


def test_decompression_bomb_png_refused_from_the_header():
    with pytest.raises(DecodeError, match="image too large"):
        decode_image(bf.png_claiming_size(40000, 40000))


def test_max_pixels_is_configurable():
    data = bf.jpeg_bytes(bf.pattern(32, 32))
    with pytest.raises(DecodeError, match="too large"):
        decode_image(data, max_pixels=1000)
    assert decode_image(data, max_pixels=1024).shape == (32, 32, 3)


def test_jpeg_with_extraneous_bytes_is_decoded():
    upright = bf.pattern(32, 48)
    assert close(decode_image(bf.extraneous_bytes_jpeg(upright)), upright, 2.0)


# -- other formats under a .jpg name (content decides, never the name) ---------------------


@pytest.mark.parametrize(
    "encode", [bf.png_bytes, bf.gif_bytes, bf.webp_bytes, bf.bmp_bytes, bf.tiff_bytes]
)
def test_other_format_content_under_a_jpg_name(tmp_path, encode):
    img = bf.pattern(24, 40)
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(img))
    data = path.read_bytes()
    out = decode_image(data)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, img)  # all lossless for a few flat colours
    assert image_size(data) == (24, 40)


def test_pillow_fallback_for_what_opencv_refuses(monkeypatch):
    from selfsup.pipeline import decode

    monkeypatch.setattr(decode, "_decode_cv2", lambda data: None)
    img = bf.pattern(24, 40)
    np.testing.assert_array_equal(decode_image(bf.gif_bytes(img)), img)
    data, px = bf.png16_bytes()
    gray16 = px[..., 0].copy()
    out = decode_image(bf.pillow_bytes(gray16, "PNG"))  # Pillow mode I;16
    np.testing.assert_array_equal(out[..., 1], np.rint(gray16 * (255 / 65535)).astype(np.uint8))
    with pytest.raises(DecodeError, match="not a decodable image"):
        decode_image(bf.random_bytes())


# -- colour spaces and depths --------------------------------------------------------------


def test_cmyk_jpeg():
    img = bf.pattern(32, 48)
    data = bf.cmyk_jpeg_bytes(img)
    out = decode_image(data)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert out.shape == (32, 48, 3)
    assert close(out, expected, 1.5)
    assert close(out, img, 4.0)


def test_grayscale_jpeg():
    data, gray = bf.gray_jpeg_bytes()
    out = decode_image(data)
    assert out.shape == (32, 48, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert close(out[..., 0], gray, 2.0)


def test_16bit_png_scaled_not_truncated():
    data, px = bf.png16_bytes()
    out = decode_image(data)
    expected = np.rint(px.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert tuple(out[0, 0]) == (0, 255, 128)  # 32768 -> 127.5: rounds up, >> 8 would give 128


def test_alpha_channel_dropped():
    img = bf.pattern(16, 16)
    out = decode_image(bf.rgba_png_bytes(img, alpha=0))  # fully transparent
    np.testing.assert_array_equal(out, img)  # colour channels kept as stored


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(orientation):
    upright = bf.pattern(32, 48, seed=orientation)
    data = bf.exif_jpeg_bytes(upright, orientation)
    out = decode_image(data)
    assert out.shape == upright.shape and out.flags.c_contiguous
    assert close(out, upright, 2.0)
    # the same as Pillow's reading of the tag
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert close(out, expected, 2.0)
    assert image_size(data) == (32, 48)


@pytest.mark.parametrize("orientation", [3, 6])
def test_exif_orientation_big_endian_and_written_by_pillow(orientation):
    upright = bf.pattern(32, 48, seed=7)
    out = decode_image(bf.exif_jpeg_bytes(upright, orientation, byteorder="big"))
    assert close(out, upright, 2.0)
    stored = bf.orient_numpy(upright, bf.INVERSE_ORIENTATION[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = bf.pillow_bytes(stored, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    assert close(decode_image(data), upright, 2.0)


@pytest.mark.parametrize(
    "app1",
    [
        b"\xff\xe1\x00\x08Exif\x00\x00",  # no TIFF header
        b"\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff\xff\x7f",  # IFD offset past the end
        b"\xff\xe1\x00\x12Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff",  # 65535 entries
    ],
)
def test_malformed_exif_is_ignored(app1):
    img = bf.pattern(16, 24)
    data = bf.jpeg_bytes(img)
    out = decode_image(data[:2] + app1 + data[2:])
    assert close(out, img, 2.0)


# -- sizes ---------------------------------------------------------------------------------


def test_60_megapixel_image():
    data = bf.flat_jpeg_bytes(6000, 10000)
    assert image_size(data) == (6000, 10000)
    out = decode_image(data)
    assert out.shape == (6000, 10000, 3)
    assert np.abs(out[::97, ::89].astype(np.int16) - (200, 30, 90)).max() <= 3
    small = decode_image(data, max_reduction=8)
    assert small.shape == (750, 1250, 3)


@pytest.mark.parametrize("encode", [bf.jpeg_bytes, bf.png_bytes])
def test_1x1_image(encode):
    img = np.array([[[10, 200, 30]]], np.uint8)
    out = decode_image(encode(img))
    assert out.shape == (1, 1, 3)
    assert close(out, img, 3.0)


@pytest.mark.parametrize(("r", "expect"), [(1, 1), (2, 2), (3, 2), (4, 4), (7, 4), (8, 8), (64, 8)])
def test_reduced_jpeg_decoding(r, expect):
    data = bf.jpeg_bytes(bf.pattern(101, 203))
    assert decode_image(data, max_reduction=r).shape == (-(-101 // expect), -(-203 // expect), 3)
    # pixels: close to an area-downscaled full decode (sides multiples of 8: same grid)
    data = bf.jpeg_bytes(bf.pattern(128, 256, block=16))
    out = decode_image(data, max_reduction=r)
    assert out.shape == (128 // expect, 256 // expect, 3)
    ref = cv2.resize(decode_image(data), out.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert close(out, ref, 2.0)


def test_reduced_pixels_cover_exact_blocks_of_r_even_at_uneven_sides():
    small = np.random.default_rng(0).integers(0, 256, (15, 20, 3), dtype=np.uint8)
    img = cv2.resize(small, (400, 300), interpolation=cv2.INTER_CUBIC)  # smooth
    data = bf.jpeg_bytes(img)
    full = decode_image(data).astype(np.float64)
    out = decode_image(data, max_reduction=8)
    assert out.shape == (38, 50, 3)  # 300 / 8 = 37.5: the last row covers half a block
    blocks = full[:296].reshape(37, 8, 50, 8, 3).mean(axis=(1, 3))
    assert np.abs(out[:37] - blocks).mean() < 1.0


def test_reduced_decoding_with_exif_rotation():
    upright = bf.pattern(64, 96)
    out = decode_image(bf.exif_jpeg_bytes(upright, 6), max_reduction=2)
    assert out.shape == (32, 48, 3)


def test_reduction_ignored_for_other_formats_and_tiny_jpegs():
    assert decode_image(bf.png_bytes(bf.pattern(64, 64)), max_reduction=8).shape == (64, 64, 3)
    assert decode_image(bf.jpeg_bytes(bf.pattern(4, 64)), max_reduction=8).shape == (4, 64, 3)


# -- numpy payloads ------------------------------------------------------------------------


def test_array_payloads():
    img = bf.pattern(8, 12)
    assert decode_image(img) is img  # no copy
    gray = img[..., 0]
    np.testing.assert_array_equal(decode_image(gray), np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(decode_image(gray[..., None]), decode_image(gray))
    assert decode_image(img[:, ::2]).flags.c_contiguous
    with pytest.raises(DecodeError, match="uint8"):
        decode_image(img.astype(np.float32))
    with pytest.raises(DecodeError, match="shape"):
        decode_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(DecodeError, match="no pixels"):
        decode_image(np.zeros((0, 4, 3), np.uint8))
    assert image_size(img) == (8, 12)


# -- through the engine --------------------------------------------------------------------


def run_with_timeout(fn, timeout: float = 60.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not finish."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"engine did not finish within {timeout}s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def make_engine(source, max_bad_fraction):
    from selfsup.pipeline.engines.cpu import CpuEngine
    from selfsup.pipeline.recipes import recipe

    return CpuEngine(
        source, recipe("simclr", 16), seed=3, threads=2, max_bad_fraction=max_bad_fraction
    )


BAD_CASES = [*bf.UNDECODABLE, "dangling_symlink", "directory"]


def folder_with_bad(root, case):
    """9 good JPEGs and one bad sample at sorted position 4; the source and bad path."""
    bf.write_folder(root, n_good=9)
    bad = root / "class0" / "good003_bad.jpg"  # sorts between good003 and good004
    if case in bf.UNDECODABLE:
        bad.write_bytes(bf.UNDECODABLE[case][0]())
    elif case == "dangling_symlink":
        bf.write_unreadable(bad, "symlink")
    else:
        bad.write_bytes(b"")
    source = ImageFolderSource(root)
    if case == "directory":
        bf.write_unreadable(bad, "directory")
    return source, bad


@pytest.mark.parametrize("case", BAD_CASES)
def test_engine_replaces_bad_sample_deterministically(tmp_path, case):
    source, bad = folder_with_bad(tmp_path / "data", case)
    assert source.describe(4) == str(bad)
    indices = np.arange(len(source))

    def load_once():
        engine = make_engine(source, max_bad_fraction=0.2)
        try:
            return engine.load(indices, epoch=0), engine.bad
        finally:
            engine.close()

    batch, bad_report = run_with_timeout(load_once)
    assert list(bad_report) == [4]
    assert bad_report[4].where == str(bad)
    reason = bf.UNDECODABLE[case][1] if case in bf.UNDECODABLE else "unreadable"
    assert reason in bad_report[4].reason
    used = batch.indices.numpy()
    assert used[4] != 4 and np.array_equal(np.delete(used, 4), np.delete(indices, 4))
    again, _ = run_with_timeout(load_once)  # a fresh engine picks the same stand-in
    assert np.array_equal(again.indices.numpy(), used)
    for a, b in zip(batch.views, again.views, strict=True):
        assert np.array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("case", ["truncated_jpeg", "dangling_symlink"])
def test_engine_stops_above_max_bad_fraction(tmp_path, case):
    source, bad = folder_with_bad(tmp_path / "data", case)
    engine = make_engine(source, max_bad_fraction=0.05)  # 1 of 10 is 10%
    try:
        with pytest.raises(DataError, match="max_bad_fraction") as err:
            run_with_timeout(lambda: engine.load(np.arange(len(source)), epoch=0))
        assert str(bad) in str(err.value)
    finally:
        engine.close()
