"""OpenAI chunk assembly and its inverse, the replay of a stored answer as chunks."""

from __future__ import annotations

import re
from typing import Any

from schemas.formats.openai import assemble_chunks, faithful_chunks, new_id, response_to_chunks

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700, "model": "gpt-x"}


def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
    return {**HEAD, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def test_assemble_merges_text_and_keeps_head_and_usage():
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    body = assemble_chunks(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hello"}),
            chunk({"content": " world"}),
            chunk({}, "stop"),
            {**HEAD, "choices": [], "usage": usage},
        ]
    )
    assert body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700,
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


def test_assemble_merges_tool_call_fragments_by_index():
    body = assemble_chunks(
        [
            chunk({"role": "assistant", "content": None}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "function": {"name": "time", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Oslo"}'}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        },
        {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert "usage" not in body


def test_assemble_of_an_empty_answer_has_empty_content():
    body = assemble_chunks([chunk({"role": "assistant"}), chunk({}, "length")])
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert body["choices"][0]["finish_reason"] == "length"


def test_response_to_chunks_splits_words_and_round_trips():
    body = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 42,
        "model": "gpt-x",
        "system_fingerprint": "fp_1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "  Two words\n\nand more. "},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    chunks = response_to_chunks(body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert pieces == ["  Two", " words", "\n\nand", " more.", " "]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["id"] == "chatcmpl-9" and c["system_fingerprint"] == "fp_1" for c in chunks)
    assert not any("usage" in c for c in chunks)

    without_usage = {k: v for k, v in body.items() if k != "usage"}
    assert assemble_chunks(chunks) == without_usage


def test_response_to_chunks_replays_tool_calls_with_id_then_arguments():
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    body = {
        "id": "x",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": calls},
                "finish_reason": "tool_calls",
            }
        ],
    }
    chunks = response_to_chunks(body)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "f", "arguments": ""},
            }
        ]
    }
    assert deltas[2] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1}'}}]}
    assert deltas[3]["tool_calls"][0]["index"] == 1
    assert assemble_chunks(chunks)["choices"][0]["message"]["tool_calls"] == calls


def test_new_id_uses_prefix_and_is_unique():
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", new_id("chatcmpl"))
    assert re.fullmatch(r"call_[0-9a-f]{24}", new_id("call_"))
    assert new_id("msg_") != new_id("msg_")


def test_a_stop_sequence_survives_a_replay_as_chunks_and_back():
    """An Anthropic vendor's stop sequence rides on the choice; a cached answer replayed
    as a stream (or a stream stored and served whole) keeps it for an Anthropic client."""
    body: dict[str, Any] = {
        "id": "c",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "one two"},
                "finish_reason": "stop",
                "stop_sequence": "END",
            }
        ],
    }
    chunks = response_to_chunks(body)
    assert chunks[-1]["choices"][0]["stop_sequence"] == "END"
    assert assemble_chunks(chunks)["choices"][0]["stop_sequence"] == "END"
    plain = {**body, "choices": [{**body["choices"][0], "stop_sequence": None}]}
    assert "stop_sequence" not in assemble_chunks(response_to_chunks(plain))["choices"][0]


def test_reasoning_tokens_are_kept_from_the_vendor_to_the_client():
    from schemas.formats.responses import response_usage
    from schemas.usage import Usage

    vendor = {
        "prompt_tokens": 10,
        "completion_tokens": 900,
        "total_tokens": 910,
        "completion_tokens_details": {"reasoning_tokens": 800},
    }
    usage = Usage.from_openai(vendor)
    assert usage.reasoning_tokens == 800 and usage.output_tokens == 900
    assert usage.to_openai() == vendor
    assert response_usage(usage)["output_tokens_details"] == {"reasoning_tokens": 800}


def test_every_reasoning_effort_means_something_to_each_thinking_vendor():
    from agents.adapters.ollama import _THINK
    from schemas.formats.anthropic import THINKING_BUDGETS
    from schemas.formats.openai import REASONING_EFFORTS

    assert set(THINKING_BUDGETS) == set(_THINK) == set(REASONING_EFFORTS)


