"""A bad config fails at start with the file, the key and what is wrong."""

from pathlib import Path
from typing import get_args

import pytest

from schemas.config import ConfigError, RelayConfig, hash_key, load_config, ttl_seconds

GOOD = """
vendors: {{a: {{kind: openai, base_url: "http://a/v1", api_key_env: A_KEY}}}}
models: {{m: {{candidates: [{{vendor: a, model: x}}]}}}}
tenants: {{t: {{keys: [{{id: k1, sha256: {}}}]}}}}
""".format(hash_key("rk-test"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    return path


def test_example_config_loads():
    cfg = load_config(Path(__file__).resolve().parents[2] / "relay.example.yaml")
    assert cfg.key_index()[hash_key("rk-demo-relay-station-local")] == ("demo", "demo-key")


def test_vendor_key_comes_from_the_named_env_var(tmp_path, monkeypatch):
    cfg = load_config(write(tmp_path, GOOD))
    monkeypatch.setenv("A_KEY", "made-up-key")
    assert cfg.vendors["a"].keys() == ["made-up-key"]


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        (GOOD.replace("kind: openai", "kind: openia"), "vendors.a.kind", "openai"),
        (GOOD.replace("vendor: a", "vendor: b"), "models.m.candidates.0.vendor", "unknown vendor"),
        (GOOD.replace("sha256: ", "sha256: x"), "tenants.t.keys.0.sha256", "pattern"),
        (GOOD + "surprise: 1\n", "surprise", "Extra inputs"),
        (
            GOOD.replace("candidates: [{vendor: a, model: x}]", "candidates: []"),
            "models.m.candidates",
            "at least 1",
        ),
        (
            GOOD.replace("{candidates:", "{cache_ttl: weekly, candidates:"),
            "models.m.cache_ttl",
            "weekly",
        ),
        (GOOD.replace("{candidates:", "{cache_ttl: -5, candidates:"), "models.m.cache_ttl", "negative"),
        (
            GOOD.replace("{a: {kind", "{a/east: {kind").replace("vendor: a,", "vendor: a/east,"),
            "vendors.a/east",
            "'/'",
        ),
        (
            GOOD.replace("{candidates:", "{cache_ttl: 3888000, candidates:"),
            "models.m.cache_ttl",
            "30 days",
        ),
        (
            GOOD.replace("api_key_env: A_KEY", "api_key_file: /nonexistent/key"),
            "vendors.a.api_key_file",
            "not a readable file",
        ),
        (GOOD.replace("{keys:", "{models: [gtp], keys:"), "tenants.t.models", "unknown alias 'gtp'"),
        (
            GOOD.replace("tenants: {t:", "tenants: {u: {keys: [{id: k2, sha256: " + hash_key("rk-test") + "}]}, t:"),
            "tenants.t.keys.k1",
            "the same key hash as tenants.u.keys.k2",
        ),
        (GOOD + "simulator: {latncy_ms: 5}\n", "simulator.latncy_ms", "Extra inputs"),
        (GOOD.replace("model: x}", "model: x, input_per_1m: -1}"), "models.m.candidates.0.input_per_1m",
         "greater than or equal to 0"),
        (GOOD.replace("model: x}", "model: x, output_per_1m: .nan}"),
         "models.m.candidates.0.output_per_1m", "finite number"),
        (GOOD.replace("model: x}", "model: x, weight: .inf}"), "models.m.candidates.0.weight",
         "finite number"),
        (GOOD.replace("api_key_env: A_KEY", "api_key_env: A_KEY, rpm: 0"), "vendors.a.rpm",
         "greater than or equal to 1"),
        (GOOD.replace("{keys:", "{tpm: -5, keys:"), "tenants.t.tpm", "greater than or equal to 1"),
        (GOOD.replace("{candidates:", "{degrade_to: m, candidates:"), "models.m.degrade_to",
         "another chat alias"),
        (GOOD.replace("models: {m: {candidates: [{vendor: a, model: x}]}}",
                      "models: {m: {degrade_to: e, candidates: [{vendor: a, model: x}]}, "
                      "e: {kind: embeddings, candidates: [{vendor: a, model: y}]}}"),
         "models.m.degrade_to", "another chat alias"),
        (GOOD.replace("models: {m: {candidates: [{vendor: a, model: x}]}}", "models: {}"), "models",
         "at least 1"),
        (GOOD.replace('"http://a/v1"', "api.openai.com/v1"), "vendors.a.base_url",
         "'api.openai.com/v1' is no http:// or https:// URL with a host"),
        (GOOD.replace('"http://a/v1"', '""'), "vendors.a.base_url", "no http://"),
        (GOOD.replace('"http://a/v1"', '"ftp://a/v1"'), "vendors.a.base_url", "no http://"),
        (GOOD.replace('"http://a/v1"', '"http:///v1"'), "vendors.a.base_url", "no http://"),
        (GOOD.replace('"http://a/v1"', '"http://[::1/v1"'), "vendors.a.base_url", "no http://"),
        (GOOD.replace("kind: openai", "kind: anthropic").replace("{candidates:", "{kind: embeddings, candidates:"),
         "models.m.candidates.0.vendor", "anthropic vendor 'a' has no embeddings endpoint"),
        (GOOD.replace("kind: openai", "kind: anthropic").replace("{candidates:", "{kind: completions, candidates:"),
         "models.m.candidates.0.vendor", "anthropic vendor 'a' has no completions endpoint"),
        (GOOD.replace("kind: openai", "kind: ollama").replace("{candidates:", "{kind: completions, candidates:"),
         "models.m.candidates.0.vendor", "(kinds that serve completions: openai, azure)"),
        (GOOD.replace("vendors: {a:", "vendors: {o: {kind: ollama, base_url: 'http://o'}, a:")
             .replace("model: x}]", "model: x}, {vendor: o, model: y}]")
             .replace("{candidates:", "{kind: completions, candidates:"),
         "models.m.candidates.1.vendor", "ollama vendor 'o' has no completions endpoint"),
        (GOOD.replace("vendors: {a:", "vendors: {c: {kind: anthropic, base_url: 'http://c'}, a:")
             .replace("model: x}]", "model: x}], canary: {candidate: {vendor: c, model: y}, percent: 5}")
             .replace("{candidates:", "{kind: embeddings, candidates:"),
         "models.m.canary.candidate.vendor", "anthropic vendor 'c' has no embeddings endpoint"),
        (GOOD.replace("model: x}]", "model: x}], canary: {candidate: {vendor: zz, model: y}, percent: 5}"),
         "models.m.canary.candidate.vendor", "unknown vendor 'zz' (known: a)"),
    ],
)  # fmt: skip
def test_bad_config_names_file_key_and_problem(tmp_path, text, where, what):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and where in message and what in message


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "vendors: [unclosed"))
    with pytest.raises(ConfigError, match="cannot be read as a text file"):
        load_config(tmp_path)  # a directory
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="cannot be read as a text file"):
        load_config(binary)


