"""RELAY_BATCH_RETENTION_S: never shorter than a batch may run."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.batches import COMPLETION_WINDOW_S, EXPIRY_GRACE_S
from schemas.settings import Settings


def test_a_retention_shorter_than_a_batch_may_run_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch's keys expiring mid-run lose its answers and its 404s: refused at start,
    with what the least is."""
    monkeypatch.setenv("RELAY_BATCH_RETENTION_S", "3600")
    with pytest.raises(ValidationError) as refused:
        Settings()
    [error] = refused.value.errors()
    assert error["loc"] == ("batch_retention_s",)
    assert "at least 86700 s" in error["msg"] and "got 3600" in error["msg"]


def test_a_retention_as_long_as_a_batch_may_run_is_taken() -> None:
    least = COMPLETION_WINDOW_S + EXPIRY_GRACE_S
    assert Settings(batch_retention_s=least).batch_retention_s == least
    assert Settings().batch_retention_s == 30 * 24 * 3600
