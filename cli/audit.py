"""`relay audit`: the audit topic as a table (authentication failures, denied models,
which process started with which config)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.report import read_topic, shown
from schemas.envelope import AuditEvent


def when(ts_ms: int) -> str:
    """An event's time in UTC, or its raw ``ts_ms`` when no calendar holds it: the topic
    takes lines from any producer (a clock gone wrong, microseconds where milliseconds
    belong), and one such line must not stop the operator reading the rest."""
    try:
        return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return f"ts_ms={ts_ms}"


def audit_table(events: list[AuditEvent]) -> Table:
    table = Table(title="Audit log", title_justify="left")
    for column in ("time (UTC)", "event", "process", "who", "from", "what"):
        table.add_column(column)
    for ev in events:
        if ev.tenant:
            who = f"{ev.tenant}/{ev.key_id or '-'}"
        elif ev.key_fingerprint:
            who = f"key sha256:{ev.key_fingerprint}…"
        else:
            who = "-"
        origin = " ".join(part for part in (ev.client, ev.path) if part) or "-"
        what = ev.detail or ""
        if ev.model:
            what = f"{what} ({ev.model})" if what else ev.model
        if ev.config_sha256:
            what = f"config sha256:{ev.config_sha256[:12]}…"
        kind = ev.kind if ev.repeats == 1 else f"{ev.kind} (x{ev.repeats})"
        cells = (when(ev.ts_ms), kind, f"{ev.role} {ev.instance}", who, origin, what)
        table.add_row(*(shown(cell) for cell in cells))  # data, never markup or controls
    return table


def run(bootstrap: str, topic: str, kind: str | None, last: int) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # piped to a file or a pager: every column whole
    read = asyncio.run(read_topic(bootstrap, topic, 1, AuditEvent))
    if read.unreadable:
        console.print(
            f"[yellow]{read.unreadable} unreadable events on {escape(topic)} skipped[/yellow]"
        )
    events = read.events
    if kind:
        events = [e for e in events if e.kind == kind]
    events = sorted(events, key=lambda e: e.ts_ms)[-last:] if last > 0 else events
    if not events:
        console.print(escape(f"no audit events on {topic}" + (f" of kind {kind}" if kind else "")))
        return
    console.print(audit_table(events))
