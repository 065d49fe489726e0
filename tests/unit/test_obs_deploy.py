"""The dashboard, the scrape config and the compose file say what operators need to know,
and the worker's cost series are there from the start."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

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


def test_latency_is_per_endpoint_and_realtime() -> None:
    """Streams and file uploads would otherwise set every endpoint's p99, and background
    work waiting hours for its vendor batch the chat endpoint's."""
    panel = next(p for title, p in _panels().items() if "latency p50" in title.lower())
    assert panel["targets"]
    for target in panel["targets"]:
        assert "sum by (le, endpoint)" in target["expr"]
        assert 'priority="realtime"' in target["expr"]
        assert "{{endpoint}}" in target["legendFormat"]


def test_time_to_first_byte_sits_beside_latency_per_generation_endpoint() -> None:
    """Generations are judged by when their answer starts (RelaySlowGenerations): the
    panel shows what the alert reads, realtime and per endpoint, next to the latency."""
    panels = _panels()
    panel = panels["Time to first byte p50 / p95 / p99 by generation endpoint (realtime)"]
    latency = next(p for title, p in panels.items() if "latency p50" in title.lower())
    assert panel["gridPos"]["y"] == latency["gridPos"]["y"]
    assert [t["legendFormat"].split()[0] for t in panel["targets"]] == ["p50", "p95", "p99"]
    for target in panel["targets"]:
        assert "relay_request_ttfb_seconds_bucket" in target["expr"]
        assert "sum by (le, endpoint)" in target["expr"]
        assert 'priority="realtime"' in target["expr"]
        assert "chat/completions|messages|responses|completions" in target["expr"]
        assert "{{endpoint}}" in target["legendFormat"]


def test_the_error_ratio_stat_counts_what_the_alert_counts() -> None:
    """Its red is the critical alert's threshold: it must measure the same ratio."""
    stat = next(p for title, p in _panels().items() if title.startswith("Error ratio"))
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    [alert] = [
        r for g in rules["groups"] for r in g["rules"] if r["alert"] == "RelayHighErrorRatio"
    ]
    ratio = alert["expr"].split(" > 0.05")[0].strip()
    assert stat["targets"][0]["expr"] == ratio.replace("[5m]", "[$__rate_interval]")


def _uncommented(text: str, marker: str) -> str:
    """``text`` with the commented lines that hold ``marker``, or follow one at a deeper
    indent, uncommented in place, as an operator following the comments would."""
    out, depth = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        opens = stripped.startswith("# ") and marker in stripped
        if opens or (depth is not None and stripped.startswith("# ") and indent == depth):
            nested = stripped[2:]
            if opens and depth is None:
                depth = indent
            out.append(" " * indent + nested)
            continue
        depth = None
        out.append(line)
    return "\n".join(out)