def token(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": []}


def with_logprobs(c: dict, content: list | None, refusal: list | None = None) -> dict:
    c["choices"][0]["logprobs"] = {"content": content, "refusal": refusal}
    return c


def test_assemble_joins_a_choices_logprobs_across_chunks_in_order():
    """A non-streamed request answered from a cached or coalesced stream still gets the
    logprobs it asked for."""
    hello, world = token("Hello", -0.1), token(" world", -0.7)
    body = assemble_chunks(
        [
            with_logprobs(chunk({"role": "assistant", "content": ""}), []),
            with_logprobs(chunk({"content": "Hello"}), [hello]),
            with_logprobs(chunk({"content": " world"}), [world]),
            chunk({}, "stop"),
        ]
    )
    assert body["choices"][0]["logprobs"] == {"content": [hello, world], "refusal": None}


def test_assemble_keeps_refusal_logprobs_apart_from_content_ones():
    sorry = [token("I", -0.2), token(" can't", -0.3)]
    body = assemble_chunks(
        [
            chunk({"role": "assistant"}),
            with_logprobs(chunk({"refusal": "I"}), None, sorry[:1]),
            with_logprobs(chunk({"refusal": " can't"}), None, sorry[1:]),
            chunk({}, "stop"),
        ]
    )
    assert body["choices"][0]["message"]["refusal"] == "I can't"
    assert body["choices"][0]["logprobs"] == {"content": [], "refusal": sorry}


def test_a_stream_without_logprobs_assembles_to_null_logprobs():
    said = chunk({"content": "Hi"})
    said["choices"][0]["logprobs"] = None  # as OpenAI sends it when none were asked for
    body = assemble_chunks([chunk({"role": "assistant"}), said, chunk({}, "stop")])
    assert body["choices"][0]["logprobs"] is None


def test_logprobs_survive_a_replay_as_chunks_and_back():
    """A streamed request replayed from a cached whole answer gets its logprobs, once, on
    a chunk that carries text; assembling that stream again gives the same answer."""
    logprobs = {"content": [token("Two", -0.5), token(" words", -1.5)], "refusal": None}
    body = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Two words"},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
        ],
    }
    chunks = response_to_chunks(body)
    carriers = [c["choices"][0] for c in chunks if c["choices"][0].get("logprobs")]
    assert len(carriers) == 1 and carriers[0]["delta"] == {"content": "Two"}
    assert carriers[0]["logprobs"] == logprobs
    assert assemble_chunks(chunks) == body


def test_service_tier_and_annotations_survive_a_replay_as_chunks_and_back():
    cite = {
        "type": "url_citation",
        "url_citation": {"start_index": 0, "end_index": 4, "title": "T", "url": "https://x"},
    }
    body = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Oslo", "annotations": [cite]},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
    }
    chunks = response_to_chunks(body)
    assert all(c["service_tier"] == "default" for c in chunks)
    assert assemble_chunks(chunks) == body


def test_a_refusal_assembles_with_null_content_as_openai_sends_it() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"refusal": "I can't help with that."}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    message = assemble_chunks(chunks)["choices"][0]["message"]
    assert message["content"] is None and message["refusal"] == "I can't help with that."


