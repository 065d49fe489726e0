"""Process settings: the one place that reads the environment (prefix ``RELAY_``)."""

from __future__ import annotations

import contextlib
import hmac
import re
import shlex
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.batches import COMPLETION_WINDOW_S, EXPIRY_GRACE_S

# A host (a name, an IPv4 address or an IPv6 one in brackets) and a port, as aiokafka
# reads them; the port may be left out (9092).
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.%\w]+\]|[\w.-]+)(?::(?P<port>\d{1,5}))?")


def _host_port(server: str) -> bool:
    """Whether ``server`` is one Kafka address aiokafka can connect to."""
    with contextlib.suppress(OSError):
        socket.inet_pton(socket.AF_INET6, server)  # a bare IPv6 address: port 9092
        return True
    found = _HOST_PORT.fullmatch(server)
    return found is not None and 1 <= int(found["port"] or 9092) <= 65535


def _unset_if_empty(value: object) -> object:
    """An empty variable (compose's ``${RELAY_X:-}``) means unset, not a bad number."""
    return None if isinstance(value, str) and not value.strip() else value


LogLevel = Annotated[
    Literal["critical", "error", "warning", "info", "debug"],
    BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v),
]


class Settings(BaseSettings):
    """Everything a process needs that is not in the YAML config.

    ``kafka_bootstrap`` empty means: use the embedded broker that ``relay broker`` /
    ``relay up`` started (its address is written to ``data_dir/broker.addr``).
    """

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")

    config: Path = Path("relay.example.yaml")
    # How often a gateway looks at the config file for relay keys added or removed (a key
    # removed is refused by every replica this long after, no restart); 0: never, but on
    # SIGHUP.  Everything else in the file is taken at start only.
    config_reload_s: float = Field(5.0, ge=0, allow_inf_nan=False)
    data_dir: Path = Path("var")
    kafka_bootstrap: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The Batch API's files, batches and results and the batch lane's journal: data that
    # must not be evicted, unlike cached answers.  Unset: the cache's Redis (fine while it
    # evicts nothing; a cache Redis run with an LRU policy should not hold them).
    store_redis_url: str = ""
    topic_prefix: str = "relay"
    # Replicas of each topic the relay creates; unset (or empty): as many as the cluster
    # has brokers, up to 3 (1 on the embedded broker).  Topics that exist keep theirs.
    topic_replication: Annotated[int | None, BeforeValidator(_unset_if_empty)] = Field(None, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    instance_id: str = ""
    default_timeout_s: float = Field(120.0, gt=0)
    # The worker's Prometheus /metrics, on `host`; 0: off.
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    # When set, /metrics (gateway and worker) asks for `Authorization: Bearer <token>`:
    # it names every tenant and its spend, so a public gateway port should not show it.
    metrics_token: SecretStr | None = None
    # The gateway's address as clients reach it (behind a TLS proxy, say: https://…/relay),
    # for the absolute URLs it hands out (a message batch's results_url); unset: the
    # address each request came to.
    public_url: str = ""
    log_level: LogLevel = "warning"  # of worker and gateway
    demo_key: str = "rk-demo-relay-station-local"
    # How long L2 keeps an answer past its TTL (cache_only).
    cache_stale_s: float = Field(3600.0, ge=0)
    # Workers sharing the RPM/TPM limits: each enforces limit / workers.
    workers: int = Field(1, ge=1)
    # With no worker in the requests consumer group for this long, the gateway answers 503
    # at once instead of queueing requests nobody takes (cache hits are still served).
    worker_grace_s: float = Field(15.0, ge=0)
    # Request bodies above this are refused with 413 before they are read (32 MiB, as
    # Anthropic's Messages API; an image-heavy chat rarely comes near it).
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)
    # Requests refused for a missing or unknown relay key, per client address and minute,
    # before that address gets 429 instead of 401 (0: no limit).
    auth_refusals_per_minute: int = Field(30, ge=0)
    # How long a stopping worker lets the requests it already took finish (SIGTERM).
    worker_drain_s: float = Field(30.0, ge=0)
    # How long a stopping gateway lets its open answers finish (a stream runs up to its
    # deadline) before it cuts them, which sends their cancel notices; its shutdown (the
    # ledger's lines sent or spilled) runs after.  Whoever stops it must wait longer:
    # `relay up` and compose give it 40 s.  Whole seconds: uvicorn takes an int.
    gateway_drain_s: int = Field(20, ge=0)
    # How long the Batch API keeps uploaded files, batches and their results (from their
    # last write); at least a batch's window and its grace, or it would vanish mid-run.
    batch_retention_s: int = 30 * 24 * 3600
    # How many bytes of Batch API uploads and message batches' requests each tenant may
    # keep in the store at once (a tenant's `batch_store_bytes` in the config overrides
    # it); past it an upload or a message batch is refused, 400, until some are deleted or
    # expire.  The store never evicts: without a limit one tenant could fill it, and every
    # tenant's uploads and results would wait.  0: no limit.
    batch_store_bytes: int = Field(1024**3, ge=0)
    # JVM options of the embedded broker, replacing its defaults (serial GC, the JVM's
    # tiered JIT), e.g. "-XX:+UseSerialGC -XX:TieredStopAtLevel=1" for a broker that is
    # ready sooner but spends more CPU per message once warm.
    kafka_jvm_opts: str | None = None

    @field_validator("data_dir")
    @classmethod
    def _a_directory(cls, path: Path) -> Path:
        for place in (path, *path.parents):  # the nearest part that exists
            try:
                exists = place.exists()
            except OSError as exc:  # a part of it that may not be looked into
                raise ValueError(f"{place}: {exc.strerror}") from None
            if exists:
                if not place.is_dir():
                    raise ValueError(f"{place} is a file; give a directory (made if missing)")
                break
        return path

    @field_validator("kafka_bootstrap")
    @classmethod
    def _host_ports(cls, servers: str) -> str:
        # Refused here, as one line: aiokafka would raise a bare ValueError (a port that
        # is no number) or OverflowError (one past 65535) from deep inside a connect.
        servers = servers.strip()
        for server in servers.split(",") if servers else ():
            if not _host_port(server.strip()):
                raise ValueError(
                    f"{server.strip()!r} is not host:port (a port from 1 to 65535), as in "
                    "127.0.0.1:9092; several are separated by commas"
                )
        return servers

    @field_validator("batch_retention_s")
    @classmethod
    def _outlives_a_batch(cls, seconds: int) -> int:
        least = COMPLETION_WINDOW_S + EXPIRY_GRACE_S
        if seconds < least:
            raise ValueError(
                f"must be at least {least} s (a batch's {COMPLETION_WINDOW_S // 3600} h "
                f"window and {EXPIRY_GRACE_S} s grace), or a batch still running would be "
                f"lost: got {seconds}"
            )
        return seconds

    @field_validator("kafka_jvm_opts")
    @classmethod
    def _splits(cls, opts: str | None) -> str | None:
        if opts is not None:
            try:
                shlex.split(opts)
            except ValueError as exc:  # "No closing quotation"
                raise ValueError(f"cannot split {opts!r} as a shell would: {exc}") from None
        return opts

    def jvm_opts(self) -> list[str] | None:
        """``kafka_jvm_opts`` split as a shell would, or None for the broker's defaults."""
        return shlex.split(self.kafka_jvm_opts) if self.kafka_jvm_opts is not None else None

    def scrape_allowed(self, authorization: str | None) -> bool:
        """Whether a scrape may read /metrics: always without ``RELAY_METRICS_TOKEN``, else
        only with ``Authorization: Bearer <token>`` (compared in constant time)."""
        if self.metrics_token is None or not self.metrics_token.get_secret_value():
            return True  # unset, or set empty (compose's ${RELAY_METRICS_TOKEN:-}): open
        want = f"Bearer {self.metrics_token.get_secret_value()}".encode()
        return hmac.compare_digest((authorization or "").encode(), want)

    def store_redis(self) -> str:
        """Where the Batch API's store and the lane journal live."""
        return self.store_redis_url or self.redis_url

    def spill_dir(self) -> Path:
        """Where ledger and audit lines the broker could not take wait to be sent again."""
        return self.data_dir / "spill"

    def broker_addr_file(self) -> Path:
        return self.data_dir / "broker.addr"

    def bootstrap(self) -> str:
        """The Kafka to use: the configured one, else the embedded broker's address."""
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        addr = self.broker_addr_file()
        if addr.exists():
            return addr.read_text().strip()
        raise RuntimeError(
            f"no Kafka: set RELAY_KAFKA_BOOTSTRAP=host:port to use an existing Kafka, "
            f"or start the embedded one with `relay broker` (it writes {addr})"
        )
