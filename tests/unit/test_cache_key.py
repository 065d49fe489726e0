"""The cache key: equal for requests with the same answer, different otherwise."""

from __future__ import annotations

from typing import Any

from tables.cache import CacheEntry, L1Cache, cache_key, normalize

BASE: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "temperature": 0.2,
    "max_tokens": 50,
}


def key(body: dict[str, Any], **kw: str) -> str:
    args = {"scope": "tenant:acme", "alias": "fast", "endpoint": "chat", **kw}
    return cache_key(body=body, **args)


def test_key_is_sha256_hex() -> None:
    k = key(BASE)
    assert len(k) == 64 and int(k, 16) >= 0


def test_key_order_does_not_matter() -> None:
    reordered = {k: BASE[k] for k in reversed(list(BASE))}
    reordered["messages"] = [dict(reversed(list(m.items()))) for m in BASE["messages"]]
    assert key(reordered) == key(BASE)


def test_whitespace_that_cannot_change_the_meaning_does_not_matter() -> None:
    """Around the text, at line ends, Windows line ends, and Unicode's two spellings of
    one letter (NFC and NFD)."""
    spaced = {
        **BASE,
        "messages": [
            {"role": "system", "content": "  You are terse.\n"},
            {"role": "user", "content": "What is the capital of France? \r\n"},
        ],
    }
    assert key(spaced) == key(BASE)
    lines = {**BASE, "messages": [{"role": "user", "content": "one  \r\ntwo\t\nthree"}]}
    plain = {**BASE, "messages": [{"role": "user", "content": "one\ntwo\nthree"}]}
    assert key(lines) == key(plain)
    nfc = {**BASE, "messages": [{"role": "user", "content": "caf\u00e9"}]}
    nfd = {**BASE, "messages": [{"role": "user", "content": "cafe\u0301"}]}
    assert key(nfc) == key(nfd)


def test_whitespace_inside_a_line_is_part_of_the_question() -> None:
    """Indentation in code and spaces between quotes change what is asked."""

    def ask(text: str) -> str:
        return key({**BASE, "messages": [{"role": "user", "content": text}]})

    nested = "What does this print?\nif False:\n    print('a')\n    print('b')"
    flat = "What does this print?\nif False:\n    print('a')\nprint('b')"
    assert ask(nested) != ask(flat)
    assert ask("len('a    b')?") != ask("len('a b')?")
    assert ask("Para one.\n\nPara two") != ask("Para one. Para two")


def test_a_lone_text_part_with_more_than_text_is_not_a_plain_string() -> None:
    """An Anthropic document (title, citations) travels as a text part with extras: asked
    with citations it is another question than the same text pasted in."""
    text = "The sky is blue."
    document = {
        "type": "text",
        "text": text,
        "anthropic_document": {"title": "Sky", "citations": {"enabled": True}},
    }
    as_document = {**BASE, "messages": [{"role": "user", "content": [document]}]}
    pasted = {**BASE, "messages": [{"role": "user", "content": text}]}
    breakpoint_only = {
        **BASE,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}],
            }
        ],
    }
    assert key(as_document) != key(pasted)
    assert key(breakpoint_only) == key(pasted)


def test_a_single_text_part_equals_a_plain_string() -> None:
    parts = {
        **BASE,
        "messages": [
            BASE["messages"][0],
            {"role": "user", "content": [{"type": "text", "text": BASE["messages"][1]["content"]}]},
        ],
    }
    assert key(parts) == key(BASE)


def test_multi_part_content_is_kept_but_its_text_normalized() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}

    def user(content: object) -> dict[str, Any]:
        return {**BASE, "messages": [{"role": "user", "content": content}]}

    a = user([{"type": "text", "text": "a b\n"}, image])
    b = user([{"type": "text", "text": " a b"}, image])
    other = user("a b")
    assert key(a) == key(b)
    assert key(a) != key(other)


def test_transport_and_bookkeeping_fields_are_ignored() -> None:
    noisy = {
        **BASE,
        "model": "something-else",
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u-123",
        "safety_identifier": "end-user-42",
        "prompt_cache_key": "tenant-a-prefix",
        "metadata": {"trace": "abc"},
    }
    assert key(noisy) == key(BASE)