def test_ttl_classes_and_seconds():
    assert ttl_seconds("static") == 6 * 3600
    assert ttl_seconds("semi-static") == 15 * 60
    assert ttl_seconds("dynamic") == 60
    assert ttl_seconds("45") == 45
    with pytest.raises(ValueError):
        ttl_seconds("forever")


def test_rate_pressure_needs_an_alias_to_degrade_to() -> None:
    raw = {
        "vendors": {"a": {"kind": "openai", "base_url": "http://a/v1"}},
        "models": {
            "m": {"candidates": [{"vendor": "a", "model": "x"}], "degrade_after_wait_ms": 100}
        },
        "tenants": {"t": {}},
    }
    with pytest.raises(ValueError, match="degrade_after_wait_ms: needs degrade_to"):
        RelayConfig.model_validate(raw)


def test_a_lane_lease_shorter_than_two_polls_is_refused() -> None:
    from schemas.config import BatchLane

    with pytest.raises(ValueError, match="lease_s"):
        BatchLane(poll_s=5, lease_s=6)
    assert BatchLane(poll_s=1, lease_s=3).lease_s == 3


def test_log_level_takes_any_case_and_refuses_what_logging_does_not_know(monkeypatch) -> None:
    from pydantic import ValidationError

    from schemas.settings import Settings

    monkeypatch.setenv("RELAY_LOG_LEVEL", "INFO")
    assert Settings().log_level == "info"
    monkeypatch.setenv("RELAY_LOG_LEVEL", "verbose")
    with pytest.raises(ValidationError, match="log_level"):
        Settings()


