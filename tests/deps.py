"""Optional dependencies in tests: skip without them, or fail when CI says they must be there.

``make test`` sets ``SELFSUP_REQUIRE_TRITON=1``, ``SELFSUP_REQUIRE_DALI=1`` and
``SELFSUP_REQUIRE_FFCV=1``, so a missing package turns into failures instead of skips.
"""

from __future__ import annotations

import importlib
import os

import pytest

FLAGS = {"triton": "SELFSUP_REQUIRE_TRITON", "nvidia.dali": "SELFSUP_REQUIRE_DALI"}


def require(module: str):
    """Import ``module``; skip the test without it, unless its SELFSUP_REQUIRE_* flag is 1."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        flag = FLAGS[module]
        if os.environ.get(flag) == "1":
            pytest.fail(f"{module} is not importable ({e}) but {flag}=1", pytrace=False)
        pytest.skip(f"{module} is not installed", allow_module_level=True)
