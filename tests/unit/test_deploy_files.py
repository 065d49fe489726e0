"""The deploy files keep the production shape and only chart metrics the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway import metrics
from streams import metrics as worker_metrics
from streams import producers

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Looks like a real vendor key (OpenAI/Anthropic `sk-...`, Google `AIza...`).
VENDOR_KEY = re.compile(r"\b(sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{20,})")
METRIC_REF = re.compile(r"\b(relay_[a-z0-9_]+)\b")
# The series each metric type exposes; prometheus_client strips `_total` from a Counter's name.
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}

Service = dict[str, Any]


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _env(service: Service) -> dict[str, str]:
    """A service's environment as a dict, whichever of compose's two spellings it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _by_role(services: dict[str, Service], role: str) -> dict[str, Service]:
    """The services running `relay <role>`."""
    return {
        name: svc
        for name, svc in services.items()
        if isinstance(svc.get("command"), list) and svc["command"][:1] == [role]
    }


def _families() -> dict[str, str]:
    """The gateway's and the worker's metric families (and the unsent-lines counter of the
    producer both write with): name (as prometheus_client stores it) to type, the
    worker's scrape-time gauges included."""
    wrapped = {
        family.name: family.type
        for module in (metrics, worker_metrics, producers)
        for obj in vars(module).values()
        if isinstance(obj, MetricWrapperBase)
        for family in obj.describe()
    }
    state = worker_metrics.WorkerState(lambda: 0, lambda: 0, lambda: {})
    return wrapped | {family.name: family.type for family in state.collect()}


def _exported_series() -> set[str]:
    """Every series name the gateway's and workers' metrics can expose on /metrics."""
    return {name + suffix for name, kind in _families().items() for suffix in SERIES_SUFFIXES[kind]}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    return compose["services"]


@pytest.fixture(scope="module")
def series() -> set[str]:
    return _exported_series()


def test_exported_series_follow_prometheus_client_naming(series: set[str]) -> None:
    expected = {"relay_requests_total", "relay_request_latency_seconds_bucket", "relay_redis_up"}
    assert expected <= series
    assert "relay_requests_total_total" not in series


def test_kafka_is_the_official_image_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = _env(kafka)
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert {"PLAINTEXT://:9092", "CONTROLLER://:9093"} <= set(env["KAFKA_LISTENERS"].split(","))
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert "kafka-broker-api-versions.sh" in str(kafka["healthcheck"]["test"])
    volume = kafka["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "Kafka data lives on a named volume"


def test_redis_is_there_with_a_healthcheck(services: dict[str, Service]) -> None:
    assert services["redis"]["image"].startswith("redis:7")
    assert "healthcheck" in services["redis"]


def test_relay_roles_and_replicas(services: dict[str, Service]) -> None:
    gateways = _by_role(services, "gateway")
    assert len(gateways) == 2
    assert len(_by_role(services, "worker")) == 2
    assert len(_by_role(services, "simulator")) == 1
    ids = {_env(svc)["RELAY_INSTANCE_ID"] for svc in gateways.values()}
    assert len(ids) == 2, "each gateway reads its own reply topic"
    host_ports = {port.rsplit(":", 2)[-2] for svc in gateways.values() for port in svc["ports"]}
    assert host_ports == {"8001", "8002"}


def test_published_ports_are_on_the_host_s_loopback_unless_told(
    services: dict[str, Service],
) -> None:
    """Gateways take the demo key and Prometheus and Grafana show every tenant's spend:
    none is published beyond the host unless its own variable says so (Prometheus, which
    asks for no login, apart from Grafana, which does)."""
    binds = {}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            bind = re.fullmatch(r"\$\{([A-Z]+_BIND):-127\.0\.0\.1\}:\d+:\d+", port)
            assert bind, (name, port)
            binds[name] = bind.group(1)
    assert binds == {
        "gateway-1": "RELAY_BIND",
        "gateway-2": "RELAY_BIND",
        "prometheus": "PROMETHEUS_BIND",
        "grafana": "GRAFANA_BIND",
    }
    readme = (DEPLOY / "README.md").read_text()
    assert all(f"`{var}" in readme for var in binds.values())


@pytest.mark.parametrize("role", ["gateway", "worker"])
def test_relay_services_point_at_the_compose_kafka_and_redis(
    services: dict[str, Service], role: str
) -> None:
    for name, svc in _by_role(services, role).items():
        env = _env(svc)
        assert env["RELAY_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env["RELAY_REDIS_URL"] == "redis://redis:6379/0", name
        assert env["RELAY_STORE_REDIS_URL"] == "redis://redis-store:6379/0", name
        # The config's directory is mounted (a file mount misses an edit that replaces
        # the file, and gateways re-read it for relay keys).
        mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"]}
        folder, _, file = env["RELAY_CONFIG"].rpartition("/")
        assert f"{mounts[folder]}/{file}" == "./deploy/relay.compose.yaml", name
        for dep in ("kafka", "redis", "redis-store"):
            assert svc["depends_on"][dep]["condition"] == "service_healthy", name


def test_the_cache_may_evict_and_the_batch_store_never(services: dict[str, Service]) -> None:
    """One tenant's uploads or large answers must not evict another tenant's batches."""
    cache = " ".join(services["redis"]["command"])
    store = " ".join(services["redis-store"]["command"])
    assert "--maxmemory-policy allkeys-lru" in cache
    assert "--maxmemory-policy noeviction" in store and "--appendonly yes" in store
    assert services["redis-store"]["volumes"] == ["redis-store-data:/data"]


def test_no_vendor_key_is_written_down(services: dict[str, Service]) -> None:
    texts = [ROOT / "docker-compose.yml", DEPLOY / "relay.compose.yaml"]
    for path in texts:
        assert not VENDOR_KEY.search(path.read_text()), path
    for name, svc in services.items():
        for var, value in _env(svc).items():
            if var.startswith("RELAY_") and var.endswith("_KEY"):
                assert value.startswith("${"), f"{name}: {var} must come from the host"


def test_compose_relay_config_loads_and_calls_the_simulator_service() -> None:
    from schemas.config import load_config

    config = load_config(DEPLOY / "relay.compose.yaml")
    assert config.simulator is None, "compose runs the simulator as its own service"
    for name, vendor in config.vendors.items():
        assert vendor.base_url.startswith("http://simulator:9100"), name


def test_prometheus_scrapes_every_gateway_and_worker(services: dict[str, Service]) -> None:
    prom = _load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {
        job["job_name"]: {t for group in job["static_configs"] for t in group["targets"]}
        for job in prom["scrape_configs"]
    }
    assert targets["relay-gateway"] == {f"{name}:8000" for name in _by_role(services, "gateway")}
    workers = _by_role(services, "worker")
    assert targets["relay-worker"] == {f"{name}:9464" for name in workers}
    for name, worker in workers.items():
        env = _env(worker)
        assert env["RELAY_WORKER_METRICS_PORT"] == "9464", name
        assert env["RELAY_HOST"] == "0.0.0.0", name
    mounted = {m.split(":")[1] for m in services["prometheus"]["volumes"]}
    assert set(prom["rule_files"]) <= mounted


def test_alert_rules_are_complete_and_use_known_metrics(series: set[str]) -> None:
    groups = _load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules
    for rule in rules:
        assert rule["alert"] and rule["expr"].strip(), rule
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert set(METRIC_REF.findall(rule["expr"])) <= series, rule["alert"]
    referenced = {name for rule in rules for name in METRIC_REF.findall(rule["expr"])}
    assert {
        "relay_errors_total",
        "relay_request_latency_seconds_bucket",
        "relay_redis_up",
        "relay_cost_usd_total",
        "relay_requests_total",
    } <= referenced


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_dashboard_charts_only_exported_metrics(series: set[str]) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "relay-station.json").read_text())
    datasource = _load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uid = datasource["datasources"][0]["uid"]
    charted: set[str] = set()
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(METRIC_REF.findall(target["expr"]))
            assert names, f"{panel['title']}: {target['expr']}"
            assert names <= series, f"{panel['title']}: unknown {names - series}"
            charted |= names
    for family in _families():
        assert any(name.startswith(family) for name in charted), f"{family} is not charted"


