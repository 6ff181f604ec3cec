"""Label subsets for fine-tuning on few labels: balanced, deterministic, nested percentages;
label files (SimCLR's 1percent.txt format) matched by name; one-line errors; SubsetSource;
holdout splits."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from selfsup.downstream.subsets import (
    LabelsSpec,
    SubsetSource,
    class_counts,
    holdout_split,
    parse_labels_spec,
    sample_names,
    select_subset,
    source_labels,
)
from selfsup.errors import ConfigError, DataError
from selfsup.pipeline.sources import ArraySource, ImageFolderSource, TarShardSource

TRAIN_COUNTS = (10, 25, 40)  # samples per class in the train split


def _png(value: int) -> bytes:
    img = np.full((4, 4, 3), value % 256, dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def _write_split(root: Path, counts, prefix: str = "") -> None:
    """ImageNet-style ``root/<wnid>/<wnid>_<i>.JPEG`` (PNG bytes: only names matter here)."""
    for c, n in enumerate(counts):
        wnid = f"n0000000{c}"
        (root / wnid).mkdir(parents=True)
        for i in range(n):
            (root / wnid / f"{prefix}{wnid}_{i}.JPEG").write_bytes(_png(c * 50 + i))


@pytest.fixture
def data(tmp_path) -> Path:
    """train/ (10, 25, 40 images per class) and val/ (3 per class, distinct file names)."""
    _write_split(tmp_path / "train", TRAIN_COUNTS)
    _write_split(tmp_path / "val", (3, 3, 3), prefix="val_")
    return tmp_path


@pytest.fixture
def train(data) -> ImageFolderSource:
    return ImageFolderSource(data / "train")


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def _label_file(path: Path, lines) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# -- specs ---------------------------------------------------------------------------------


def test_parse_specs(tmp_path):
    assert parse_labels_spec("10%") == LabelsSpec("percent", percent=10.0)
    assert parse_labels_spec(" 0.5% ").percent == 0.5
    assert parse_labels_spec("100%").percent == 100.0
    assert parse_labels_spec("25/class") == LabelsSpec("per_class", per_class=25)
    f = _label_file(tmp_path / "1percent.txt", ["a.JPEG"])
    assert parse_labels_spec(str(f)) == LabelsSpec("file", path=f)
    assert str(parse_labels_spec("10%")) == "10%"
    assert str(parse_labels_spec("25/class")) == "25/class"


@pytest.mark.parametrize("spec", ["0%", "150%", "-5%", "abc", "", "0/class", "12", "nope.txt"])
def test_bad_specs_are_one_line_config_errors(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        parse_labels_spec(spec)
    msg = _one_line(err)
    assert repr(spec) in msg and "10%" in msg and "25/class" in msg


def test_a_directory_is_not_a_label_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        parse_labels_spec(str(tmp_path))


# -- labels and names ----------------------------------------------------------------------


def test_source_labels_uses_the_attribute_and_falls_back_to_reading(train):
    expected = np.repeat(np.arange(3), TRAIN_COUNTS)
    assert np.array_equal(source_labels(train), expected)
    assert source_labels(train).dtype == np.int64

    class NoLabels:  # a Source without a labels attribute
        num_classes = 3

        def __len__(self):
            return 4

        def read(self, i):
            return b"", [2, 0, 1, 2][i]

        def describe(self, i):
            return str(i)

    assert source_labels(NoLabels()).tolist() == [2, 0, 1, 2]


def test_folder_names_are_file_base_names(train):
    names = sample_names(train)
    assert names[0] == "n00000000_0.JPEG"
    assert names == [os.path.basename(p) for p in train.paths]


def test_colliding_base_names_fall_back_to_relative_paths(tmp_path):
    # the built-in dataset's layout: 00000.jpg in every class folder
    _write_split(tmp_path / "train", (2, 2))
    nested = tmp_path / "train" / "n00000001" / "extra"
    nested.mkdir()
    (nested / "n00000001_0.JPEG").write_bytes(_png(1))
    src = ImageFolderSource(tmp_path / "train")
    names = sample_names(src)
    assert "n00000001/extra/n00000001_0.JPEG" in names and "n00000001/n00000001_0.JPEG" in names
    assert len(set(names)) == len(names) == 5
    f = _label_file(tmp_path / "l.txt", ["n00000001/extra/n00000001_0.JPEG"])
    (i,) = select_subset(src, str(f))
    assert src.paths[i].endswith("extra/n00000001_0.JPEG")
    # a bare base name no longer says which of the two images it means: unknown
    f = _label_file(tmp_path / "l2.txt", ["n00000001_0.JPEG"])
    with pytest.raises(DataError) as err:
        select_subset(src, str(f))
    assert "n00000001_0.JPEG" in _one_line(err)


def test_sources_without_names_need_a_percentage(tmp_path):
    src = ArraySource(np.zeros((6, 4, 4, 3), np.uint8), [0, 0, 1, 1, 2, 2])
    f = _label_file(tmp_path / "l.txt", ["n00000000_0.JPEG"])
    with pytest.raises(DataError) as err:
        select_subset(src, str(f))
    msg = _one_line(err)
    assert "named images" in msg and "N%" in msg


def test_beton_source_needs_a_percentage(tmp_path):
    from selfsup.pipeline.sources import BetonSource
    from selfsup.pipeline.sources.beton_write import write_beton

    path = tmp_path / "train.beton"
    write_beton(path, [(np.zeros((4, 4, 3), np.uint8), i % 2) for i in range(4)], progress=False)
    src = BetonSource(path)
    assert source_labels(src).tolist() == [0, 1, 0, 1]
    f = _label_file(tmp_path / "l.txt", ["n00000000_0.JPEG"])
    with pytest.raises(DataError, match="named images") as err:
        select_subset(src, str(f))
    _one_line(err)


# -- percentages and counts ----------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, per_class",
    [("10%", [1, 3, 4]), ("1%", [1, 1, 1]), ("50%", [5, 13, 20]), ("100%", [10, 25, 40])],
)
def test_percentages_are_class_balanced(train, spec, per_class):
    idx = select_subset(train, spec, seed=0)
    assert idx.dtype == np.int64
    assert np.array_equal(idx, np.unique(idx))  # sorted, no repeats
    assert class_counts(source_labels(train), idx, 3).tolist() == per_class


def test_percentages_are_deterministic_per_seed(train):
    a = select_subset(train, "10%", seed=3)
    assert np.array_equal(a, select_subset(train, "10%", seed=3))
    assert np.array_equal(a, select_subset(ImageFolderSource(train.root), "10%", seed=3))
    assert not np.array_equal(a, select_subset(train, "10%", seed=4))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_larger_subsets_contain_smaller_ones(train, seed):
    def pick(spec):
        return set(select_subset(train, spec, seed=seed).tolist())

    for small, big in [("1%", "10%"), ("10%", "50%"), ("50%", "100%"), ("0.5%", "1%")]:
        assert pick(small) <= pick(big)
    assert pick("1%") < pick("10%") < pick("50%") < pick("100%")
    assert pick("3/class") < pick("5/class") < pick("50%")


def test_per_class_count(train):
    idx = select_subset(train, "7/class", seed=0)
    assert class_counts(source_labels(train), idx, 3).tolist() == [7, 7, 7]


def test_a_subset_larger_than_the_data_is_one_line(train):
    with pytest.raises(DataError) as err:
        select_subset(train, "11/class")
    msg = _one_line(err)
    assert "n00000000" in msg and "10" in msg and "11/class" in msg
    with pytest.raises(ConfigError) as err:
        select_subset(train, "150%")
    assert "150%" in _one_line(err)


def test_array_source_percentages(tmp_path):
    labels = np.array([2] * 30 + [0] * 20 + [1] * 10)
    src = ArraySource(np.zeros((60, 2, 2, 3), np.uint8), labels)
    idx = select_subset(src, "10%", seed=5)
    assert class_counts(labels, idx, 3).tolist() == [2, 1, 3]
    assert np.array_equal(idx, np.sort(idx))


def test_class_counts_counts_repeats():
    assert class_counts(np.array([0, 1, 1, 2]), np.array([1, 1, 2, 0]), 4).tolist() == [1, 3, 0, 0]


# -- label files ---------------------------------------------------------------------------


def test_label_file_selects_the_named_images(train, tmp_path):
    wanted = ["n00000002_7.JPEG", "n00000000_3.JPEG", "n00000001_24.JPEG"]
    f = _label_file(
        tmp_path / "1percent.txt",
        ["# my subset", wanted[0], "", f"  {wanted[1]}\r", wanted[2], wanted[0]],
    )
    idx = select_subset(train, str(f))
    names = sample_names(train)
    assert sorted(names[i] for i in idx) == sorted(wanted)  # the duplicate counted once
    assert np.array_equal(idx, np.unique(idx))
    assert class_counts(source_labels(train), idx, 3).tolist() == [1, 1, 1]


def test_label_file_with_paths_counts_base_names(train, tmp_path):
    f = _label_file(tmp_path / "l.txt", ["train/n00000001/n00000001_4.JPEG"])
    idx = select_subset(train, str(f))
    assert [sample_names(train)[i] for i in idx] == ["n00000001_4.JPEG"]


def test_unknown_names_are_one_line(train, tmp_path):
    unknown = [f"n09999999_{i}.JPEG" for i in range(17)]
    f = _label_file(tmp_path / "l.txt", ["n00000000_0.JPEG", *unknown])
    with pytest.raises(DataError) as err:
        select_subset(train, str(f))
    msg = _one_line(err)
    assert "17 image" in msg and unknown[0] in msg and str(f) in msg
    assert unknown[3] not in msg  # only the first three


@pytest.mark.parametrize("lines", [[], ["", "  "], ["# only a comment"]])
def test_an_empty_label_file_is_an_error(train, tmp_path, lines):
    f = tmp_path / "l.txt"
    f.write_text("\n".join(lines))
    with pytest.raises(DataError, match="names no images") as err:
        select_subset(train, str(f))
    _one_line(err)


def test_subsets_are_disjoint_from_the_evaluation_split(data, tmp_path):
    train = ImageFolderSource(data / "train")
    val_names = set(sample_names(ImageFolderSource(data / "val")))
    f = _label_file(tmp_path / "l.txt", ["n00000000_1.JPEG", "val_n00000001_2.JPEG"])
    with pytest.raises(DataError) as err:
        select_subset(train, str(f))
    assert "val_n00000001_2.JPEG" in _one_line(err) and "1 image" in str(err.value)
    names = sample_names(train)
    for spec in ["1%", "10%", "100%", "5/class"]:
        assert not {names[i] for i in select_subset(train, spec)} & val_names


def test_subsets_index_the_train_split_even_when_val_names_repeat_it(tmp_path):
    """As in the built-in dataset, val/ may reuse train/'s file names: a subset is still made
    of train/ files only, and a label file selects the train image of that name."""
    _write_split(tmp_path / "train", (6, 6))
    _write_split(tmp_path / "val", (6, 6))  # the same names
    train = ImageFolderSource(tmp_path / "train")
    for spec in ["10%", "50%", "3/class"]:
        for i in select_subset(train, spec):
            assert train.paths[i].startswith(str(tmp_path / "train") + os.sep)
    f = _label_file(tmp_path / "l.txt", ["n00000001_2.JPEG"])
    (i,) = select_subset(train, str(f))
    assert train.paths[i] == str(tmp_path / "train" / "n00000001" / "n00000001_2.JPEG")


def _write_shard(path: Path, samples) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_tar_shards_match_names_by_key(tmp_path):
    samples = []
    for c in range(2):
        for i in range(4):
            key = f"sub/n0000000{c}_{i}"
            samples += [(f"{key}.jpg", _png(i)), (f"{key}.cls", str(c).encode())]
    _write_shard(tmp_path / "train-0.tar", samples)
    src = TarShardSource(tmp_path / "train-0.tar")
    assert sample_names(src)[:2] == ["n00000000_0", "n00000000_1"]
    f = _label_file(tmp_path / "l.txt", ["n00000001_2.JPEG", "n00000000_3.jpg"])
    idx = select_subset(src, str(f))
    assert sorted(src.key(i) for i in idx) == ["sub/n00000000_3", "sub/n00000001_2"]
    f = _label_file(tmp_path / "bad.txt", ["n00000001_9.JPEG"])
    with pytest.raises(DataError, match="n00000001_9.JPEG"):
        select_subset(src, str(f))


# -- SubsetSource --------------------------------------------------------------------------


def test_subset_source_reads_the_right_samples(train):
    idx = np.array([30, 0, 12, 12, 74])
    sub = SubsetSource(train, idx)
    assert len(sub) == 5 and sub.num_classes == 3
    assert sub.labels.tolist() == [1, 0, 1, 1, 2]
    for j, i in enumerate(idx):
        assert sub.read(j) == train.read(int(i))
        assert sub.describe(j) == train.paths[i]
    assert source_labels(sub).tolist() == sub.labels.tolist()
    assert not sub.has_masks


@pytest.mark.parametrize("bad", [[0, 75], [-1], [], [[0, 1]], [0.5]])
def test_subset_source_rejects_bad_indices(train, bad):
    with pytest.raises(ValueError):
        SubsetSource(train, np.array(bad))


def test_subset_source_of_a_file_subset_keeps_names(train, tmp_path):
    f = _label_file(tmp_path / "l.txt", ["n00000002_5.JPEG", "n00000001_0.JPEG"])
    sub = SubsetSource(train, select_subset(train, str(f)))
    assert sample_names(sub) == ["n00000001_0.JPEG", "n00000002_5.JPEG"]
    assert sub.labels.tolist() == [1, 2]


# -- holdout split -------------------------------------------------------------------------


def test_holdout_split_is_balanced_disjoint_and_deterministic():
    labels = np.array([0] * 10 + [1] * 25 + [2] * 40 + [3] * 1)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    train_idx, held = holdout_split(labels, 0.2, seed=1)
    assert not set(train_idx.tolist()) & set(held.tolist())
    assert np.array_equal(np.sort(np.concatenate([train_idx, held])), np.arange(len(labels)))
    assert class_counts(labels, held, 4).tolist() == [2, 5, 8, 0]
    assert class_counts(labels, train_idx, 4).tolist() == [8, 20, 32, 1]
    again = holdout_split(labels, 0.2, seed=1)
    assert np.array_equal(again[1], held) and np.array_equal(again[0], train_idx)
    assert not np.array_equal(holdout_split(labels, 0.2, seed=2)[1], held)


def test_holdout_split_keeps_one_training_sample_per_class():
    train_idx, held = holdout_split(np.array([0, 0, 1, 1, 1]), 0.9)
    assert class_counts(np.array([0, 0, 1, 1, 1]), train_idx, 2).tolist() == [1, 1]
    assert len(held) == 3
    with pytest.raises(ValueError):
        holdout_split(np.array([0, 1]), 1.0)
