"""The error classes selfsup raises for problems a user can fix.

The CLI prints the message of a :class:`SelfsupError` as one line and exits with
status 2, without a traceback, so each message says what is wrong, where, and how
to fix it.
"""


class SelfsupError(Exception):
    """Base class of every user-facing selfsup error."""


class ConfigError(SelfsupError):
    """A configuration file or override is unreadable, unknown, mistyped or impossible."""


class DataError(SelfsupError):
    """A data path is missing or the data cannot be used (e.g. too many bad samples)."""


class TrainingError(SelfsupError):
    """Training cannot go on (e.g. the loss became non-finite)."""


class CheckpointError(SelfsupError):
    """A run directory or checkpoint is missing or cannot be resumed from."""
