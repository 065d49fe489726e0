"""The `relay` command: run the whole relay, or each of its parts alone."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from schemas.config import ConfigError, RelayConfig, hash_key, load_config
from schemas.settings import Settings

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"  # as the worker's
app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (default: RELAY_CONFIG)")
]


def _settings(config: Path | None) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors():
            name = "RELAY_" + "_".join(str(p) for p in err["loc"]).upper()
            msg = str(err["msg"]).removeprefix("Value error, ")  # pydantic's, not ours
            console.print(f"[red]environment: {name}: {escape(msg)}[/red]")
        raise typer.Exit(2) from None
    if config is not None:
        settings.config = config
    return settings


@contextmanager
def _on_kafka(bootstrap: str, missing: str = "nothing there yet") -> Iterator[None]:
    """Kafka failing the command as one line: unreachable, or the topic to read absent
    (``missing`` says what that means)."""
    from aiokafka.errors import KafkaError

    from cli.report import TopicMissing
    from streams.topics import TopicsRefused

    try:
        yield
    except TopicsRefused as exc:  # the broker answered, and said no: its words, not a trace
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    except TopicMissing as exc:
        console.print(
            f"[red]{escape(str(exc))}: {missing} (or RELAY_TOPIC_PREFIX names another)[/red]"
        )
        raise typer.Exit(1) from None
    except KafkaError as exc:
        console.print(
            f"[red]cannot reach Kafka at {bootstrap} ({type(exc).__name__}); start it with "
            "`relay broker`, or set RELAY_KAFKA_BOOTSTRAP to a Kafka that runs[/red]"
        )
        raise typer.Exit(1) from None


def _make_topics(settings: Settings, bootstrap: str) -> None:
    """Every topic the relay uses, made before any part starts (the broker's, a worker's)."""
    from streams.topics import Topics, ensure_topics

    topics = Topics(settings.topic_prefix).all()
    asyncio.run(ensure_topics(bootstrap, topics, replication=settings.topic_replication))


def _bootstrap(settings: Settings) -> str:
    try:
        return settings.bootstrap()
    except RuntimeError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None


def _config(settings: Settings) -> RelayConfig:
    try:
        return load_config(settings.config)
    except ConfigError as exc:
        console.print(f"[red]bad config[/red]\n{escape(str(exc))}")
        raise typer.Exit(2) from None


@app.command()
def broker(
    started_by: Annotated[
        str, typer.Option(hidden=True, help="who starts it: `relay up` says it is")
    ] = "relay broker",
) -> None:
    """Run the embedded single-node Apache Kafka (KRaft) until stopped."""
    from aiokafka.errors import KafkaError

    from cli.supervisor import STOP_SIGNALS, broker_owner_file
    from streams.broker import BrokerError, EmbeddedKafka
    from streams.topics import TopicsRefused

    settings = _settings(None)
    kafka = EmbeddedKafka(settings.data_dir / "kafka", jvm_opts=settings.jvm_opts())

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # any stop signal while starting: stop Java, as on Ctrl-C

    # Java runs in its own session: a closed terminal's SIGHUP must stop it through here.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    try:
        with console.status("starting Apache Kafka (first run fetches it with mvn)…"):
            bootstrap = kafka.start()
            _make_topics(settings, bootstrap)
    except BrokerError as exc:
        console.print(f"[red]broker: {escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    except (KafkaError, TopicsRefused) as exc:
        kafka.stop()
        console.print(f"[red]broker: Kafka started but took no topics: {escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        kafka.stop()  # Java runs in its own session: nobody else would stop it
        raise typer.Exit(130) from None
    # Who started it first, then where it is: a `relay up` that finds the address knows
    # whether the broker is a `relay broker` it may share, or another `relay up`'s.
    owner = broker_owner_file(settings)
    owner.write_text(started_by)
    settings.broker_addr_file().write_text(bootstrap)
    print(f"kafka: {bootstrap}", flush=True)
    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    while not stop["now"] and kafka.proc and kafka.proc.poll() is None:
        time.sleep(0.2)
    died = not stop["now"]
    kafka.stop()
    settings.broker_addr_file().unlink(missing_ok=True)
    owner.unlink(missing_ok=True)
    if died:
        code = kafka.proc.returncode if kafka.proc else None
        log = kafka.data_dir / "broker.log"
        console.print(f"[red]broker: Kafka exited on its own ({code}); see {log}[/red]")
        raise typer.Exit(1)


@app.command()
def worker(config: ConfigOpt = None) -> None:
    """Run a Faust worker: coalescing, routing, dispatch, metering."""
    import mode.loop
    from faust.worker import Worker

    # uvloop, as uvicorn gives the gateway: asyncio's own loop costs the worker about a
    # third more CPU per request (its consumer thread gets a uvloop loop too).
    mode.loop.use("uvloop")

    from streams.logs import quiet_repeats
    from streams.wiring import build_worker

    settings = _settings(config)
    cfg = _config(settings)
    bootstrap = _bootstrap(settings)
    with _on_kafka(bootstrap):
        _make_topics(settings, bootstrap)
    faust_app = build_worker(settings, cfg, bootstrap)
    quiet_repeats()  # a broker gone for a while: one line per kind of error, not sixty a second
    Worker(faust_app, loglevel=settings.log_level.upper(), quiet=True).execute_from_commandline()


@app.command()
def gateway(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="port")] = None,
) -> None:
    """Run the HTTP gateway (OpenAI- and Anthropic-compatible)."""
    import uvicorn

    from cli.report import reach
    from gateway.app import create_app
    from gateway.http_head import BoundedHead
    from streams.logs import quiet_repeats

    settings = _settings(config)
    cfg = _config(settings)
    bootstrap = _bootstrap(settings)
    with _on_kafka(bootstrap):
        asyncio.run(reach(bootstrap))
    fastapi_app = create_app(settings, cfg, bootstrap)
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format=LOG_FORMAT)
    quiet_repeats()
    uvicorn.run(
        fastapi_app,
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_level=level.lower(),
        access_log=False,  # one line per request would cost more CPU than a cache hit
        http=BoundedHead,  # request heads bounded in size and time, before any key check
        # Open answers get this long once stopped, then are cut: unbounded, a stream kept
        # the lifespan's shutdown (bus.stop: ledger lines sent or spilled, cancel
        # notices) from running before the supervisor's or Docker's SIGKILL.
        timeout_graceful_shutdown=settings.gateway_drain_s,
    )


@app.command()
def simulator(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 9100,
    latency_ms: Annotated[float, typer.Option(min=0, help="delay before the answer")] = 0.0,
    chunk_gap_ms: Annotated[float, typer.Option(min=0, help="delay between stream chunks")] = 0.0,
    error_rate: Annotated[
        float, typer.Option(min=0, max=1, help="fraction of calls answered 500")
    ] = 0.0,
    rate_429: Annotated[
        float, typer.Option(min=0, max=1, help="fraction of calls answered 429")
    ] = 0.0,
    api_key_env: Annotated[
        str | None, typer.Option(help="env var holding the key callers must send")
    ] = None,
) -> None:
    """Run the vendor simulator (OpenAI, Azure, Anthropic and Ollama wire formats)."""
    from simulator import SimConfig
    from simulator.app import serve

    try:
        config = SimConfig(
            latency_ms=latency_ms,
            chunk_gap_ms=chunk_gap_ms,
            error_rate=error_rate,
            rate_429=rate_429,
        )
    except ValidationError as exc:  # the simulator's own rules (the two rates' sum)
        raise typer.BadParameter(
            str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        ) from None
    key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not key:
        console.print(f"[yellow]simulator: {api_key_env} is not set; any key is accepted[/yellow]")
    serve(host, port, config.model_copy(update={"api_key": key}))


# The shortest key `relay hash-key` takes.  Keys are stored as a plain SHA-256, which a
# leaked config gives away at once for a short or common key (precomputed tables); 20
# random characters are over 110 bits.  The demo key (27) and made ones (35) pass.
MIN_KEY_CHARS = 20


@app.command("hash-key")
def hash_key_cmd(key: Annotated[str | None, typer.Argument()] = None) -> None:
    """Make a relay key (or hash a given one) and print the config line that admits it."""
    if key is None:
        key = f"rk-{secrets.token_urlsafe(24)}"
    elif not key.strip():  # `relay hash-key "$KEY"` with KEY unset: not a new key
        raise typer.BadParameter("the key is empty; give a key, or none to make one")
    elif key != key.strip():  # the gateway strips the header: this hash would admit no one
        raise typer.BadParameter(
            "the key has whitespace around it, which the gateway drops from the request "
            "header; give it without"
        )
    elif odd := next((c for c in key if not " " <= c <= "~"), None):
        raise typer.BadParameter(  # a header carries ASCII: no client could send it as hashed
            f"the key holds {odd!r}, which a request header cannot carry as it is; use "
            "visible ASCII characters"
        )
    elif len(key) < MIN_KEY_CHARS:
        raise typer.BadParameter(
            f"the key is {len(key)} characters, too short to be stored as a plain hash; "
            f"give one of at least {MIN_KEY_CHARS} random characters, or none to make one"
        )
    print(f"relay key: {key}")
    print(f"config:    {{id: my-key, sha256: {hash_key(key)}}}")


@app.command()
def report(
    by: Annotated[str, typer.Option(help="tenant, alias, tag, model or key")] = "tenant",
    chart: Annotated[
        Path | None, typer.Option(help="write cost over time to this PNG (or .svg, .pdf)")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="from this UTC date or time (2026-12-01, 2026-12-01T12:00) or span back (24h, 7d)"
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="up to (not including) this date, time or span back")
    ] = None,
) -> None:
    """Cost report from the ledger topic: cost, direct cost, SaveRate, where savings came from."""
    from cli.report import BeforeLedger, moment_ms, run
    from streams.topics import Topics

    now_ms = int(time.time() * 1000)
    bounds: dict[str, int | None] = {}
    for name, given in (("since", since), ("until", until)):
        try:
            bounds[name] = moment_ms(given, now_ms) if given else None
        except BeforeLedger as exc:
            raise typer.BadParameter(f"--{name}: {exc}") from None
        except ValueError:
            raise typer.BadParameter(
                f"--{name}: {given!r} is neither a date or time (2026-12-01T12:00) nor a span "
                "(30m, 24h, 7d)"
            ) from None

    if by not in ("tenant", "alias", "tag", "model", "key"):
        raise typer.BadParameter("--by must be tenant, alias, tag, model or key")
    if chart is not None:  # said before the ledger is read, not in a traceback after
        if chart.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise typer.BadParameter("--chart must name a .png, .svg or .pdf file")
        where = chart.resolve().parent
        if not where.is_dir():
            raise typer.BadParameter(f"--chart: no directory {where}")
        if chart.is_dir():
            raise typer.BadParameter(f"--chart: {chart} is a directory")
        if not os.access(where, os.W_OK) or (chart.exists() and not os.access(chart, os.W_OK)):
            raise typer.BadParameter(f"--chart: {chart} cannot be written here")
    settings = _settings(None)
    topics = Topics(settings.topic_prefix)
    usage, health = topics.usage, topics.health
    bootstrap = _bootstrap(settings)
    with _on_kafka(bootstrap, missing="no ledger yet"):
        run(
            bootstrap, usage.name, usage.partitions, by, chart, bounds["since"],
            bounds["until"], health=(health.name, health.partitions),
        )  # fmt: skip


@app.command()
def audit(
    kind: Annotated[
        str | None, typer.Option(help="only auth_failed, access_denied or started")
    ] = None,
    last: Annotated[int, typer.Option(min=0, help="the most recent N events (0: all)")] = 50,
) -> None:
    """The audit log: authentication failures, denied models, process starts."""
    from typing import get_args

    from cli.audit import run
    from schemas.envelope import AuditKind
    from streams.topics import Topics

    kinds = get_args(AuditKind)
    if kind is not None and kind not in kinds:
        raise typer.BadParameter(f"--kind must be one of {', '.join(kinds)}")
    settings = _settings(None)
    bootstrap = _bootstrap(settings)
    with _on_kafka(bootstrap, missing="no audit log yet"):
        run(bootstrap, Topics(settings.topic_prefix).audit.name, kind, last)


@app.command()
def up(config: ConfigOpt = None) -> None:
    """Start everything on the embedded defaults: broker, worker, gateway, simulator."""
    from cli.supervisor import Supervisor

    settings = _settings(config)
    cfg = _config(settings)
    code = Supervisor(settings, cfg).run()
    if code:
        raise typer.Exit(code)


if __name__ == "__main__":
    app()