def test_a_replay_opens_an_answer_of_no_text_with_null_content_as_openai_does() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    body = {"id": "x", "created": 1, "model": "m", "choices": [{"index": 0, "message": message}]}
    first = response_to_chunks(body)[0]["choices"][0]["delta"]
    assert first == {"role": "assistant", "content": None}
    text = {**body, "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}]}
    assert response_to_chunks(text)[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
    }


def test_azures_blank_opening_chunk_does_not_blank_the_answers_id() -> None:
    opening = {"id": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": []}
    said = {
        "id": "chatcmpl-9",
        "created": 1_700_000_000,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
    }
    whole = assemble_chunks([opening, said])
    assert (whole["id"], whole["created"], whole["model"]) == (
        "chatcmpl-9",
        1_700_000_000,
        "gpt-4o",
    )


def test_a_name_said_on_every_fragment_is_the_call_s_name_once() -> None:
    """Fireworks and MiniMax on NVIDIA NIM repeat a call's id, type and name on every
    fragment; OpenAI says the name once, whole.  The whole answer (cached, and what later
    requests get) names the tool the stream named, as does a legacy function_call."""
    repeated = {"index": 0, "id": "call_a", "type": "function"}
    whole = assemble_chunks(
        [
            chunk(
                {"tool_calls": [{**repeated, "function": {"name": "debug_tool", "arguments": ""}}]}
            ),
            chunk(
                {
                    "tool_calls": [
                        {**repeated, "function": {"name": "debug_tool", "arguments": '{"a":'}}
                    ]
                }
            ),
            chunk(
                {
                    "tool_calls": [
                        {**repeated, "function": {"name": "debug_tool", "arguments": "1}"}}
                    ]
                }
            ),
            chunk({}, "tool_calls"),
        ]
    )
    assert whole["choices"][0]["message"]["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "debug_tool", "arguments": '{"a":1}'},
        }
    ]
    legacy = assemble_chunks(
        [
            chunk({"function_call": {"name": "", "arguments": ""}}),
            chunk({"function_call": {"name": "debug_tool", "arguments": '{"a":'}}),
            chunk({"function_call": {"name": "debug_tool", "arguments": "1}"}}),
            chunk({}, "function_call"),
        ]
    )
    assert legacy["choices"][0]["message"]["function_call"] == {
        "name": "debug_tool",
        "arguments": '{"a":1}',
    }


def test_a_name_in_pieces_and_an_id_changed_midway_make_one_call() -> None:
    """Gemini streams a name in pieces (edit_ex, isting_file); Poolside gives a call
    another id after its first fragment.  The whole answer has one call, its first id
    and the pieces joined, as the stream said them; a legacy function_call's name too."""
    first = {"index": 0, "id": "call_a", "type": "function"}
    whole = assemble_chunks(
        [
            chunk({"tool_calls": [{**first, "function": {"name": "edit_ex", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"name": "isting_file"}}]}),
            chunk({"tool_calls": [{"index": 0, "id": "call_b", "function": {"arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert whole["choices"][0]["message"]["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "edit_existing_file", "arguments": "{}"},
        }
    ]
    legacy = assemble_chunks(
        [
            chunk({"function_call": {"name": "edit_ex", "arguments": ""}}),
            chunk({"function_call": {"name": "isting_file", "arguments": "{}"}}),
            chunk({}, "function_call"),
        ]
    )
    assert legacy["choices"][0]["message"]["function_call"] == {
        "name": "edit_existing_file",
        "arguments": "{}",
    }


# What OpenAI-compatible vendors put beside the answer: Perplexity's sources, which the
# text's "[1]" points into, Azure's prompt filter verdict, vLLM's stop string.
CITED = {
    "citations": ["https://a.example", "https://b.example"],
    "search_results": [{"title": "A", "url": "https://a.example"}],
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
}


def cited_body() -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": "Paris [1] is the capital."},
        "logprobs": None,
        "finish_reason": "stop",
        "stop_reason": "</answer>",
    }
    head = {"id": "c", "object": "chat.completion", "created": 1, "model": "sonar"}
    return {**head, **CITED, "choices": [choice]}


def test_a_vendors_own_fields_survive_a_replay_as_chunks_and_back() -> None:
    """A cached whole answer served to a stream, and a stream's served whole, keep what
    the vendor said beside the text (review finding: citations were dropped)."""
    body = cited_body()
    chunks = response_to_chunks(body)
    # Where a client looks: the first chunk (the SDKs' stream snapshot) and the last.
    for end in (chunks[0], chunks[-1]):
        assert {k: end[k] for k in CITED} == CITED
    assert all("citations" not in c for c in chunks[1:-1]), "not on every word of it"
    assert chunks[-1]["choices"][0]["stop_reason"] == "</answer>"
    assert all("stop_reason" not in c["choices"][0] for c in chunks[:-1])
    assert faithful_chunks(chunks)
    assert assemble_chunks(chunks) == body
    assert assemble_chunks(response_to_chunks(assemble_chunks(chunks))) == body


def test_a_stream_that_repeats_its_citations_on_every_chunk_assembles_with_them() -> None:
    """Perplexity says its sources on every chunk (growing as it searches), vLLM its
    stop string on the last; OpenAI's ``obfuscation`` padding is the chunk's alone."""
    first = {"citations": ["https://a.example"], "obfuscation": "x7"}
    chunks = [
        chunk({"role": "assistant", "content": "Paris"}, **first),
        chunk({"content": " [1][2]."}, **CITED, obfuscation="q"),
        chunk({}, "stop", **CITED),
    ]
    for c, stop in zip(chunks, (None, None, 7), strict=True):
        c["choices"][0]["stop_reason"] = stop  # vLLM's: the stop token's id, at the end
        c["choices"][0]["message"] = {"role": "assistant", "content": "so far"}  # Perplexity's
    assert faithful_chunks(chunks)
    body = assemble_chunks(chunks)
    assert {k: body[k] for k in CITED} == CITED and "obfuscation" not in body
    choice = body["choices"][0]
    assert choice["stop_reason"] == 7 and choice["message"]["content"] == "Paris [1][2]."
    replayed = response_to_chunks(body)
    assert all("obfuscation" not in c for c in replayed)
    assert assemble_chunks(replayed) == body


def test_an_objects_keys_said_apart_add_up_and_one_said_otherwise_is_not_whole() -> None:
    """Groq adds the usage to ``x_groq`` on the last chunk, Azure says a text's filter
    categories and its protected material apart: the whole has them all.  Two chunks
    whose verdicts differ on one category, or sources that are not the same list, are
    no one answer's: such a stream is not one to serve whole later."""
    safe = {"hate": {"filtered": False, "severity": "safe"}}
    material = {"protected_material_text": {"filtered": False, "detected": False}}
    chunks = [
        chunk({"role": "assistant", "content": "Hi"}, x_groq={"id": "req_1"}),
        chunk({}, "stop", x_groq={"id": "req_1", "usage": {"queue_time": 0.1}}),
    ]
    chunks[0]["choices"][0]["content_filter_results"] = safe
    chunks[1]["choices"][0]["content_filter_results"] = material
    assert faithful_chunks(chunks)
    body = assemble_chunks(chunks)
    assert body["x_groq"] == {"id": "req_1", "usage": {"queue_time": 0.1}}
    assert body["choices"][0]["content_filter_results"] == safe | material

    worse = {"hate": {"filtered": False, "severity": "low"}}
    chunks[1]["choices"][0]["content_filter_results"] = worse
    assert not faithful_chunks(chunks)
    other = [chunk({"content": "a"}, citations=["u1"]), chunk({}, "stop", citations=["u2"])]
    assert not faithful_chunks(other)


def padded(pads: list[Any], key: str = "p") -> list[dict[str, Any]]:
    """A short stream whose chunks carry ``pads`` (one each, None for none) under ``key``."""
    deltas = [{"role": "assistant", "content": ""}, {"content": "Hello"}, {"content": " world"}]
    chunks = [chunk(d) for d in deltas] + [chunk({}, "stop")]
    for c, pad in zip(chunks, pads, strict=True):
        if pad is not None:
            c[key] = pad
    return chunks


def test_mistrals_padding_new_on_every_chunk_is_neither_kept_nor_a_contradiction() -> None:
    """Mistral pads each streamed chunk with a random ``p`` (docs.mistral.ai, 2025-08-27),
    as OpenAI does with ``obfuscation``: it says where the stream is, so such a stream is
    whole, stored and served whole without it (review finding: no Mistral stream was
    cached, and a whole answer carried the last chunk's ``p``)."""
    from tables.cache import storable

    chunks = padded(["a1", "Zq", "x", "k9P"])
    assert faithful_chunks(chunks) and storable(None, chunks)
    body = assemble_chunks(chunks)
    assert "p" not in body
    assert body["choices"][0]["message"]["content"] == "Hello world"
    # Padding on some chunks only, or the same twice, is still padding by its name.
    assert faithful_chunks(padded(["a1", None, "a1", "b"]))
    assert "p" not in assemble_chunks(padded(["a1", None, "a1", "b"]))


def test_another_vendors_padding_is_known_by_its_kind() -> None:
    """A top-level string said on every chunk, new each time, is padding whatever it is
    called: the next vendor's does not switch caching off.  A string said the same twice
    running and then otherwise, one that grows, or one said on some chunks only, is the
    answer's, and two sayings that differ are no one answer's, as before."""
    chunks = padded(["r4nd", "0m", "pAd", "x"], key="pad")
    assert faithful_chunks(chunks)
    assert "pad" not in assemble_chunks(chunks)

    for pads in (
        ["same", "same", "other", "more"],  # the same twice running: not new each time
        ["Hel", "Hello", "Hello w", "Hello world"],  # grows: a text so far, not padding
        ["a", None, "b", "c"],  # not on every chunk
    ):
        chunks = padded(pads, key="said")
        assert not faithful_chunks(chunks), pads
        assert assemble_chunks(chunks)["said"] == pads[-1], "the last word stands"
    once = padded([None, None, None, "said once"], key="note")
    assert faithful_chunks(once) and assemble_chunks(once)["note"] == "said once"
    kept = padded(["openai"] * 4, key="provider")  # OpenRouter's, the same on each
    assert faithful_chunks(kept) and assemble_chunks(kept)["provider"] == "openai"
    verdicts = padded([[{"v": 1}], [{"v": 2}], [{"v": 3}], [{"v": 4}]], key="filter")
    assert not faithful_chunks(verdicts), "an object or list is never padding"


def test_a_stream_of_the_formats_fields_alone_assembles_as_it_did() -> None:
    """The fast path for chunks and choices with only the format's fields (review finding:
    every streamed answer paid for vendor fields it never had) gives the same answer."""
    chunks = padded(["o1", "o2", "o3", "o4"], key="obfuscation")
    for c in chunks:
        c["system_fingerprint"] = "fp"
        c["choices"][0]["logprobs"] = None
    body = assemble_chunks(chunks)
    assert faithful_chunks(chunks)
    assert body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700,
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "system_fingerprint": "fp",
    }
