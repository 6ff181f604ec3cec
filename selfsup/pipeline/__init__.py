"""The data pipeline: sources, sampler, decode engines, views and the drop-in `Loader`."""

from selfsup.pipeline.loader import Batch, Loader
from selfsup.pipeline.sampler import ShardedSampler
from selfsup.pipeline.sources import ImageFolderSource, Source
from selfsup.pipeline.views import RECIPES, ViewSpec, recipe

__all__ = [
    "RECIPES",
    "Batch",
    "ImageFolderSource",
    "Loader",
    "ShardedSampler",
    "Source",
    "ViewSpec",
    "recipe",
]