def test_every_relay_variable_compose_sets_is_a_setting(services: dict[str, Service]) -> None:
    """Settings ignore unknown RELAY_ variables: a misspelt one would silently do nothing.
    (RELAY_SIM_KEY is the simulator's key, named by the config's `api_key_env`.)"""
    from schemas.settings import Settings

    known = {f"RELAY_{name.upper()}" for name in Settings.model_fields} | {"RELAY_SIM_KEY"}
    for name, svc in services.items():
        unknown = {k for k in _env(svc) if k.startswith("RELAY_")} - known
        assert not unknown, f"{name}: {sorted(unknown)}"
    assert "RELAY_METRICS_TOKEN" in _env(_by_role(services, "gateway")["gateway-1"])


def test_the_image_copies_every_package_the_distribution_ships() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert copied == shipped


def _seconds(duration: str) -> float:
    """A compose duration (``1m30s``, ``40s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


@pytest.mark.parametrize("role", ["gateway", "worker"])
def test_relay_services_get_their_drain_and_shutdown_before_docker_kills_them(
    services: dict[str, Service], role: str
) -> None:
    """Docker's default 10 s would SIGKILL a gateway with a stream open (or a worker with
    a call in flight) before its shutdown runs: open streams cut with no error and no
    cancel notice, ledger and audit lines neither sent nor spilled."""
    from schemas.settings import Settings
    from streams.stopping import STOP_GRACE_S

    drain = Settings.model_fields[f"{role}_drain_s"].default
    # The drain, then cut answers and ledger lines (a STOP_GRACE_S each), and some room.
    needed = drain + 2 * STOP_GRACE_S + 5
    for name, svc in _by_role(services, role).items():
        assert "stop_grace_period" in svc, name
        assert _seconds(svc["stop_grace_period"]) >= needed, name


def _default(value: str) -> str:
    """What a compose value is when the shell and .env leave its variable unset."""
    unset = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return unset.group(1) if unset else value


def test_grafana_asks_for_a_login_unless_told(services: dict[str, Service]) -> None:
    """Anonymous viewing shows every tenant's spend to anyone who reaches port 3000,
    whatever the admin password: off by default, so publishing Grafana keeps a login."""
    env = _env(services["grafana"])
    assert _default(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "false"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS:-false}"
    assert "GRAFANA_ANONYMOUS=true" in (DEPLOY / "README.md").read_text()


def test_the_readme_s_publishing_steps_guard_what_they_publish() -> None:
    """Publishing Prometheus needs a login in front (it has none), and an admin password
    set after Grafana's first start never reaches it: the steps must say both."""
    text = " ".join((DEPLOY / "README.md").read_text().split())
    assert "Prometheus asks nobody for a login" in text
    assert "reverse proxy that asks for a login" in text
    assert "read only when Grafana first creates its database" in text
    assert "grafana cli admin reset-admin-password" in text
    assert "anonymous viewer" not in text
