"""Requests and answers over Kafka's 1 MB default pass through whole: images as base64
make large prompts, and a few hundred wide embeddings make a large answer."""

from __future__ import annotations

import uuid

import openai

from tests.support.stack import DEMO_KEY, Simulator, Stack


async def test_a_prompt_and_an_answer_of_megabytes_pass_both_hops(
    relay: Stack, simulator: Simulator
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{relay.url}/v1", api_key=DEMO_KEY, max_retries=0)
    marker = uuid.uuid4().hex

    long_prompt = f"{marker} " + "lorem ipsum dolor sit amet " * 80_000  # ~2.2 MB
    chat = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": long_prompt}],
        extra_headers={"x-relay-cache": "bypass"},
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.prompt_tokens > 500_000

    inputs = [f"{marker} line {i}" for i in range(120)]
    wide = await client.embeddings.create(
        model="text-embedding-3-small",
        input=inputs,
        dimensions=3072,
        encoding_format="float",
        extra_headers={"x-relay-cache": "bypass"},
    )  # ~3.5 MB of JSON in the reply
    assert [d.index for d in wide.data] == list(range(120))
    assert all(len(d.embedding) == 3072 for d in wide.data)
