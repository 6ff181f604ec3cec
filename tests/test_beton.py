"""The .beton reader and writer, and `selfsup pack` (CPU only, no ffcv)."""

from __future__ import annotations

import argparse
import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from selfsup.errors import DataError
from selfsup.pipeline.decode import DecodeError, decode_image
from selfsup.pipeline.pack import add_parser, pack, run
from selfsup.pipeline.sources.beton import (
    ALLOC_DTYPE,
    FIELD_DESC_DTYPE,
    HEADER_DTYPE,
    MIN_PAGE_SIZE,
    BetonSource,
)
from selfsup.pipeline.sources.beton_write import write_beton


def make_images(n: int, seed: int = 0, size: int = 24) -> list[tuple[np.ndarray, int]]:
    """Smooth images of varying sizes (so JPEG round trips are close), labels 0..4."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = size + (i * 7) % 13, size + (i * 5) % 17
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.integers(0, 200, 3)
        img = np.stack([(base[c] + 40 * np.sin(xx / (3 + c) + yy / 5)) for c in range(3)], -1)
        out.append((np.clip(img, 0, 255).astype(np.uint8), i % 5))
    return out


@pytest.fixture
def samples():
    return make_images(30)


def test_raw_round_trip_exact_pixels_and_labels(tmp_path, samples):
    path = tmp_path / "raw.beton"
    summary = write_beton(path, samples, mode="raw", progress=False, workers=2)
    assert summary.written == len(samples) and not summary.skipped
    src = BetonSource(path)
    assert len(src) == len(samples) and src.num_classes == 5
    assert src.image_field == "image" and src.label_field == "label"
    for i, (img, label) in enumerate(samples):
        payload, got = src.read(i)
        assert isinstance(payload, np.ndarray) and payload.flags.owndata
        np.testing.assert_array_equal(payload, img)
        assert got == label
    assert src.describe(3) == f"{path}#3"


def test_jpg_round_trip_returns_jpeg_bytes(tmp_path, samples):
    path = tmp_path / "jpg.beton"
    write_beton(path, samples, progress=False, jpeg_quality=95)
    src = BetonSource(path)
    for i, (img, label) in enumerate(samples):
        payload, got = src.read(i)
        assert isinstance(payload, bytes) and payload[:3] == b"\xff\xd8\xff"
        dec = decode_image(payload)
        assert dec.shape == img.shape and got == label
        assert np.abs(dec.astype(int) - img).mean() < 4


def test_max_resolution_caps_longest_side_with_inter_area(tmp_path):
    big = np.random.default_rng(1).integers(0, 255, (60, 100, 3), dtype=np.uint8)
    small = big[:20, :30].copy()
    path = tmp_path / "r.beton"
    write_beton(path, [(big, 0), (small, 1)], mode="raw", max_resolution=50, progress=False)
    src = BetonSource(path)
    got, _ = src.read(0)
    assert got.shape == (30, 50, 3)
    np.testing.assert_array_equal(got, cv2.resize(big, (50, 30), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(src.read(1)[0], small)


def test_many_samples_are_packed_into_pages_never_straddling(tmp_path):
    rng = np.random.default_rng(2)
    # 64x64x3 raw = 12 KiB per sample; 400 samples fill three 2 MiB pages.
    data = [(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), i % 7) for i in range(400)]
    path = tmp_path / "pages.beton"
    summary = write_beton(path, data, mode="raw", page_size=MIN_PAGE_SIZE, progress=False)
    assert summary.pages == 3
    src = BetonSource(path)
    raw = path.read_bytes()
    header = np.frombuffer(raw[: HEADER_DTYPE.itemsize], HEADER_DTYPE)[0]
    assert header["page_size"] == MIN_PAGE_SIZE and header["num_samples"] == 400
    alloc = np.frombuffer(raw[int(header["alloc_table_ptr"]) :], ALLOC_DTYPE)
    assert len(alloc) == 400 and list(alloc["sample_id"]) == list(range(400))
    first = alloc["ptr"] // MIN_PAGE_SIZE
    last = (alloc["ptr"] + alloc["size"] - 1) // MIN_PAGE_SIZE
    assert (first == last).all() and alloc["ptr"].min() % MIN_PAGE_SIZE == 0
    # pages are whole: the allocation table starts right after the last full page
    assert int(header["alloc_table_ptr"]) % MIN_PAGE_SIZE == 0
    for i in (0, 169, 170, 171, 399):
        np.testing.assert_array_equal(src.read(i)[0], data[i][0])
        assert src.read(i)[1] == i % 7


def test_output_bytes_do_not_depend_on_worker_count(tmp_path, samples):
    blobs = []
    for workers in (1, 2, 3):
        path = tmp_path / f"w{workers}.beton"
        write_beton(path, samples, workers=workers, progress=False, max_resolution=28)
        blobs.append(path.read_bytes())
    assert blobs[0] == blobs[1] == blobs[2]


def test_writer_rejects_bad_arguments(tmp_path, samples):
    with pytest.raises(DataError, match="power of 2"):
        write_beton(tmp_path / "x.beton", samples, page_size=3 << 20, progress=False)
    with pytest.raises(DataError, match="at least"):
        write_beton(tmp_path / "x.beton", samples, page_size=1 << 20, progress=False)
    with pytest.raises(DataError, match="mode"):
        write_beton(tmp_path / "x.beton", samples, mode="png", progress=False)
    huge = np.zeros((1000, 1000, 3), np.uint8)  # 3 MB raw: larger than a 2 MiB page
    with pytest.raises(DataError, match="page"):
        write_beton(
            tmp_path / "x.beton", [(huge, 0)], mode="raw", page_size=MIN_PAGE_SIZE, progress=False
        )
    assert not [p for p in os.listdir(tmp_path) if p.startswith("x.beton")]  # atomic


def test_skipped_samples_are_reported_and_the_file_stays_valid(tmp_path, samples):
    def broken():
        raise DecodeError("corrupt or truncated JPEG (test)")

    data = list(samples[:5]) + [(broken, 3)] + list(samples[5:8])
    path = tmp_path / "skip.beton"
    summary = write_beton(path, data, skip_errors=(DecodeError,), progress=False, mode="raw")
    assert summary.written == 8 and summary.skipped == [(5, "corrupt or truncated JPEG (test)")]
    src = BetonSource(path)
    assert len(src) == 8
    np.testing.assert_array_equal(src.read(5)[0], samples[5][0])


def test_concurrent_reads_and_pickle(tmp_path, samples):
    path = tmp_path / "t.beton"
    write_beton(path, samples, progress=False)
    src = BetonSource(path)
    expected = [src.read(i) for i in range(len(src))]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(src.read, list(range(len(src))) * 8))
    assert got == expected * 8
    clone = pickle.loads(pickle.dumps(src))
    assert [clone.read(i) for i in range(len(src))] == expected


def test_field_selection_errors(tmp_path, samples):
    path = tmp_path / "f.beton"
    write_beton(path, samples[:3], progress=False)
    with pytest.raises(DataError, match="no field named 'nope'"):
        BetonSource(path, image_field="nope")
    with pytest.raises(DataError, match="must be RGBImage"):
        BetonSource(path, image_field="label")
    with pytest.raises(DataError, match="mask"):
        BetonSource(path, mask_field="image")
    assert BetonSource(path).read_mask(0) is None


# --------------------------------------------------------------------------- corrupted files


@pytest.fixture
def good_file(tmp_path, samples):
    path = tmp_path / "good.beton"
    write_beton(path, samples[:10], progress=False, page_size=MIN_PAGE_SIZE)
    return path


def _layout(raw: bytes) -> dict:
    header = np.frombuffer(raw[: HEADER_DTYPE.itemsize], HEADER_DTYPE)[0]
    meta_start = HEADER_DTYPE.itemsize + 2 * FIELD_DESC_DTYPE.itemsize
    return {
        "meta_start": meta_start,
        "meta_end": meta_start + 24 * int(header["num_samples"]),
        "alloc": int(header["alloc_table_ptr"]),
        "size": len(raw),
    }


@pytest.mark.parametrize(
    "where",
    ["empty", "header", "descriptors", "metadata", "data", "alloc_partial_entry", "alloc_entry"],
)
def test_truncated_files_give_a_clear_error(tmp_path, good_file, where):
    raw = good_file.read_bytes()
    lay = _layout(raw)
    cut = {
        "empty": 0,
        "header": 10,
        "descriptors": HEADER_DTYPE.itemsize + 500,
        "metadata": lay["meta_start"] + 30,
        "data": lay["alloc"] - 1000,
        "alloc_partial_entry": lay["size"] - 12,
        "alloc_entry": lay["size"] - 24,
    }[where]
    bad = tmp_path / "cut.beton"
    bad.write_bytes(raw[:cut])
    with pytest.raises(DataError, match="truncated"):
        BetonSource(bad)


def test_wrong_version_garbage_and_missing_file(tmp_path, good_file):
    raw = bytearray(good_file.read_bytes())
    raw[0:2] = np.array([3], "<u2").tobytes()
    bad = tmp_path / "v3.beton"
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="version 3"):
        BetonSource(bad)
    junk = tmp_path / "junk.beton"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError):
        BetonSource(junk)
    with pytest.raises(DataError, match="cannot open"):
        BetonSource(tmp_path / "missing.beton")


def _patch_meta(path, index: int, **values) -> None:
    raw = bytearray(path.read_bytes())
    lay = _layout(bytes(raw))
    row = np.frombuffer(raw, np.uint8, 24, lay["meta_start"] + 24 * index).copy()
    rec = row[:13].view(
        np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
    )
    for k, v in values.items():
        rec[0][k] = v
    raw[lay["meta_start"] + 24 * index : lay["meta_start"] + 24 * index + 24] = row.tobytes()
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "patch",
    [
        {"data_ptr": 2**63 + 5},
        {"data_ptr": 7},
        {"mode": 9},
    ],
)
def test_bad_sample_pointer_is_an_oserror_for_that_sample_only(good_file, patch):
    _patch_meta(good_file, 3, **patch)
    src = BetonSource(good_file)
    with pytest.raises(OSError, match=r"#3"):
        src.read(3)
    assert isinstance(src.read(2)[0], bytes) and isinstance(src.read(4)[0], bytes)


def test_raw_size_mismatch_is_an_oserror(tmp_path, samples):
    path = tmp_path / "raw.beton"
    write_beton(path, samples[:5], mode="raw", progress=False)
    _patch_meta(path, 1, width=60000)
    with pytest.raises(OSError, match="raw image"):
        BetonSource(path).read(1)


def test_alloc_entry_pointing_past_the_data_is_an_oserror(good_file):
    raw = bytearray(good_file.read_bytes())
    lay = _layout(bytes(raw))
    alloc = np.frombuffer(raw, ALLOC_DTYPE, offset=lay["alloc"]).copy()
    alloc[4]["size"] = 2**40
    raw[lay["alloc"] :] = alloc.tobytes()
    good_file.write_bytes(bytes(raw))
    with pytest.raises(OSError, match="outside the data region"):
        BetonSource(good_file).read(4)


def test_random_byte_flips_never_crash(tmp_path, good_file):
    raw = good_file.read_bytes()
    lay = _layout(raw)
    rng = np.random.default_rng(7)
    # Flip bytes in the header, descriptors, metadata and allocation table (the data itself is
    # just JPEG bytes the decoder judges later).
    regions = [(0, lay["meta_end"]), (lay["alloc"], lay["size"])]
    for trial in range(150):
        buf = bytearray(raw)
        lo, hi = regions[trial % 2]
        for pos in rng.integers(lo, hi, rng.integers(1, 4)):
            buf[pos] = int(rng.integers(0, 256))
        bad = tmp_path / "flip.beton"
        bad.write_bytes(bytes(buf))
        try:
            src = BetonSource(bad)
        except DataError:
            continue
        for i in range(len(src)):
            try:
                src.read(i)
            except OSError:
                pass


# --------------------------------------------------------------------------------- pack


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "imgs"
    data = make_images(9, seed=3)
    for i, (img, _) in enumerate(data):
        cls = root / f"class_{i % 3}"
        cls.mkdir(parents=True, exist_ok=True)
        ext = ".png" if i % 2 else ".jpg"
        cv2.imwrite(str(cls / f"im{i}{ext}"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (root / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    (root / "class_2" / "empty.png").write_bytes(b"")
    return root


def test_pack_writes_all_decodable_images_and_reports_the_rest(tmp_path, image_folder):
    out = tmp_path / "out.beton"
    summary = pack(image_folder, out, max_res=30, workers=2, progress=False)
    assert summary["images"] == 11 and summary["written"] == 9 and summary["skipped"] == 2
    assert summary["classes"] == 3
    reasons = dict(summary["skipped_files"])
    assert set(os.path.basename(p) for p in reasons) == {"broken.jpg", "empty.png"}
    assert "empty" in reasons[str(image_folder / "class_2" / "empty.png")]
    src = BetonSource(out)
    assert len(src) == 9 and src.num_classes == 3
    for i in range(9):
        img = decode_image(src.read(i)[0])
        assert max(img.shape[:2]) <= 30


def test_pack_cli_run(tmp_path, image_folder, capsys):
    parser = argparse.ArgumentParser(prog="selfsup")
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli.beton"
    args = parser.parse_args(
        ["pack", str(image_folder), str(out), "--max-res", "20", "--quality", "80", "--workers",
         "1", "--no-progress"]
    )  # fmt: skip
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "9 images" in captured.out
    assert "broken.jpg" in captured.err
    assert len(BetonSource(out)) == 9
    bad = parser.parse_args(["pack", str(tmp_path / "nope"), str(out), "--no-progress"])
    with pytest.raises(DataError, match="does not exist"):
        run(bad)
    bad = parser.parse_args(["pack", str(image_folder), str(out), "--quality", "0"])
    with pytest.raises(DataError, match="--quality"):
        run(bad)
