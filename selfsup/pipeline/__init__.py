"""The data pipeline: sources, sampler, decode engines, views and the drop-in `Loader`."""

from selfsup.pipeline.loader import Batch, Loader
from selfsup.pipeline.recipes import RECIPES, recipe, register_recipe
from selfsup.pipeline.sampler import ShardedSampler
from selfsup.pipeline.sources import (
    ArraySource,
    BetonSource,
    ImageFolderSource,
    Source,
    TarShardSource,
)
from selfsup.pipeline.views import ViewSpec

__all__ = [
    "RECIPES",
    "ArraySource",
    "Batch",
    "BetonSource",
    "ImageFolderSource",
    "Loader",
    "ShardedSampler",
    "Source",
    "TarShardSource",
    "ViewSpec",
    "recipe",
    "register_recipe",
]
