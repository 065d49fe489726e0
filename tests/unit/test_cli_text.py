"""What clients and configs wrote is printed as text: a path or tag that looks like Rich
markup neither crashes `relay audit`/`relay report` nor loses characters, and control
characters (ESC sequences) are spelled out, never sent to the terminal."""

from __future__ import annotations

import io

from rich.console import Console

from cli.audit import audit_table
from cli.report import table
from schemas.envelope import AuditEvent
from tests.unit.test_report import event, rows_by

TRICKY = "/v1/models/[/x] and [red]hidden[/red]"


def rendered(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(renderable)
    return out.getvalue()


def test_an_audit_path_that_looks_like_markup_is_shown_as_sent():
    ev = AuditEvent(kind="auth_failed", role="gateway", instance="gw", path=TRICKY)
    assert TRICKY in rendered(audit_table([ev]))


def test_a_cost_tag_that_looks_like_markup_is_shown_as_sent():
    rows = rows_by([event("t", 0.1, 0.2, cost_tag=TRICKY)], "tag")
    assert TRICKY in rendered(table(rows, "tag"))


ESCAPES = "/v1/\x1b[2J\x1b[3A\x1b[2Kx\x07\x9b"


def test_terminal_controls_in_an_audit_path_are_spelled_out_never_sent():
    """An unauthenticated request's path is recorded as sent: `relay audit` must not let
    its ESC sequences clear the operator's screen or rewrite lines already shown."""
    ev = AuditEvent(kind="auth_failed", role="gateway", instance="gw", path=ESCAPES)
    out = rendered(audit_table([ev]))
    assert not any(c in out for c in "\x1b\x07\x9b")
    assert "/v1/\\x1b[2J\\x1b[3A\\x1b[2Kx\\x07\\x9b" in out


def test_terminal_controls_in_a_tenant_or_tag_a_producer_wrote_are_spelled_out():
    rows = rows_by([event("t\x1b[2J", 0.1, 0.2, cost_tag="tag\x1b]0;owned\x07")], "tag")
    out = rendered(table(rows, "tag"))
    assert "\x1b" not in out and "\x07" not in out and "tag\\x1b]0;owned\\x07" in out
