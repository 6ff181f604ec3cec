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
