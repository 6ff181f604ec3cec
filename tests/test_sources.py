"""Tar shard and in-memory array sources: random access, index caching, bad shards."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from selfsup.errors import DataError
from selfsup.pipeline.decode import decode_image
from selfsup.pipeline.sources import tar as tar_module
from selfsup.pipeline.sources.array import ArraySource
from selfsup.pipeline.sources.tar import TarShardSource
from tests import badfiles as bf

ENCODERS = {"jpg": bf.jpeg_bytes, "png": bf.png_bytes, "webp": bf.webp_bytes}


def make_samples(shard: int, n: int = 5) -> dict[str, dict[str, bytes]]:
    out = {}
    for i in range(n):
        ext = list(ENCODERS)[i % len(ENCODERS)]
        img = bf.pattern(16 + i, 24, seed=100 * shard + i)
        out[f"s{shard}/{i:04d}"] = {ext: ENCODERS[ext](img), "cls": f"{(shard + i) % 3}\n".encode()}
    return out


@pytest.fixture
def shards(tmp_path):
    """Two shards of 5 samples; the expected (bytes, label) of every sample in order."""
    expected = []
    for s in range(2):
        samples = make_samples(s)
        bf.write_shard(tmp_path / f"train-{s:03d}.tar", samples)
        for members in samples.values():
            img = next(v for k, v in members.items() if k != "cls")
            expected.append((img, int(members["cls"])))
    return tmp_path, expected


@pytest.fixture
def count_scans(monkeypatch):
    scans = []
    real = tar_module._scan_shard

    def counting(path, size):
        scans.append(path)
        return real(path, size)

    monkeypatch.setattr(tar_module, "_scan_shard", counting)
    return scans


# -- tar shards ----------------------------------------------------------------------------


def test_tar_random_access(shards):
    root, expected = shards
    src = TarShardSource(str(root / "train-*.tar"))
    assert len(src) == 10 and src.num_classes == 3
    order = np.random.default_rng(0).permutation(len(src))
    for i in order:
        data, label = src.read(int(i))
        assert (data, label) == expected[i]
    assert src.describe(6) == f"{root / 'train-001.tar'}#s1/0001"
    assert src.labels.tolist() == [label for _, label in expected]
    assert decode_image(src.read(0)[0]).shape == (16, 24, 3)
    src.close()


def test_tar_shard_lists_and_brace_ranges(shards):
    root, expected = shards
    by_list = TarShardSource([root / "train-000.tar", root / "train-001.tar"])
    by_brace = TarShardSource(str(root / "train-{000..001}.tar"))
    assert by_list.shards == by_brace.shards and len(by_brace) == len(expected)


def test_tar_index_built_once_and_reused(shards, count_scans):
    root, expected = shards
    a = TarShardSource(str(root / "train-*.tar"))
    assert len(count_scans) == 2
    assert (root / f"train-000.tar{tar_module.INDEX_SUFFIX}").is_file()
    for i in range(len(a)):
        a.read(i)
    b = TarShardSource(str(root / "train-*.tar"))
    assert len(count_scans) == 2  # neither reads nor a second open scan again
    assert [b.read(i) for i in range(len(b))] == expected
    st = os.stat(root / "train-001.tar")  # a changed shard is scanned again, alone
    os.utime(root / "train-001.tar", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    TarShardSource(str(root / "train-*.tar"))
    assert count_scans[2:] == [str(root / "train-001.tar")]


def test_tar_index_in_cache_dir(shards, tmp_path_factory, count_scans):
    root, _ = shards
    cache = tmp_path_factory.mktemp("cache")
    TarShardSource(str(root / "train-000.tar"), cache_dir=cache)
    assert len(list(cache.glob(f"*{tar_module.INDEX_SUFFIX}"))) == 1
    assert not (root / f"train-000.tar{tar_module.INDEX_SUFFIX}").exists()
    TarShardSource(str(root / "train-000.tar"), cache_dir=cache)
    assert len(count_scans) == 1


def test_tar_damaged_index_is_rebuilt(shards, count_scans):
    root, expected = shards
    TarShardSource(str(root / "train-000.tar"))
    (root / f"train-000.tar{tar_module.INDEX_SUFFIX}").write_bytes(b"garbage")
    src = TarShardSource(str(root / "train-000.tar"))
    assert len(count_scans) == 2 and src.read(4) == expected[4]


def _rewrite_index(path, **changes):
    """Rewrite a cached index with some arrays changed and its stamp kept (so the stamp
    alone would accept it)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for k, f in changes.items():
        arrays[k] = f(arrays[k])
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    "changes",
    [
        {"offsets": lambda o: o + 10**6},  # past the end of the shard
        {"sizes": lambda s: s * 0 + 10**9},  # offset + size past the end
        {"offsets": lambda o: o - 10**6},  # negative
        {"sizes": lambda s: s - 10**6},  # negative
        {"labels": lambda y: y - 100},  # negative labels
        {"labels": lambda y: y[:-1]},  # lengths disagree
        {"offsets": lambda o: o + np.iinfo(np.int64).max - o.max()},  # offset + size overflows
    ],
    ids=["offset", "size", "negative-offset", "negative-size", "label", "length", "overflow"],
)
def test_tar_index_pointing_outside_the_shard_is_rebuilt(shards, count_scans, changes):
    root, expected = shards
    TarShardSource(str(root / "train-000.tar"))
    index = root / f"train-000.tar{tar_module.INDEX_SUFFIX}"
    _rewrite_index(index, **changes)
    src = TarShardSource(str(root / "train-000.tar"))
    assert len(count_scans) == 2  # not trusted: scanned again
    assert [src.read(i) for i in range(len(src))] == expected[:5]
    again = TarShardSource(str(root / "train-000.tar"))  # and the good index replaced it
    assert len(count_scans) == 2 and len(again) == 5