def test_defaults_equal_absence() -> None:
    with_defaults = {
        **BASE,
        "top_p": 1,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "n": 1,
        "logprobs": False,
        "stop": None,
        "service_tier": "auto",
        "response_format": {"type": "text"},
    }
    assert key(with_defaults) == key(BASE)
    assert key({**BASE, "stop": []}) == key(BASE)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert key({**BASE, "tools": tools, "tool_choice": "auto"}) == key({**BASE, "tools": tools})
    assert key({**BASE, "tools": tools, "tool_choice": "required"}) != key({**BASE, "tools": tools})
    newer = {k: v for k, v in BASE.items() if k != "max_tokens"} | {"max_completion_tokens": 50}
    assert key(newer) == key(BASE)
    no_temp = {k: v for k, v in BASE.items() if k != "temperature"}
    assert key({**BASE, "temperature": 1.0}) == key(no_temp)
    assert key({**BASE, "temperature": 1}) == key(no_temp)


def test_spellings_of_the_same_request_share_a_key() -> None:
    """One stop sequence as a string or a list of one, an empty logit_bias, a message's
    ``name: null``: each is the request without it."""
    assert key({**BASE, "stop": "\n"}) == key({**BASE, "stop": ["\n"]})
    assert key({**BASE, "stop": "\n"}) != key(BASE)
    assert key({**BASE, "logit_bias": {}}) == key(BASE)
    assert key({**BASE, "logit_bias": {"50256": -100}}) != key(BASE)
    named = [{**BASE["messages"][0], "name": None}, BASE["messages"][1]]
    assert key({**BASE, "messages": named}) == key(BASE)
    called = [{**BASE["messages"][0], "name": "ops"}, BASE["messages"][1]]
    assert key({**BASE, "messages": called}) != key(BASE)


def test_integral_floats_equal_ints() -> None:
    assert key({**BASE, "temperature": 0.0}) == key({**BASE, "temperature": 0})


def test_a_whole_float_past_64_bits_is_keyed_not_refused() -> None:
    """A schema's bound written 1e20 (or the largest double) is JSON every vendor takes;
    made an int it was past what orjson writes, and the request a 400."""

    def bounded(maximum: float) -> dict[str, Any]:
        schema = {"type": "object", "properties": {"n": {"type": "number", "maximum": maximum}}}
        tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
        return {**BASE, "tools": [tool]}

    keys = {key(bounded(m)) for m in (1e20, 1e21, 1.7976931348623157e308, -1e19)}
    assert len(keys) == 4
    assert key(bounded(2.0**63)) == key(bounded(2**63)), "within 64 bits, still an int"
    assert key(bounded(-(2.0**63))) == key(bounded(-(2**63)))


def test_answer_changing_fields_change_the_key() -> None:
    assert key({**BASE, "temperature": 0.3}) != key(BASE)
    assert key({**BASE, "max_tokens": 51}) != key(BASE)
    assert key({**BASE, "n": 2}) != key(BASE)
    assert key({**BASE, "logprobs": True}) != key(BASE)
    assert key({**BASE, "top_p": 0}) != key(BASE)
    changed = {**BASE, "messages": [*BASE["messages"][:1], {"role": "user", "content": "Hi"}]}
    assert key(changed) != key(BASE)


def test_booleans_are_not_confused_with_numbers() -> None:
    # True == 1 in Python; a truthy "temperature" is not the default temperature.
    assert "temperature" in normalize({"temperature": True})
    assert "logprobs" in normalize({"logprobs": 0})


def test_scope_alias_and_endpoint_are_part_of_the_key() -> None:
    assert key(BASE, scope="tenant:other") != key(BASE)
    assert key(BASE, alias="smart") != key(BASE)
    assert key(BASE, endpoint="completions") != key(BASE)


def test_normalize_leaves_the_input_untouched() -> None:
    body = {**BASE, "messages": [{"role": "user", "content": " x  y "}], "stream": True}
    normalize(body)
    assert body["messages"][0]["content"] == " x  y " and body["stream"] is True


def entry(n: int) -> CacheEntry:
    return CacheEntry(body={"n": n}, vendor="v", model="m", created=0.0)


def test_l1_evicts_the_least_recently_used() -> None:
    t = [0.0]
    l1 = L1Cache(max_entries=2, clock=lambda: t[0])
    l1.put("a", entry(1), 60)
    l1.put("b", entry(2), 60)
    assert l1.get("a") == entry(1)  # "a" is now the most recent
    l1.put("c", entry(3), 60)
    assert l1.get("b") is None
    assert l1.get("a") == entry(1) and l1.get("c") == entry(3)
    assert len(l1) == 2


