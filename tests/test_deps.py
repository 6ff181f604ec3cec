"""The optional-dependency guard: skip by default, fail when CI requires the package."""

import pytest

from tests import deps


def test_missing_module_skips_or_fails_by_its_flag(monkeypatch):
    monkeypatch.setitem(deps.FLAGS, "selfsup_no_such_module", "SELFSUP_REQUIRE_NOTHING")
    monkeypatch.delenv("SELFSUP_REQUIRE_NOTHING", raising=False)
    with pytest.raises(pytest.skip.Exception):
        deps.require("selfsup_no_such_module")
    monkeypatch.setenv("SELFSUP_REQUIRE_NOTHING", "1")
    with pytest.raises(pytest.fail.Exception, match="SELFSUP_REQUIRE_NOTHING=1"):
        deps.require("selfsup_no_such_module")


def test_present_module_is_returned():
    assert deps.require("triton").__name__ == "triton"
