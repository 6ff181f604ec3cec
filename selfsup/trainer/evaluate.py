"""Evaluation of a backbone: feature extraction and weighted k-NN classification."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.pipeline.loader import Loader
from selfsup.pipeline.sources.base import Source


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    source: Source,
    *,
    size: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    threads: int = 0,
    reduced_decode: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features and labels of every sample, centre-cropped, in index order."""
    loader = Loader(
        source,
        "center_crop_eval",
        batch_size,
        device,
        seed=0,
        size=size,
        shuffle=False,
        drop_last=False,
        threads=threads,
        prefetch=1,
        reduced_decode=reduced_decode,
    )
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            f = backbone(batch.views[0].flatten(0, 1)).float()
            feats.append(nn.functional.normalize(f, dim=1))
            labels.append(batch.labels)
    finally:
        loader.close()
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Weighted k-NN top-1 accuracy in percent (cosine similarity, votes exp(sim / T)).

    Features must be L2-normalised. Test samples are processed in chunks so the similarity
    matrix never exceeds ``chunk x len(train)``.
    """
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train_features))
    correct = 0
    for start in range(0, len(test_features), chunk):
        sim = test_features[start : start + chunk] @ train_features.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        correct += (votes.argmax(1) == test_labels[start : start + chunk]).sum().item()
    return 100.0 * correct / len(test_features)
