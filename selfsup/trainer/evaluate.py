"""Evaluation of a backbone: feature extraction and weighted k-NN classification.

Features go through the same ``Loader`` as training (the config's engine, threads and
decoding), with the evaluation recipe: the central crop, normalised, no colour op at all.

For ImageNet-size banks (1.28M x 2048 features: 10 GB in float32) the bank can be kept in
half precision (``bank_dtype``) and on the host (``on_host``); :func:`knn_top1` then streams
it to the device in chunks and merges each chunk's top-k, so the device holds one chunk.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup import distributed
from selfsup.pipeline.loader import Loader
from selfsup.pipeline.sources.base import Source

BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    engine: str = "auto",
    dtype: torch.dtype = torch.float32,
    on_host: bool = False,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features and labels of every sample, centre-cropped, in index order.

    ``engine`` is the Loader's (``cpu``, ``dali`` or ``auto``); the features are stored in
    ``dtype`` (normalised in float32 first) and, with ``on_host``, moved to the host batch by
    batch. Labels stay on the device unless ``on_host``. ``normalize=False``: the backbone's
    features as they are (for a linear classifier), in float32 then ``dtype``.

    Across processes each rank extracts its slice of every global batch (``batch_size`` per
    rank) and the slices are gathered batch by batch, so every rank returns all the features,
    in index order (rank r's slice of a global batch precedes rank r+1's).
    """
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
        engine=engine,
    )
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        dtype_in = next(backbone.parameters()).dtype  # float64 for fp64 runs
        for batch in loader:
            x = batch.views[0].flatten(0, 1).to(dtype_in)
            f = backbone(x).float()
            f = nn.functional.normalize(f, dim=1) if normalize else f
            f = distributed.gather_uneven(f.to(dtype))
            y = distributed.gather_uneven(batch.labels.to(f.device))
            feats.append(f.cpu() if on_host else f)
            labels.append(y.cpu() if on_host else y)
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
    bank_chunk: int | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Weighted k-NN top-1 accuracy in percent; see :func:`knn_accuracy`."""
    scores = knn_accuracy(
        train_features, train_labels, test_features, test_labels, ks=(k,),
        temperature=temperature, chunk=chunk, bank_chunk=bank_chunk, device=device,
    )  # fmt: skip
    return scores[k][0]


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    ks: tuple[int, ...] = (20,),
    temperature: float = 0.07,
    chunk: int = 1024,
    bank_chunk: int | None = None,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
) -> dict[int, tuple[float, float]]:
    """Weighted k-NN accuracy for several k at once: ``{k: (top-1 %, top-5 %)}``.

    Cosine similarity, votes exp(sim / T) (Wu et al. 2018; DINO's k-NN). The neighbours are
    found once, for the largest k; each smaller k uses the first k of them (sorted).

    Features must be L2-normalised; the bank (``train_features``) may be float16/bfloat16 and
    may live on the host: similarities are computed in float32 on ``device`` (default: the
    test features' device). Test samples go in chunks of ``chunk``; with ``bank_chunk`` the
    bank goes in chunks of that many rows, each chunk's top-k merged into a running top-k,
    so at most ``chunk x bank_chunk`` similarities and one bank chunk are on the device.
    """
    device = torch.device(device) if device is not None else test_features.device
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    n_bank = len(train_features)
    k_max = min(max(ks), n_bank)
    step = bank_chunk or n_bank
    bank_labels = train_labels.to(device)
    correct = {k: torch.zeros(2, dtype=torch.int64, device=device) for k in ks}
    for start in range(0, len(test_features), chunk):
        q = test_features[start : start + chunk].to(device, torch.float32)
        top_sim = torch.full((len(q), 0), float("-inf"), device=device)
        top_idx = torch.zeros((len(q), 0), dtype=torch.int64, device=device)
        for b0 in range(0, n_bank, step):
            bank = train_features[b0 : b0 + step].to(device, torch.float32, non_blocking=True)
            sim, idx = (q @ bank.T).topk(min(k_max, len(bank)), dim=1)
            top_sim, pick = torch.cat([top_sim, sim], 1).topk(
                min(k_max, top_sim.shape[1] + sim.shape[1]), dim=1
            )
            top_idx = torch.gather(torch.cat([top_idx, idx + b0], 1), 1, pick)
        weights = (top_sim / temperature).exp()
        neighbour_labels = bank_labels[top_idx]
        truth = test_labels[start : start + chunk].to(device)
        for k in ks:
            votes = torch.zeros(len(q), num_classes, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            correct[k] += topk_hits(votes, truth)
    n = len(test_features)
    return {k: tuple(100.0 * int(c) / n for c in correct[k].tolist()) for k in ks}


def topk_hits(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[hits at top-1, hits at top-5] of class ``scores`` [N, C] against ``truth`` [N] (a
    device tensor: no host synchronisation). With fewer than 5 classes top-5 counts all."""
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hit = top == truth[:, None]
    return torch.stack([hit[:, 0].sum(), hit.any(1).sum()])
