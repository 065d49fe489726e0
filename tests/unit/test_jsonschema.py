"""The checked-in JSON Schemas of the topics match the models (`make schemas` rewrites)."""

from schemas.generate import OUT, render


def test_topic_schemas_are_current():
    for name, text in render().items():
        path = OUT / name
        assert path.exists(), f"{path} missing: run `make schemas`"
        assert path.read_text() == text, f"{path} is stale: run `make schemas`"


def test_request_schema_requires_routing_fields():
    import json

    schema = json.loads((OUT / "requests.schema.json").read_text())
    assert {"correlation_id", "reply_to", "prompt_hash", "deadline_ms"} <= set(schema["required"])
