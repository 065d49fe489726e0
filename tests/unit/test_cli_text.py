"""What clients and configs wrote is printed as text: a path or tag that looks like Rich
markup neither crashes `relay audit`/`relay report` nor loses characters."""

from __future__ import annotations

import io

from rich.console import Console

from cli.audit import audit_table
from cli.report import group, table
from schemas.envelope import AuditEvent
from tests.unit.test_report import event

TRICKY = "/v1/models/[/x] and [red]hidden[/red]"


def rendered(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(renderable)
    return out.getvalue()


def test_an_audit_path_that_looks_like_markup_is_shown_as_sent():
    ev = AuditEvent(kind="auth_failed", role="gateway", instance="gw", path=TRICKY)
    assert TRICKY in rendered(audit_table([ev]))


def test_a_cost_tag_that_looks_like_markup_is_shown_as_sent():
    rows = group([event("t", 0.1, 0.2, cost_tag=TRICKY)], "tag")
    assert TRICKY in rendered(table(rows, "tag"))
