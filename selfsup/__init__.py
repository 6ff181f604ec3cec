"""selfsup: self-supervised pretraining of image encoders, built data-pipeline-first."""

from selfsup.errors import CheckpointError, ConfigError, DataError, SelfsupError, TrainingError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "SelfsupError",
    "TrainingError",
    "__version__",
]