def test_the_batch_store_shares_the_cache_s_redis_unless_given_its_own() -> None:
    from schemas.settings import Settings

    shared = Settings(redis_url="redis://cache:6379/0")
    assert shared.store_redis() == "redis://cache:6379/0"
    apart = Settings(redis_url="redis://cache:6379/0", store_redis_url="redis://store:6379/1")
    assert apart.store_redis() == "redis://store:6379/1"


@pytest.mark.parametrize(
    ("env", "value", "says"),
    [
        ("RELAY_KAFKA_JVM_OPTS", "-Xmx1g '-Dunbalanced", "No closing quotation"),
        ("RELAY_PORT", "70000", "less than or equal to 65535"),
        ("RELAY_WORKERS", "0", "greater than or equal to 1"),
        ("RELAY_DEFAULT_TIMEOUT_S", "0", "greater than 0"),
    ],
)
def test_a_bad_setting_names_itself_and_what_is_wrong(monkeypatch, env, value, says) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv(env, value)
    result = CliRunner().invoke(app, ["broker"])
    assert result.exit_code == 2
    assert f"environment: {env}" in result.output and says in result.output
    assert "Traceback" not in result.output


def test_a_data_dir_that_is_or_lies_under_a_file_is_refused(monkeypatch, tmp_path) -> None:
    from pydantic import ValidationError

    from schemas.settings import Settings

    afile = tmp_path / "afile"
    afile.write_text("")
    for data_dir in (afile, afile / "below" / "it"):
        with pytest.raises(ValidationError, match=f"{afile} is a file"):
            Settings(data_dir=data_dir)
    assert Settings(data_dir=tmp_path / "new" / "dir").data_dir == tmp_path / "new" / "dir"


BLOCKS = """\
vendors:
  a: {{kind: openai, base_url: "http://a/v1"}}
models:
  m: {{candidates: [{{vendor: a, model: x}}]}}
  {}
tenants:
  t: {{keys: [{{id: k1, sha256: {}}}], budget: {{limit_usd: 100}}}}
  {}
"""
HASH = hash_key("rk-test")


