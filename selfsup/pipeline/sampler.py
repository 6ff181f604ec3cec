"""One global permutation per (seed, epoch), cut into global batches and per-rank shards.

Global batch ``k`` of an epoch is the same set of samples whatever the world size: it is
``perm[k*G : (k+1)*G]`` with ``G = batch_size * world_size``, and rank ``r`` takes the
``r``-th contiguous slice of it. So a run on 1 process with batch 2B sees the same samples
per step as a run on 2 processes with batch B, and every index is global and unique.
"""

from __future__ import annotations

import numpy as np

from selfsup.pipeline.rng import shuffle_rng


class ShardedSampler:
    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        full, rest = divmod(self.num_samples, self.global_batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's global sample order."""
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        return shuffle_rng(self.seed, epoch).permutation(self.num_samples).astype(np.int64)

    def batch(self, order: np.ndarray, k: int) -> np.ndarray:
        """This rank's indices of global batch ``k`` taken from ``order``.

        A short last batch (drop_last=False) is split as evenly as possible; a rank may
        then get fewer samples, or none.
        """
        g = self.global_batch_size
        chunk = order[k * g : (k + 1) * g]
        if len(chunk) == g:
            return chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return np.array_split(chunk, self.world_size)[self.rank]
