"""The producer for lines on nobody's critical path: ledger, audit and dead letters.

Gateway and worker both write them this way.  They wait up to ``LEDGER_LINGER_MS`` to
share a produce request: the spend agent folds the ledger every 250 ms anyway, and at 60
requests/s one produce request per line cost the broker and the worker (which reads the
ledger back) ~2 ms of CPU per request more.  Idempotent, so a send retried after a
timeout is not a second ledger line.
"""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

LEDGER_LINGER_MS = 250


def background_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=LEDGER_LINGER_MS,
        acks="all",
        enable_idempotence=True,
    )