@pytest.mark.parametrize(
    ("text", "where", "line", "first"),
    [
        # A tenant pasted twice: the first block's key and budget would be gone.
        (BLOCKS.format("", HASH, "t: {keys: [{id: k2, sha256: " + hash_key("rk-2") + "}]}"),
         "tenants.t", 8, 7),
        # An alias pasted twice: it would be served by the second block's model.
        (BLOCKS.format("m: {candidates: [{vendor: a, model: y}]}", HASH, ""), "models.m", 5, 4),
        (GOOD + "vendors: {b: {kind: openai, base_url: 'http://b/v1'}}\n", "vendors", 5, 2),
        (GOOD.replace("model: x}", "model: x, model: y}"), "models.m.candidates.0.model", 3, 3),
    ],
)  # fmt: skip
def test_a_key_given_twice_is_refused_with_its_path_and_lines(tmp_path, text, where, line, first):
    """PyYAML keeps the last of two equal keys without a word; the config refuses them."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: line {line}: {where} is given twice (first on line {first})" in str(info.value)


def test_merged_keys_may_be_overridden_and_aliases_are_read_once(tmp_path) -> None:
    text = GOOD.replace(
        "models: {m: {candidates: [{vendor: a, model: x}]}}",
        "models:\n  m: &base {strategy: quality, candidates: [{vendor: a, model: x}]}\n"
        "  n: {<<: *base, strategy: cheapest}\n  o: *base",
    )
    cfg = load_config(write(tmp_path, text))
    assert (cfg.models["n"].strategy, cfg.models["o"].strategy) == ("cheapest", "quality")


@pytest.mark.parametrize(
    "value", ["127.0.0.1:abc", "127.0.0.1:99999", "h:0", "kafka://h:9092", "a:1,"]
)
@pytest.mark.parametrize("command", ["report", "audit", "gateway"])
def test_a_malformed_kafka_bootstrap_is_refused_as_a_setting(monkeypatch, command, value) -> None:
    """aiokafka would raise a bare ValueError or OverflowError from a connect: a traceback
    rather than the line every other bad setting gets."""
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP", value)
    result = CliRunner().invoke(app, [command])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "environment: RELAY_KAFKA_BOOTSTRAP:" in said and "is not host:port" in said
    assert "Traceback" not in result.output


def test_kafka_bootstrap_takes_what_aiokafka_connects_to() -> None:
    from schemas.settings import Settings

    for servers in (
        "",
        "127.0.0.1:9092",
        "kafka-1:9092, kafka-2:9092",
        "[::1]:9092",
        "::1",
        "kafka",
    ):
        assert Settings(kafka_bootstrap=servers).kafka_bootstrap == servers.strip()


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            GOOD + "simulator: {error_rate: 0.8, rate_429: 0.8}\n",
            ": simulator: error_rate + rate_429",
        ),
        (GOOD + "batch_lane: {poll_s: 5, lease_s: 6}\n", ": batch_lane.lease_s: 6.0 s is renewed"),
    ],
)
def test_a_message_that_names_its_place_is_not_given_it_twice(tmp_path, text, said) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}{said}")


def test_a_bad_setting_s_line_has_no_pydantic_prefix(monkeypatch, tmp_path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    (afile := tmp_path / "afile").write_text("")
    monkeypatch.setenv("RELAY_DATA_DIR", str(afile))
    result = CliRunner().invoke(app, ["broker"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"environment: RELAY_DATA_DIR: {afile} is a file" in said


def test_the_kinds_a_vendor_serves_are_what_its_adapter_serves() -> None:
    """The config's table of which vendor kind serves which alias kind mirrors the
    adapters' capabilities, so a candidate the config lets through never answers 400."""
    import httpx

    from agents.adapters.base import ChatVendor, CompletionVendor, EmbeddingVendor
    from agents.adapters.registry import make_adapter
    from schemas.config import KIND_SERVES, VendorConfig, VendorKind

    protocols = {"chat": ChatVendor, "embeddings": EmbeddingVendor, "completions": CompletionVendor}
    http = httpx.AsyncClient()
    for kind, serves in KIND_SERVES.items():
        adapter = make_adapter(VendorConfig(kind=kind, base_url="http://v/v1"), http)
        assert {k for k, proto in protocols.items() if isinstance(adapter, proto)} == serves, kind
    assert set(KIND_SERVES) == set(get_args(VendorKind))


def test_a_canary_of_a_kind_its_alias_serves_loads(tmp_path) -> None:
    text = GOOD.replace("vendors: {a:", "vendors: {o: {kind: ollama, base_url: 'http://o'}, a:")
    text = text.replace(
        "model: x}]", "model: x}], canary: {candidate: {vendor: o, model: y}, percent: 5}"
    ).replace("{candidates:", "{kind: embeddings, candidates:")
    cfg = load_config(write(tmp_path, text))
    assert cfg.models["m"].canary is not None


@pytest.mark.parametrize(
    ("vendor", "what"),
    [
        ("{kind: azure, base_url: 'https://r.openai.azure.com'", "Azure OpenAI refuses"),
        ("{kind: anthropic, base_url: 'https://api.anthropic.com'", "signed thinking blocks"),
        ("{kind: ollama, base_url: 'http://o:11434'", "as its thinking already"),
        ("{kind: openai, base_url: 'https://api.openai.com/v1'", "OpenAI (https://api.openai.com"),
        ("{kind: openai, base_url: 'https://eu.api.openai.com/v1'", "refuses reasoning_content"),
    ],
)
def test_sending_reasoning_back_is_refused_where_the_vendor_refuses_or_reads_it_otherwise(
    tmp_path, vendor, what
) -> None:
    text = GOOD.replace('{kind: openai, base_url: "http://a/v1"', vendor + ", send_reasoning: true")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    said = str(info.value)
    assert said.startswith(f"{path}: vendors.a.send_reasoning: ") and what in said


def test_an_openai_compatible_vendor_may_send_reasoning_back(tmp_path) -> None:
    text = GOOD.replace('base_url: "http://a/v1"', 'base_url: "https://api.deepseek.com"')
    assert not load_config(write(tmp_path, text)).vendors["a"].send_reasoning
    on = text.replace("api_key_env: A_KEY", "api_key_env: A_KEY, send_reasoning: true")
    assert load_config(write(tmp_path, on)).vendors["a"].send_reasoning
