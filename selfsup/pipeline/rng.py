"""Counter-based random numbers keyed by (seed, epoch, sample index, view).

Every random choice of the pipeline is drawn from a generator built here, so a sample's
augmentation depends only on these four numbers: not on the thread that processes it,
the worker count, the rank count or the sample's position in its batch. That is what
makes batches reproducible across machines and a run resumable mid-epoch.
"""

from __future__ import annotations

import numpy as np

# Philox-4x64: the 128-bit key holds the seed and a domain tag, the 256-bit counter
# holds (draw number, view, index, epoch). Draws advance word 0 only, so two streams
# can never overlap (that would take 2**64 draws).
_DOMAIN_AUGMENT = 0x5E1F5A9
_DOMAIN_SHUFFLE = 0x5E1F5B1
_DOMAIN_REPLACE = 0x5E1F5C3


def _philox(seed: int, domain: int, a: int, b: int, c: int) -> np.random.Generator:
    mask = (1 << 64) - 1
    key = np.array([seed & mask, domain], dtype=np.uint64)
    counter = np.array([0, a & mask, b & mask, c & mask], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


def sample_rng(seed: int, epoch: int, index: int, view: int) -> np.random.Generator:
    """Generator for one view of one sample in one epoch."""
    return _philox(seed, _DOMAIN_AUGMENT, view, index, epoch)


def shuffle_rng(seed: int, epoch: int) -> np.random.Generator:
    """Generator for the global permutation of one epoch."""
    return _philox(seed, _DOMAIN_SHUFFLE, 0, 0, epoch)


def replacement_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Generator choosing the stand-in for a bad sample (deterministic per sample)."""
    return _philox(seed, _DOMAIN_REPLACE, 0, index, epoch)
