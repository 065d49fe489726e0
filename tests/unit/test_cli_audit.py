"""`relay audit` reads lines any producer may have written: one whose time no calendar
holds is shown with its raw ``ts_ms``, never a traceback that hides the rest."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.audit import audit_table
from cli.main import app
from schemas.envelope import AuditEvent
from tests.unit.test_cli_text import rendered
from tests.unit.test_report import reading


@pytest.mark.parametrize("ts_ms", [10**17, -(10**17), 2**70])
def test_an_event_whose_time_no_calendar_holds_shows_its_raw_time(ts_ms: int) -> None:
    ev = AuditEvent(kind="auth_failed", role="gateway", instance="gw", ts_ms=ts_ms)
    assert f"ts_ms={ts_ms}" in rendered(audit_table([ev]))


def test_one_far_future_line_does_not_stop_relay_audit(monkeypatch) -> None:
    """The far-future line sorts last, so it is in every ``--last N``: it must not keep
    the log from being read for as long as the topic holds it."""
    import cli.report as report

    good = AuditEvent(kind="started", role="gateway", instance="gw", config_sha256="ab" * 32)
    bad = AuditEvent(kind="auth_failed", role="gateway", instance="gw", ts_ms=10**17)
    held = {"relay.audit": [good.model_dump_json().encode(), bad.model_dump_json().encode()]}
    monkeypatch.setattr(report, "AIOKafkaConsumer", reading(held))
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["audit"])
    assert result.exit_code == 0, result.output
    assert f"ts_ms={10**17}" in result.output and "auth_failed" in result.output
    assert "started" in result.output
