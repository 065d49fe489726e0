"""Write the JSON Schema of every topic's messages to schemas/jsonschema/ (`make schemas`).

External producers validate against these; ``tests/unit/test_jsonschema.py`` fails when a
model changed and the files were not regenerated.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.envelope import (
    AuditEvent,
    DeadLetter,
    HealthBatch,
    ReplyEvent,
    RequestEnvelope,
    UsageEvent,
)

OUT = Path(__file__).with_name("jsonschema")

TOPIC_MESSAGES: dict[str, type[BaseModel]] = {
    "requests": RequestEnvelope,
    "replies": ReplyEvent,
    "batch-results": ReplyEvent,
    "usage": UsageEvent,
    "health": HealthBatch,
    "dead-letter": DeadLetter,
    "audit": AuditEvent,
}


def render() -> dict[str, str]:
    """File name -> JSON text, for every topic."""
    return {
        f"{topic}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        + "\n"
        for topic, model in TOPIC_MESSAGES.items()
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