def test_the_commented_scrape_token_config_works_once_uncommented() -> None:
    """With RELAY_METRICS_TOKEN set, every scrape without the token gets 401 and the down
    and no-traffic alerts fire: the shipped comments, uncommented, must make Prometheus
    send exactly what the relay compares, from a file compose mounts."""
    from schemas.settings import Settings

    prom_text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert yaml.safe_load(prom_text) == yaml.safe_load(_uncommented(prom_text, "nothing"))
    prom = yaml.safe_load(_uncommented(prom_text, "authorization:"))
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert set(jobs) == {"relay-gateway", "relay-worker"}
    files = set()
    for name, job in jobs.items():
        auth = job["authorization"]
        assert set(auth) == {"type", "credentials_file"}, name
        files.add(auth["credentials_file"])
        # Prometheus sends "<type> <file's content, trimmed>"; the relay wants exactly this.
        token = "t0ken"
        assert Settings(metrics_token=token).scrape_allowed(f"{auth['type']} {token}"), name
    assert files == {"/etc/prometheus/relay-metrics-token"}

    compose_text = (ROOT / "docker-compose.yml").read_text()
    plain = yaml.safe_load(compose_text)["services"]["prometheus"]["volumes"]
    assert not any("relay-metrics-token" in v for v in plain), "off until uncommented"
    opened = yaml.safe_load(_uncommented(compose_text, "relay-metrics-token:/etc"))
    mounts = {v.split(":")[1]: v for v in opened["services"]["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/relay-metrics-token"].endswith(":ro")
    source = mounts["/etc/prometheus/relay-metrics-token"].split(":")[0]
    assert source.startswith("./var/"), "var/ is git-ignored: the token stays out of git"
    assert "/var/" in (ROOT / ".gitignore").read_text().split()
    for text in (compose_text, (DEPLOY / "README.md").read_text()):
        assert "relay-metrics-token" in text and "RELAY_METRICS_TOKEN" in text


def test_the_worker_starts_the_unknown_cost_series_at_zero() -> None:
    """A line naming a tenant or alias the config does not name counts under ``unknown``:
    those series start at 0 with the process too, as every tenant's do, so rate() and
    increase() see their first line."""
    from prometheus_client import REGISTRY

    from streams import metrics

    metrics.start_cost_series([("obs-tenant", ["obs-alias"])])
    value = REGISTRY.get_sample_value
    for tenant, alias in [
        ("obs-tenant", "obs-alias"),
        ("obs-tenant", "unknown"),  # its line for an alias the config lacks
        ("unknown", "obs-alias"),  # a made-up tenant's line for a configured alias
        ("unknown", "unknown"),
    ]:
        labels = {"tenant": tenant, "alias": alias}
        assert value("relay_worker_cost_usd_total", labels) is not None, labels
    assert value("relay_worker_cost_usd_total", {"tenant": "unknown", "alias": "obs-alias"}) == 0
    for name in ("relay_worker_saved_usd_total", "relay_worker_direct_usd_total"):
        assert value(name, {"tenant": "unknown"}) is not None, name
        assert value(name, {"tenant": "obs-tenant"}) == 0, name


def test_the_readme_runs_report_and_audit_where_the_compose_kafka_is() -> None:
    """Compose neither publishes Kafka nor advertises a name the host knows: the report
    and the audit log run in a relay container, with options the commands take, and the
    chart is copied out from where it was written."""
    from typer.testing import CliRunner

    from cli.main import app

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    text = (DEPLOY / "README.md").read_text()
    runs = re.findall(r"^docker compose exec (?:-T )?(\S+) relay (.+?)(?:\s+#.*)?$", text, re.M)
    assert {args.split()[0] for _, args in runs} == {"report", "audit"}
    for service, args in runs:
        assert services[service]["command"][0] in {"gateway", "worker"}, service
        argv = args.split(">")[0].split()
        result = CliRunner().invoke(app, [*argv, "--help"])
        assert result.exit_code == 0, (args, result.output)
    charts = {m for _, args in runs for m in re.findall(r"--chart (\S+)", args)}
    copied = re.findall(r"^docker compose cp (\S+?):(\S+) \.", text, re.M)
    assert charts and {path for _, path in copied} == charts


def test_lines_not_sent_to_the_broker_show_beside_the_money() -> None:
    """The ledger is the billing record: its lines spilled, lost or refused show in the
    Money row, by kind and outcome, as the alerts on them count them."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "relay-station.json").read_text())
    rows = sorted(
        (p["gridPos"]["y"], p["title"]) for p in dashboard["panels"] if p["type"] == "row"
    )
    panel = next(p for p in _panels().values() if "relay_unsent_lines_total" in str(_exprs(p)))
    row = max((y, title) for y, title in rows if y <= panel["gridPos"]["y"])[1]
    assert row == "Money"
    [expr] = _exprs(panel)
    assert expr.startswith("sum by (kind, outcome) (increase(relay_unsent_lines_total[")
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert alerts["RelayLedgerLinesLost"]["labels"]["severity"] == "critical"
    assert 'kind="usage",outcome=~"lost|refused"' in alerts["RelayLedgerLinesLost"]["expr"]
    assert alerts["RelayLinesUnsent"]["labels"]["severity"] == "warning"
