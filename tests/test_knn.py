import pytest
import torch
import torch.nn.functional as F

from selfsup.trainer.evaluate import knn_top1


def test_weighted_knn_votes_by_exp_similarity():
    # Two train points of class 0 at moderate similarity outvote... unless the single
    # class-1 neighbour is much closer: weights are exp(sim / T), not counts.
    train = F.normalize(torch.tensor([[1.0, 0.3], [1.0, -0.3], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    q = F.normalize(torch.tensor([[0.05, 1.0]]), dim=1)
    assert knn_top1(train, labels, q, torch.tensor([1]), k=3, temperature=0.07) == 100.0
    # With a huge temperature weights are ~equal and the majority (class 0) wins.
    assert knn_top1(train, labels, q, torch.tensor([1]), k=3, temperature=1e6) == 0.0


def test_chunking_does_not_change_the_result():
    torch.manual_seed(0)
    train = F.normalize(torch.randn(200, 16), dim=1)
    ytr = torch.randint(0, 5, (200,))
    test = F.normalize(torch.randn(57, 16), dim=1)
    yte = torch.randint(0, 5, (57,))
    a = knn_top1(train, ytr, test, yte, k=20, chunk=1024)
    b = knn_top1(train, ytr, test, yte, k=20, chunk=7)
    assert a == b


def _bank(seed=0, n=300, d=32, classes=6):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, d, generator=g), dim=1)
    ytr = torch.randint(0, classes, (n,), generator=g)
    train = F.normalize(centres[ytr] + 0.25 * torch.randn(n, d, generator=g), dim=1)
    yte = torch.randint(0, classes, (97,), generator=g)
    test = F.normalize(centres[yte] + 0.25 * torch.randn(97, d, generator=g), dim=1)
    return train, ytr, test, yte


def test_bank_streamed_from_the_host_in_chunks_gives_the_same_answer():
    train, ytr, test, yte = _bank()
    whole = knn_top1(train, ytr, test, yte, k=20)
    for bank_chunk in (1, 7, 64, 299, 300, 1000):
        assert knn_top1(train, ytr, test, yte, k=20, chunk=13, bank_chunk=bank_chunk) == whole
    # k larger than a chunk: the running top-k is built across chunks
    assert knn_top1(train, ytr, test, yte, k=50, bank_chunk=16) == knn_top1(
        train, ytr, test, yte, k=50
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_bank(dtype):
    train, ytr, test, yte = _bank(seed=1)
    full = knn_top1(train, ytr, test, yte, k=20)
    half = knn_top1(train.to(dtype), ytr, test, yte, k=20, bank_chunk=50)
    assert abs(half - full) <= 100.0 / len(test)  # at most one borderline vote flips
    assert full > 60  # the set is separable enough for the comparison to mean something


def test_extract_features_stores_the_bank_as_asked(synthetic_root):
    from selfsup.pipeline.sources import ImageFolderSource
    from selfsup.trainer.evaluate import extract_features
    from selfsup.trainer.models import build_model

    net = build_model("resnet18", small_input=True, width=8)
    src = ImageFolderSource(synthetic_root / "val")
    kw = dict(size=16, batch_size=16, threads=1)
    f32, y32 = extract_features(net, src, **kw)
    f16, y16 = extract_features(net, src, dtype=torch.float16, on_host=True, **kw)
    assert f16.dtype == torch.float16 and f16.device.type == "cpu"
    assert torch.equal(y16, y32) and len(f32) == len(src)
    assert (f16.float() - f32).abs().max() < 2e-3
    assert torch.allclose(f32.norm(dim=1), torch.ones(len(f32)), atol=1e-5)