def test_l1_entries_expire_by_their_own_ttl() -> None:
    t = [0.0]
    l1 = L1Cache(max_entries=10, clock=lambda: t[0])
    l1.put("short", entry(1), 5)
    l1.put("long", entry(2), 50)
    t[0] = 5.0
    assert l1.get("short") is None and l1.get("long") == entry(2)
    assert len(l1) == 1
    l1.delete("long")
    assert l1.get("long") is None


def test_l1_is_held_to_its_bytes_and_leaves_a_huge_answer_to_l2() -> None:
    """Counting entries alone, forty 16 MB embeddings answers took a gateway to 930 MB."""
    l1 = L1Cache(max_entries=100, max_bytes=2000, max_entry_bytes=600)
    l1.put("huge", entry(0), 60, size=601)
    assert l1.get("huge") is None and l1.bytes == 0
    l1.put("a", entry(1), 60, size=400)  # held at twice its JSON: Python objects
    l1.put("b", entry(2), 60, size=400)
    l1.put("c", entry(3), 60, size=400)  # over 2000 bytes: the least recently used goes
    assert l1.get("a") is None and l1.get("c") == entry(3) and l1.bytes == 1600
    l1.put("c", entry(4), 60, size=100)  # replaced: counted once, at its new size
    l1.delete("b")
    assert l1.bytes == 200 and len(l1) == 1
    stream = CacheEntry(chunks=[{"choices": []}], vendor="v", model="m", created=0.0)
    l1.put("s", stream, 60, size=100)  # a stream's chunks: five times their JSON
    assert l1.bytes == 200 + 500


def test_an_l1_entry_put_without_its_size_is_measured() -> None:
    """What the gateway keeps of a worker's answer is held to the same bounds."""
    l1 = L1Cache(max_entries=10, max_entry_bytes=100)
    l1.put("big", CacheEntry(body={"x": "y" * 200}, vendor="v", model="m", created=0.0), 60)
    assert l1.get("big") is None and l1.bytes == 0
    l1.put("small", entry(1), 60)
    assert l1.get("small") == entry(1) and 0 < l1.bytes <= 100


async def test_the_response_cache_counts_what_it_puts_in_l1() -> None:
    from tables.cache import ResponseCache

    cache = ResponseCache(L1Cache(10, max_entry_bytes=400), None)
    small = entry(1)
    big = CacheEntry(body={"data": "x" * 1000}, vendor="v", model="m", created=0.0)
    await cache.put("small", small, 60)
    await cache.put("big", big, 60)
    assert await cache.get("small") == (small, "l1")
    assert await cache.get("big") is None, "too big for L1, and no L2 here"
    assert 0 < cache.l1.bytes < 2 * 400, "only the small one, at twice its JSON size"


def test_an_explicit_temperature_of_1_is_its_own_request_for_a_vendor_with_other_defaults():
    """Ollama samples at the model's own temperature when none is sent: for its aliases
    an explicit 1 is a different request from none; for OpenAI's, the same."""
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    explicit = {**plain, "temperature": 1, "top_p": 1}

    def key(body: dict, openai_sampling: bool) -> str:
        return cache_key(
            scope="t", alias="a", endpoint="chat", body=body, openai_sampling=openai_sampling
        )

    assert key(plain, True) == key(explicit, True)
    assert key(plain, False) != key(explicit, False)
    assert key({**plain, "n": 1}, False) == key(plain, False), "other defaults still drop"


def test_normalizing_a_hostile_text_costs_its_length_not_its_square() -> None:
    """A long run of spaces (a regex went quadratic on it) or of combining marks (so
    does NFC) must not hold a gateway: each is keyed at once."""
    import time

    from tables.cache import _text

    started = time.perf_counter()
    assert _text("a" + " " * 200_000 + "b") == "a" + " " * 200_000 + "b"
    assert _text("x" + " \t" * 100_000 + "\ny") == "x\ny"
    marks = "\u0301\u0316" * 100_000
    assert _text(marks) == marks, "past the NFC limit a text is its own spelling"
    assert time.perf_counter() - started < 5.0  # quadratic took minutes


