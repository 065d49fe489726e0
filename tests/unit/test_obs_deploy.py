"""The dashboard, the scrape config and the compose file say what operators need to know."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _panels() -> dict[str, dict[str, Any]]:
    """Every dashboard panel by title, those nested in collapsed rows included."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "relay-station.json").read_text())
    out = {}
    for panel in dashboard["panels"]:
        for one in [panel, *panel.get("panels", [])]:
            out[one["title"]] = one
    return out


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel.get("targets", [])]


def test_vendor_calls_are_the_workers_real_calls() -> None:
    """The gateway counts answers (each caller of a window-batched call, no fallback or
    retry): only the workers' counter is what vendors are called, and billed, for."""
    panels = _panels()
    calls = [p for title, p in panels.items() if title.startswith("Vendor calls by vendor / model")]
    assert len(calls) == 1
    assert all("relay_worker_vendor_calls_total" in e for e in _exprs(calls[0]))
    assert "real calls" in calls[0]["title"]
    answers = [
        p for p in panels.values() if any("relay_vendor_calls_total" in e for e in _exprs(p))
    ]
    assert answers and all("Answers" in p["title"] for p in answers)


def test_save_rate_may_go_below_zero() -> None:
    """A fallback to a pricier model costs more than direct: a floor at 0 would hide it."""
    defaults = _panels()["SaveRate by tenant"]["fieldConfig"]["defaults"]
    assert "min" not in defaults


def test_latency_is_per_endpoint() -> None:
    """Streams and file uploads would otherwise set every endpoint's p99."""
    panel = next(p for title, p in _panels().items() if title.startswith("Latency p50"))
    assert panel["targets"]
    for target in panel["targets"]:
        assert "sum by (le, endpoint)" in target["expr"]
        assert "{{endpoint}}" in target["legendFormat"]