def test_tar_threads_and_pickle(shards):
    root, expected = shards
    src = TarShardSource(str(root / "train-*.tar"))
    idx = np.random.default_rng(1).integers(0, len(src), 400)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(src.read, idx.tolist()))
    assert got == [expected[i] for i in idx]
    clone = pickle.loads(pickle.dumps(src))  # after descriptors were opened
    assert [clone.read(i) for i in range(len(clone))] == expected


def test_tar_incomplete_samples_reported(tmp_path):
    samples = make_samples(0, 4)
    del samples["s0/0001"]["cls"]
    samples["s0/0002"] = {"cls": b"2"}
    samples["s0/0003"]["cls"] = b"three"
    bf.write_shard(tmp_path / "a.tar", samples)
    with pytest.warns(UserWarning, match="3 incomplete samples skipped"):
        src = TarShardSource(tmp_path / "a.tar")
    assert len(src) == 1 and src.describe(0).endswith("#s0/0000")
    reasons = "\n".join(src.skipped)
    assert "s0/0001: no .cls label" in reasons
    assert "s0/0002: no image member" in reasons
    assert "s0/0003: .cls is not a non-negative integer" in reasons
    with pytest.warns(UserWarning, match="3 incomplete"):  # reported again from the cache
        TarShardSource(tmp_path / "a.tar")


def test_tar_missing_shard(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        TarShardSource(tmp_path / "nope.tar")
    with pytest.raises(DataError, match="no tar shards match"):
        TarShardSource(str(tmp_path / "nope-*.tar"))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (bf.random_bytes(4096), "not a readable tar"),
        (b"", "not a readable tar"),
        (gzip.compress(b"x" * 2048), "compressed"),
    ],
)
def test_tar_not_a_tar(tmp_path, content, match):
    (tmp_path / "bad.tar").write_bytes(content)
    with pytest.raises(DataError, match=match):
        TarShardSource(tmp_path / "bad.tar")


def test_tar_truncated_in_member_data(shards):
    root, _ = shards
    path = root / "train-000.tar"
    with tarfile.open(path) as tf:
        last = tf.getmembers()[-1]
    bf.truncate_file(path, last.offset_data + last.size // 2)  # into the last member's data
    with pytest.raises(DataError, match="truncated"):
        TarShardSource(path)


def test_tar_truncated_in_a_header(tmp_path):
    path = bf.write_shard(tmp_path / "a.tar", make_samples(0, 3))
    with open(path, "rb") as f:
        data = f.read()
    second = data.find(b"s0/0001.")  # the second sample's first header
    bf.truncate_file(path, second + 100)
    with pytest.raises(DataError, match="truncated"):
        TarShardSource(path)


def test_tar_read_fails_with_oserror_when_shard_shrinks(shards):
    root, _ = shards
    src = TarShardSource(str(root / "train-000.tar"))
    bf.truncate_file(root / "train-000.tar", 1024)
    with pytest.raises(OSError, match="short read"):
        src.read(4)


def test_tar_through_the_engine(shards):
    from selfsup.pipeline.engines.cpu import CpuEngine
    from selfsup.pipeline.recipes import recipe

    root, _ = shards
    src = TarShardSource(str(root / "train-*.tar"))
    engine = CpuEngine(src, recipe("simclr", 16), seed=0, threads=2)
    try:
        batch = engine.load(np.arange(len(src)), epoch=0)
    finally:
        engine.close()
    assert batch.views[0].shape == (2, 10, 3, 16, 16) and not engine.bad
    assert batch.labels.tolist() == src.labels.tolist()


# -- arrays --------------------------------------------------------------------------------


def test_array_source_cifar_style():
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    src = ArraySource(images, np.arange(6) % 4)
    assert len(src) == 6 and src.num_classes == 4 and src.describe(2) == "array[2]"
    img, label = src.read(5)
    assert label == 1 and np.shares_memory(img, images)
    assert decode_image(img) is img


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((3, 8, 9), np.uint8),
        np.zeros((3, 8, 9, 1), np.uint8),
        [np.zeros((8, 9, 3), np.uint8), np.zeros((20, 5), np.uint8), np.zeros((1, 1, 3), np.uint8)],
    ],
    ids=["gray", "gray1", "list"],
)
def test_array_source_gray_and_lists(images):
    src = ArraySource(images, [0, 1, 2])
    for i in range(3):
        out = decode_image(src.read(i)[0])
        assert out.ndim == 3 and out.shape[2] == 3


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((2, 4, 4, 3), np.float32), None, "uint8"),
        (np.zeros((2, 4, 4, 2), np.uint8), None, "shape"),
        (np.zeros((4, 4), np.uint8), None, "shape"),
        (np.zeros((0, 4, 4, 3), np.uint8), None, "no images"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.int64)], None, "image 1"),
        (np.zeros((2, 4, 4, 3), np.uint8), [0], "one per image"),
        (np.zeros((2, 4, 4, 3), np.uint8), [0.5, 1.0], "integers"),
        (np.zeros((2, 4, 4, 3), np.uint8), [0, -1], ">= 0"),
    ],
)
def test_array_source_errors(images, labels, match):
    with pytest.raises(DataError, match=match):
        ArraySource(images, labels)


def test_array_source_num_classes():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    assert ArraySource(images).num_classes == 1
    assert ArraySource(images, [0, 1], num_classes=10).num_classes == 10
    with pytest.raises(DataError, match="num_classes"):
        ArraySource(images, [0, 5], num_classes=3)