def test_only_an_answer_that_says_something_is_storable() -> None:
    """An answer with no choice (``choices: []``, a stream of no chunk) would serve
    later requests nothing; each choice must have finished.  Embeddings are whole with a
    vector, a token count as it is."""
    from schemas.formats.openai import assemble_chunks
    from tables.cache import storable

    def choice(finish: str | None, index: int = 0) -> dict[str, Any]:
        return {"index": index, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": finish}  # fmt: skip

    def chunk(finish: str | None, index: int = 0) -> dict[str, Any]:
        return {"choices": [{"index": index, "delta": {"content": "Hi"}, "finish_reason": finish}]}  # fmt: skip

    chat = {"object": "chat.completion"}
    assert not storable({**chat, "choices": []})
    assert not storable(chat)
    assert not storable(None, []) and not storable(None)
    assert not storable(assemble_chunks([]))
    assert not storable(None, [{"choices": []}]), "Azure's opening filter chunk alone"
    assert storable({**chat, "choices": [choice("stop")]})
    assert not storable({**chat, "choices": [choice(None)]})
    assert not storable({**chat, "choices": [choice("stop"), choice(None, 1)]})
    assert storable(None, [chunk(None), chunk("length")])
    assert not storable(None, [chunk(None), chunk(None)]), "a stream that never finished"
    assert not storable(None, [chunk("stop"), chunk(None, 1)])
    legacy = {"object": "text_completion", "choices": [{"index": 0, "text": "Hi", "finish_reason": "stop"}]}  # fmt: skip
    assert storable(legacy) and not storable({**legacy, "choices": []})
    embeddings = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}]}  # fmt: skip
    assert storable(embeddings) and not storable({**embeddings, "data": []})
    empties: tuple[Any, ...] = (None, [], "")
    for empty in empties:
        vectorless = {"object": "embedding", "index": 0, "embedding": empty}
        assert not storable({**embeddings, "data": [vectorless]}), empty
    assert not storable({**embeddings, "data": [{"object": "embedding", "index": 0}]})
    assert storable({**embeddings, "data": [{"index": 0, "embedding": "AAAAAA=="}]}), "base64"
    assert storable({"input_tokens": 12}), "a token count"


def test_an_answer_not_in_its_format_s_shape_is_not_storable_and_never_an_error() -> None:
    """A vendor's answer is taken as it comes: one with a list or an object where a
    string or a number belongs (``finish_reason: ["stop"]``, ``object: {}``, a choice,
    message or delta that is not an object, a tool call's type a list) is simply not
    stored, whatever else it says; it never raises (the request it answers must still be
    answered and metered)."""
    from tables.cache import fresh, storable

    def chat(**choice: Any) -> dict[str, Any]:
        whole = {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}  # fmt: skip
        return {"object": "chat.completion", "choices": [{**whole, **choice}]}

    def chunk(**choice: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop", **choice}]}  # fmt: skip

    assert storable(chat()) and storable(None, [chunk()]), "the shape itself is storable"
    odd: tuple[Any, ...] = (["stop"], {"a": 1}, 1, 1.5)
    for value in odd:
        assert not storable(chat(finish_reason=value)), value
        assert not storable(None, [chunk(finish_reason=value)]), value
        assert not storable(chat(index=[value])), value
        assert not storable({**chat(), "object": value}), value
        assert not storable({**chat(), "choices": value}), value
        assert not storable({**chat(), "choices": [value]}), value
        assert not storable(None, [{"choices": [value]}]), value
        if not isinstance(value, dict):  # (a message of fields of its own is one)
            assert not storable(chat(message=value)), value
            assert not storable(None, [chunk(delta=value)]), value
        assert not storable(None, [chunk(delta={"tool_calls": [{"index": 0, "type": [value]}]})])
    assert not storable(chat(index="0"))
    assert fresh({"object": ["chat.completion"], "id": "x"}, "m")["id"] == "x"


def test_a_schemas_property_order_is_part_of_the_question() -> None:
    """Strict structured output emits keys in schema order: ``reasoning`` before
    ``answer`` makes the model reason first, a different answer from the other order.
    Key order elsewhere in the schema (and the body) still does not count."""

    def schema(*names: str, nested: tuple[str, ...] = ("x", "y")) -> dict[str, Any]:
        inner = {"type": "object", "properties": {n: {"type": "number"} for n in nested}}
        props: dict[str, Any] = {n: {"type": "string"} for n in names}
        return {"type": "object", "properties": {**props, "point": inner}, "strict": True}

    def formatted(s: dict[str, Any]) -> dict[str, Any]:
        return {**BASE, "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": s}}}  # fmt: skip

    def tool(s: dict[str, Any]) -> dict[str, Any]:
        return {**BASE, "tools": [{"type": "function", "function": {"name": "f", "parameters": s}}]}  # fmt: skip

    def anthropic(s: dict[str, Any]) -> dict[str, Any]:
        return {**BASE, "tools": [{"name": "f", "input_schema": s}]}

    def functions(s: dict[str, Any]) -> dict[str, Any]:
        return {**BASE, "functions": [{"name": "f", "parameters": s}]}

    first, second = schema("reasoning", "answer"), schema("answer", "reasoning")
    for ask in (formatted, tool, anthropic, functions):
        assert key(ask(first)) != key(ask(second)), ask.__name__
        assert key(ask(schema("a", nested=("x", "y")))) != key(ask(schema("a", nested=("y", "x"))))
        reordered = dict(reversed(list(first.items())))  # "strict" first: not a property
        assert key(ask(reordered)) == key(ask(first)), ask.__name__
    # A property named "properties" is a name, not a keyword; the body is untouched.
    odd = schema("properties", "answer")
    body = tool(odd)
    assert key(body) != key(tool(schema("answer", "properties")))
    assert body["tools"][0]["function"]["parameters"] is odd and isinstance(odd["properties"], dict)


