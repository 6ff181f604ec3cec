"""The source interface: random access to encoded samples ``(bytes, label)``."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Source(Protocol):
    """Random access to encoded samples.

    ``read(i)`` returns the encoded image bytes and integer label of sample ``i``;
    it raises ``OSError`` when the sample cannot be read at all. ``describe(i)`` names the
    sample for error reports (a path, or ``file.beton#i``).
    """

    num_classes: int

    def __len__(self) -> int: ...

    def read(self, index: int) -> tuple[bytes, int]: ...

    def describe(self, index: int) -> str: ...