def test_whitespace_where_two_text_parts_meet_is_part_of_the_question() -> None:
    """Parts are read joined: "Hello " + "world" is not "Hello" + "world".  Whitespace
    at the ends of the whole, or next to an image, still does not count."""
    image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}

    def ask(*parts: Any) -> str:
        content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
        return key({**BASE, "messages": [{"role": "user", "content": content}]})

    assert ask("Hello ", "world") != ask("Hello", "world")
    assert ask("Hello", " world") != ask("Hello", "world")
    assert ask("one\n  ", "two") != ask("one\n", "two"), "indenting the next part's line"
    assert ask("one  \n", "two") == ask("one\n", "two"), "a line end, whichever part has it"
    assert ask("  Hello ", "world \n") == ask("Hello ", "world"), "the ends of the whole"
    assert ask("a  \nb ", "c") == ask("a\nb ", "c"), "inner line ends, as ever"
    assert ask("Look: ", image, " what is it?") == ask("Look:", image, "what is it?")


def test_an_answer_whose_text_is_not_a_string_is_not_storable_nor_served() -> None:
    """A message's (or a delta's) ``content``, ``refusal``, ``reasoning_content`` or
    ``reasoning`` as a list of parts (Mistral's reasoning models send content so) would
    replay as a stream saying nothing, or not assemble: not stored, and an entry an
    older version stored so is not served (``CacheEntry.plain``)."""
    from tables.cache import TEXT_FIELDS, plain_text, storable

    parts = [{"type": "text", "text": "Hi"}]

    def body(**message: Any) -> dict[str, Any]:
        said = {"role": "assistant", "content": "Hi", **message}
        choice = {"index": 0, "message": said, "finish_reason": "stop"}
        return {"object": "chat.completion", "choices": [choice]}

    def chunk(**delta: Any) -> dict[str, Any]:
        choice = {"index": 0, "delta": {"content": "Hi", **delta}, "finish_reason": "stop"}
        return {"object": "chat.completion.chunk", "choices": [choice]}

    assert storable(body()) and storable(None, [chunk()])
    assert storable(body(content=None, refusal="No.")) and storable(None, [chunk(content=None)])
    for field in TEXT_FIELDS:
        assert not storable(body(**{field: parts})), field
        assert not storable(None, [chunk(**{field: parts})]), field
        assert not plain_text(body(**{field: {"text": "Hi"}})), field
    assert plain_text({"object": "list", "data": []}), "no choices: nothing to judge"
    entry = {"vendor": "v", "model": "m", "created": 0.0}
    assert CacheEntry(body=body(), **entry).plain()
    assert CacheEntry(chunks=[chunk()], **entry).plain()
    assert not CacheEntry(body=body(content=parts), **entry).plain()
    assert not CacheEntry(chunks=[chunk(), chunk(reasoning_content=parts)], **entry).plain()
